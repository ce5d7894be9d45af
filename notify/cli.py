"""``atmfleet notify ...``: the notifier (docs/notifications.md).

Who may use what (every surface has an owner):

- ``serve``: the service account that runs it (the database URL is its credential); the
  webhook it serves admits only the bearer token / basic-auth holder, audited per post.
- ``status``: any registered user (viewer or above); reads only.
- ``check``: anyone who can read the configuration file; reads only, no database.
- ``bulletin``, ``test``, ``retry``, ``prune``: an operator with fleet scope (``ATMFLEET_USER``);
  each writes an audit row in the transaction that enqueues.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import click

from atmfleet import cli_types
from atmfleet.errors import ConfigError, Forbidden, UsageError
from atmfleet.settings import load_settings
from atmfleet.signals import stop_on_signals
from atmfleet.store.audit import Actor, cli_actor, record, require_role
from atmfleet.store.connect import connect
from notify.config import NotifyConfig, load_config
from notify.messages import Texts
from notify.metrics import read
from notify.outbox import build_senders, dispatch, enqueue, resolve

log = logging.getLogger(__name__)

_CONFIG = click.option(
    "--config", "config_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
    help="The notify configuration (default: ATMFLEET_NOTIFY_FILE).",
)  # fmt: skip


def _tz() -> ZoneInfo:
    from rules.config import load_rules

    return load_rules(load_settings().rules_file).tz


def _fleet_operator(conn: Any, actor: Actor) -> None:
    user = require_role(conn, actor, "operator")
    if user.scope_kind != "fleet":
        raise Forbidden(f"user {actor.name!r} has {user.scope_kind} scope; this needs fleet scope")


@click.group("notify")
def notify() -> None:
    """Notifications: WeCom, DingTalk, e-mail, webhooks; Alertmanager receiver; bulletins."""


@notify.command("check")
@_CONFIG
def check_cmd(config_path: Path | None) -> None:
    """Validate the configuration and that every channel's secrets can be read."""
    config = load_config(config_path)
    _senders, broken = build_senders(config)
    if broken:
        raise ConfigError("; ".join(broken.values()))
    click.echo(f"ok: {len(config.channels)} channel(s), {len(config.recipients)} recipient key(s)")


@notify.command("serve")
@_CONFIG
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=9095, show_default=True)
def serve_cmd(config_path: Path | None, host: str, port: int) -> None:
    """Receive Alertmanager webhooks on POST /alertmanager/<route>, tail incident events,
    and deliver the outbox with retries; metrics on /metrics."""
    import threading

    from notify.receiver import Worker, make_server

    config = load_config(config_path)
    url = load_settings().require_database_url()
    tz = _tz()
    senders, _broken = build_senders(config)
    worker = Worker(url, config, senders, tz)
    server = make_server(host, port, url, config, tz, on_accept=worker.wake.set)
    stop = stop_on_signals(log)
    worker.thread.start()
    threading.Thread(target=server.serve_forever, name="notify-http", daemon=True).start()
    log.warning("notify: listening on %s:%d", host, server.server_address[1])
    click.echo(f"listening on {host}:{server.server_address[1]}", err=True)
    stop.wait()
    server.shutdown()
    server.server_close()
    worker.stop.set()
    worker.wake.set()
    worker.thread.join(timeout=30)


@notify.command("work")
@_CONFIG
def work_cmd(config_path: Path | None) -> None:
    """One pass: tail incident events, send what is due (for a timer or by hand)."""
    from notify.receiver import Worker

    config = load_config(config_path)
    senders, _broken = build_senders(config)
    Worker(load_settings().require_database_url(), config, senders, _tz()).once()


@notify.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
def status_cmd(as_json: bool, limit: int) -> None:
    """Per channel: sent, retried, given up, pending; the deliveries given up, newest first."""
    url = load_settings().require_database_url()
    with connect(url, application_name="atmfleet-notify", autocommit=True) as conn:
        require_role(conn, cli_actor(), "viewer")
        data = read(conn)
        failed = conn.execute(
            "SELECT id, channel, source, recipient, title, attempts, last_attempt_at, last_error"
            " FROM notify_outbox WHERE status = 'failed' ORDER BY id DESC LIMIT %s",
            (limit,),
        ).fetchall()
        cursor = conn.execute(
            "SELECT name, position, updated_at FROM notify_cursors ORDER BY name"
        ).fetchall()
    data["given_up"] = [
        {
            "id": r[0], "channel": r[1], "source": r[2], "recipient": r[3], "title": r[4],
            "attempts": r[5], "last_attempt_at": r[6].isoformat() if r[6] else None,
            "last_error": r[7],
        }
        for r in failed
    ]  # fmt: skip
    data["cursors"] = {r[0]: r[1] for r in cursor}
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True))
        return
    click.echo(f"{'channel':<24} {'sent':>7} {'retried':>7} {'failed':>7} {'pending':>7}")
    for name, c in sorted(data["channels"].items()):
        click.echo(
            f"{name:<24} {c['sent']:>7} {c['retried']:>7} {c['failed']:>7} {c['pending']:>7}"
        )
    oldest = data["oldest_pending_s"]
    click.echo(f"oldest pending: {'–' if oldest is None else f'{oldest:.0f} s'}")
    for name, position in data["cursors"].items():
        click.echo(f"cursor {name}: {position}")
    if data["given_up"]:
        click.echo("given up:")
        for g in data["given_up"]:
            click.echo(
                f"  #{g['id']} {g['channel']} {g['source']} {g['recipient'] or '-'} "
                f"after {g['attempts']} attempts: {g['last_error']}"
            )


@notify.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.option("--all-failed", is_flag=True, help="Every delivery given up.")
def retry_cmd(ids: tuple[int, ...], all_failed: bool) -> None:
    """Put deliveries that were given up back in the queue (attempts start again)."""
    if not ids and not all_failed:
        raise UsageError("give outbox ids or --all-failed")
    actor = cli_actor()
    url = load_settings().require_database_url()
    with connect(url, application_name="atmfleet-notify") as conn:
        _fleet_operator(conn, actor)
        rows = conn.execute(
            "UPDATE notify_outbox SET status = 'pending', attempts = 0, next_attempt_at = now()"
            " WHERE status = 'failed' AND (%s OR id = ANY(%s)) RETURNING id",
            (all_failed, list(ids)),
        ).fetchall()
        record(
            conn, actor, "notify.retry", "notify_outbox", None, after={"ids": [r[0] for r in rows]}
        )
        conn.commit()
    click.echo(f"{len(rows)} delivery(ies) queued again")


@notify.command("prune")
@click.option("--days", type=click.IntRange(1, 3650), default=90, show_default=True)
def prune_cmd(days: int) -> None:
    """Delete sent notifications older than --days (counters and given-up rows stay)."""
    from notify.outbox import prune

    actor = cli_actor()
    url = load_settings().require_database_url()
    with connect(url, application_name="atmfleet-notify") as conn:
        _fleet_operator(conn, actor)
        outbox, deliveries = prune(conn, days)
        record(conn, actor, "notify.prune", "notify_outbox", None,
               after={"days": days, "rows": outbox, "deliveries": deliveries})  # fmt: skip
        conn.commit()
    click.echo(f"deleted {outbox} sent notification(s) and {deliveries} delivery record(s)")


@notify.command("test")
@_CONFIG
@click.argument("target")
def test_cmd(config_path: Path | None, target: str) -> None:
    """Send a test message to a channel or a recipient key, and wait for the outcome."""
    from notify.bulletin import wait_rows

    config = load_config(config_path)
    tz = _tz()
    targets = resolve(config, target)
    if not targets:
        raise UsageError(f"{target!r} is neither a channel nor a mapped recipient key")
    t = Texts(config.lang)
    actor = cli_actor()
    url = load_settings().require_database_url()
    senders, _broken = build_senders(config)
    with connect(url, application_name="atmfleet-notify", autocommit=True) as conn:
        with conn.transaction():
            _fleet_operator(conn, actor)
            at = datetime.now(tz).strftime("%Y-%m-%d %H:%M:%S")
            ids = [
                i
                for tg in targets
                if (i := enqueue(conn, config, tg, source="test", title=t("test.title"),
                                 body=t("test.body", at=f"{at}（{t.local_label(tz.key)}）"),
                                 recipient=target)) is not None
            ]  # fmt: skip
            record(conn, actor, "notify.test", "notify_target", target, after={"rows": len(ids)})
        outcome = wait_rows(conn, ids, lambda: dispatch(conn, config, senders), 120)
    _report(outcome)


def _report(outcome: dict[str, list[tuple[int, str, str | None]]]) -> None:
    for i, channel, _err in outcome.get("sent", []):
        click.echo(f"sent #{i} {channel}")
    bad = outcome.get("failed", []) + outcome.get("pending", [])
    for i, channel, err in bad:
        state = "given up" if (i, channel, err) in outcome.get("failed", []) else "still pending"
        click.echo(f"{state} #{i} {channel}: {err}", err=True)
    if bad:
        click.echo(
            f"atmfleet: {len(bad)} delivery(ies) not sent; see `atmfleet notify status`"
            " (pending ones are retried by `atmfleet notify serve`)",
            err=True,
        )
        sys.exit(1)


def _bulletin(kind: str, on: str | None, day: str | None, force: bool, wait_s: float,
              config_path: Path | None) -> None:  # fmt: skip
    from notify import bulletin as nb

    config = load_config(config_path)
    tz = _tz()
    today = cli_types.parse_day(on, "--today") if on else datetime.now(tz).date()
    go, first = nb.due(kind, today, config.calendar)
    if not go and not force:
        click.echo(
            f"{kind}: {today} is not the day it goes out (first working day: {first}); nothing sent"
        )
        return
    chosen: date | None = cli_types.parse_day(day, "--date") if day else None
    delivery = getattr(config.bulletins, kind)
    if not delivery.email and not delivery.summary:
        raise ConfigError(f"bulletins.{kind}: no email or summary recipients")
    actor = cli_actor()
    url = load_settings().require_database_url()
    with connect(url, application_name="atmfleet-notify", autocommit=True) as conn:
        _fleet_operator(conn, actor)  # before the costly part; checked again when enqueuing
    b, xlsx, html = nb.build(kind, delivery.lang, today, chosen)
    senders, _broken = build_senders(config)
    with connect(url, application_name="atmfleet-notify", autocommit=True) as conn:
        got = nb.enqueue_bulletin(conn, config, b, xlsx, html, actor)
        click.echo(
            f"{kind} {nb.period_key(b)}: {len(got.ids)} delivery(ies) queued"
            + (f", {got.skipped} already queued before" if got.skipped else "")
        )
        if got.unrouted:
            raise ConfigError(f"bulletins.{kind}: {', '.join(got.unrouted)} map to no channel")
        outcome = nb.wait_rows(conn, got.ids, lambda: dispatch(conn, config, senders), wait_s)
    _report(outcome)


def _bulletin_command(kind: str, doc: str) -> click.Command:
    @click.command(kind, help=doc)
    @click.option(
        "--date",
        "day",
        default=None,
        help="Daily: the local day to send (default: yesterday). Monthly, quarterly: the day it"
        " runs as (as --today); it sends the month or quarter before.",
    )
    @click.option(
        "--today",
        "on",
        default=None,
        help="Run as if today were this local day (default: today in the rules' zone).",
    )
    @click.option("--force", is_flag=True, help="Send even if today is not the day it goes out.")
    @click.option(
        "--wait",
        "wait_s",
        type=click.FloatRange(0, 86400),
        default=900.0,
        show_default=True,
        help="Seconds to keep retrying before reporting.",
    )
    @_CONFIG
    def cmd(
        day: str | None, on: str | None, force: bool, wait_s: float, config_path: Path | None
    ) -> None:
        if kind != "daily" and day is not None:
            if on is not None and on != day:
                raise UsageError(f"--date and --today differ; the {kind} bulletin takes one day")
            on, day = day, None  # the day it runs as: the period is the one before it
        _bulletin(kind, on, day, force, wait_s, config_path)

    return cmd  # fmt: skip


@notify.group("bulletin")
def bulletin_group() -> None:
    """Send a bulletin: e-mail (XLSX attached, HTML body) and a WeCom/DingTalk summary."""


bulletin_group.add_command(_bulletin_command("daily", "Send yesterday's daily bulletin (日通报)."))
bulletin_group.add_command(
    _bulletin_command("monthly", "On the first working day: last month's assessment (月通报).")
)
bulletin_group.add_command(
    _bulletin_command("quarterly", "On the first working day of a quarter (季通报).")
)

__all__ = ["NotifyConfig", "notify"]
