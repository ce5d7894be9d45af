"""``atmfleet simulate``: play a fleet against the broker (live, faster, or as history)."""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import click
from pydantic import ValidationError

from atmfleet.errors import ConfigError, UsageError
from atmfleet.inventory import Inventory
from atmfleet.inventory_io import load_inventory
from atmfleet.settings import Settings, format_validation_error, load_settings
from simulator.config import SimConfig, load_config
from simulator.engine import Emission, check_run, from_ms, generate, ms
from simulator.fleet import MAX_DEVICES, generate_inventory
from simulator.ledger import Ledger, open_messages
from simulator.publisher import DEFAULT_POOL, PER_DEVICE_MAX, FleetPublisher, Pacing
from simulator.workers import Run, publish_in_parts

#: A live run without --duration stops on Ctrl-C/SIGTERM, or after this long.
OPEN_ENDED = timedelta(days=366)
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: Fleets from this size on are published from several processes by default.
WORKERS_FROM = 500
MAX_WORKERS = 64


def default_workers(devices: int) -> int:
    """Processes publishing a pooled fleet when ``--workers`` is not given: one per CPU
    (at most 4) from ``WORKERS_FROM`` devices on, else one."""
    return 1 if devices < WORKERS_FROM else max(1, min(4, os.cpu_count() or 1))


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``1d`` -> seconds."""
    value = text.strip().lower()
    unit = DURATION_UNITS.get(value[-1:])
    number = value[:-1] if unit is not None else value
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        raise UsageError(f"--duration {text!r} is not a duration (e.g. 90s, 15m, 2h, 1d)") from None
    if not seconds > 0:
        raise UsageError(f"--duration must be positive (got {text!r})")
    return seconds


def parse_start(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--start {text!r} is not an ISO time (e.g. 2026-11-27T00:00:00Z)"
        ) from None
    if value.tzinfo is None:
        raise UsageError(f"--start {text!r} has no time zone; add Z for UTC or +08:00")
    return value.astimezone(UTC)


def parse_connections(text: str) -> int | None:
    """``per-device`` -> None; a number -> a pool of that many gateway connections."""
    if text == "per-device":
        return None
    try:
        n = int(text)
    except ValueError:
        raise UsageError(
            f"--connections {text!r}: use per-device or a number of gateway connections"
        ) from None
    if n < 1:
        raise UsageError(f"--connections must be >= 1 (got {n})")
    return n


@click.command("simulate")
@click.option("--devices", type=int, default=None, help="Generate a default fleet of this size.")
@click.option(
    "--inventory",
    "inventory_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Play this inventory (YAML file or CSV folder) instead.",
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="YAML overriding simulator parameters (docs/simulator.md).",
)
@click.option(
    "--backfill",
    type=float,
    default=None,
    help="Publish the last DAYS days of history as fast as the broker takes them, then stop.",
)
@click.option("--speed", type=float, default=1.0, show_default=True, help="Live: sim/wall ratio.")
@click.option("--duration", default=None, help="Live: stop after this long (90s, 15m, 2h).")
@click.option("--start", "start_text", default=None, help="Live: simulated start (ISO, UTC).")
@click.option(
    "--ledger",
    "ledger_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the ground-truth ledger to this folder.",
)
@click.option(
    "--connections",
    "connections_text",
    default=None,
    help=f"per-device, or a number of gateway connections (default: per-device up to "
    f"{PER_DEVICE_MAX} devices live, else {DEFAULT_POOL}).",
)
@click.option(
    "--workers",
    type=int,
    default=None,
    help=f"Processes publishing (gateway connections only; default: one per CPU, at most "
    f"4, from {WORKERS_FROM} devices on, else 1).",
)
@click.option("--heartbeat", type=int, default=None, help="Heartbeat seconds of every device.")
@click.option("--mqtt-url", default=None, help="Broker (default: ATMFLEET_MQTT_URL).")
@click.option("--id-prefix", default="", help="Prefix of every generated id.")
@click.option("--dry-run", is_flag=True, help="Generate and write the ledger; publish nothing.")
def simulate_command(
    devices: int | None,
    inventory_path: Path | None,
    seed: int,
    config_path: Path | None,
    backfill: float | None,
    speed: float,
    duration: str | None,
    start_text: str | None,
    ledger_dir: Path | None,
    connections_text: str | None,
    workers: int | None,
    heartbeat: int | None,
    mqtt_url: str | None,
    id_prefix: str,
    dry_run: bool,
) -> None:
    """Play a realistic fleet of self-service devices over MQTT."""
    # A big fleet is millions of long-lived objects (every device's generator, closures and
    # Random): at the default threshold (700 allocations) the cyclic collector walks them
    # again and again while the fleet comes up; this process (and its workers) rarely.
    gc.set_threshold(50_000, 20, 20)
    config = load_config(config_path) if config_path else SimConfig()
    inventory = _inventory(devices, inventory_path, seed, id_prefix, config)
    if not speed > 0:
        raise UsageError(f"--speed must be positive (got {speed})")
    if heartbeat is not None and not 5 <= heartbeat <= 3600:
        raise UsageError(f"--heartbeat must be between 5 and 3600 seconds (got {heartbeat})")
    if backfill is not None and not 0 < backfill <= 3660:
        raise UsageError(f"--backfill must be between 0 and 3660 days (got {backfill})")
    if backfill is not None and (start_text or duration):
        raise UsageError("--backfill publishes [now - DAYS, now]; it takes no --start/--duration")
    pool = parse_connections(connections_text) if connections_text else None
    per_device = connections_text == "per-device" or (
        connections_text is None and backfill is None and len(inventory.devices) <= PER_DEVICE_MAX
    )
    if workers is not None and not 1 <= workers <= MAX_WORKERS:
        raise UsageError(f"--workers must be between 1 and {MAX_WORKERS} (got {workers})")
    if workers is not None and workers > 1 and per_device:
        raise UsageError("--workers > 1 needs gateway connections (--connections N)")
    n_workers = 1 if per_device else (workers or default_workers(len(inventory.devices)))
    n_workers = min(n_workers, len(inventory.devices))

    now = datetime.now(UTC).replace(microsecond=0)
    pacing: Pacing | None
    wall_seconds: float | None = None
    if backfill is not None:
        start, end = now - timedelta(days=backfill), now
        heartbeat = heartbeat or config.backfill_heartbeat_s
        pacing = None
    else:
        start = parse_start(start_text) if start_text else now
        if start > now + timedelta(seconds=1):
            raise UsageError(
                f"--start {start.isoformat()} is in the future; devices may not run ahead"
            )
        wall_seconds = parse_duration(duration) if duration else None
        end = (
            min(
                start + timedelta(seconds=wall_seconds * speed),
                now + timedelta(seconds=wall_seconds),
            )
            if wall_seconds
            else start + OPEN_ENDED
        )
        pacing = Pacing(ms(start), speed, wall0=now.timestamp())
    check_run(inventory, start, end)
    # A broker's will is stamped with its receive time: right only when simulated time is now.
    real_wills = (
        per_device and pacing is not None and speed == 1 and start >= now - timedelta(minutes=1)
    )

    stop = threading.Event()
    previous = _on_signals(stop)
    messages = open_messages(ledger_dir) if ledger_dir else None
    ledger = Ledger(inventory, config, seed, heartbeat_s=heartbeat, messages_out=messages)
    emissions = generate(
        inventory,
        config,
        seed,
        start,
        end,
        real_wills=real_wills,
        heartbeat_s=heartbeat,
        on_repair=ledger.record_repair,
    )
    n_pool = pool or DEFAULT_POOL
    mode = (
        "one connection per device"
        if per_device
        else f"{max(n_pool, n_workers)} gateway connection{'s' if n_pool != 1 else ''}"
        + (f" from {n_workers} processes" if n_workers > 1 else "")
    )
    click.echo(
        f"simulating {len(inventory.devices):,} devices from {start.isoformat()} to "
        f"{'open end' if end - start >= OPEN_ENDED else end.isoformat()}"
        f"{'' if dry_run else f' over {mode}'}",
        err=True,
    )
    wall0 = time.monotonic()
    try:
        if dry_run:
            count = 0
            for e in _until_stopped(emissions, stop):
                ledger.record(e)
                count += 1
            seconds = time.monotonic() - wall0
            click.echo(
                f"generated {count:,} messages in {seconds:.1f}s ({count / max(seconds, 1e-9):,.0f}/s)"
            )
            stopped_at = end if not stop.is_set() else _sim_now(ledger, end)
        else:
            settings = _settings(mqtt_url)
            prefix = f"atmfleet-sim-{id_prefix or seed}"
            # Live with --duration: the run lasts that wall time, however early its last
            # message is due (a small fleet may have nothing to say for minutes).
            hold = time.time() + wall_seconds if pacing is not None and wall_seconds else None
            if n_workers > 1:
                run = Run(
                    inventory, config, seed, start, end, real_wills, heartbeat, settings,
                    n_pool, prefix, pacing, hold,
                )  # fmt: skip
                stats = publish_in_parts(
                    run, n_workers, ledger, stop, messages=messages, work_dir=ledger_dir
                )
            else:
                publisher = FleetPublisher(
                    settings,
                    per_device=per_device,
                    pool_size=n_pool,
                    client_prefix=prefix,
                    stop=stop,
                )
                branch_of = {d.id: d.branch for d in inventory.devices}.__getitem__
                stats = publisher.run(
                    emissions, branch_of=branch_of, pacing=pacing, on_sent=ledger.record,
                    hold_until=hold,
                )  # fmt: skip
            click.echo(
                f"published {stats.published:,} messages"
                f"{f' (+{stats.wills} last wills)' if stats.wills else ''} in {stats.seconds:.1f}s: "
                f"{stats.rate:,.0f} msgs/s over {stats.connections} connections"
                f"{'' if stats.complete else ' (some not acknowledged before the timeout)'}"
            )
            stopped_at = end if not stop.is_set() else _sim_now(ledger, end)
    finally:
        _restore_signals(previous)
        if messages is not None:
            messages.close()
    if ledger_dir:
        ledger.finish(ms(stopped_at))
        ledger.write(ledger_dir)
        click.echo(f"ledger written to {ledger_dir}", err=True)


def _sim_now(ledger: Ledger, end: datetime) -> datetime:
    """Where simulated time stood when the run was stopped: the last message sent."""
    return min(end, from_ms(ledger.last)) if ledger.last is not None else end


def _until_stopped(emissions: Iterator[Emission], stop: threading.Event) -> Iterator[Emission]:
    for e in emissions:
        if stop.is_set():
            return
        yield e


def _inventory(
    devices: int | None, path: Path | None, seed: int, prefix: str, config: SimConfig
) -> Inventory:
    if path is not None and devices is not None:
        raise UsageError("give --devices or --inventory, not both")
    if path is not None:
        return load_inventory(path)
    if devices is None:
        devices = 1000
    if not 1 <= devices <= MAX_DEVICES:
        raise UsageError(f"--devices must be between 1 and {MAX_DEVICES:,} (got {devices})")
    return generate_inventory(devices, seed, prefix=prefix, config=config)


def _settings(mqtt_url: str | None) -> Settings:
    settings = load_settings()
    if mqtt_url is None:
        return settings
    try:
        return Settings.model_validate({**settings.model_dump(), "mqtt_url": mqtt_url})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source="--mqtt-url")) from None


_Handlers = dict[int, Any]


def _on_signals(stop: threading.Event) -> _Handlers:
    """Ctrl-C / SIGTERM: stop publishing, wait for acknowledgements, write the ledger.
    A second signal exits at once."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            sys.exit(128 + signum)
        stop.set()

    previous: _Handlers = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    return previous


def _restore_signals(previous: _Handlers) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
