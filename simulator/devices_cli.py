"""``atmfleet simulate-devices``: simulated devices that answer remote commands."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click

from atmfleet.errors import UsageError
from atmfleet.inventory_io import load_inventory
from simulator.cli import _settings
from simulator.config import SimConfig, load_config
from simulator.devices import CommandDevices, Credentials


@click.command("simulate-devices")
@click.argument("inventory", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--config", "config_path", type=click.Path(exists=True, path_type=Path))
@click.option("--device", "only", multiple=True, help="Only this device (repeat).")
@click.option("--fault", "faulty", multiple=True, help="This device starts in a fault (repeat).")
@click.option(
    "--credentials",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Folder of `atmfleet broker credentials`: each device's certificate or password.",
)
@click.option("--mqtt-url", default=None, help="Broker (default: ATMFLEET_MQTT_URL).")
def simulate_devices(
    inventory: Path,
    config_path: Path | None,
    only: tuple[str, ...],
    faulty: tuple[str, ...],
    credentials: Path | None,
    mqtt_url: str | None,
) -> None:
    """Connect every device of INVENTORY, each as itself, and answer commands until stopped
    (docs/commands.md). Behaviour: the ``commands:`` section of --config."""
    settings = _settings(mqtt_url)
    config = load_config(config_path) if config_path else SimConfig()
    ids = [d.id for d in load_inventory(inventory).devices if d.decommissioned is None]
    if only:
        unknown = sorted(set(only) - set(ids))
        if unknown:
            raise UsageError(f"--device {unknown[0]} is not an active device of the inventory")
        ids = [d for d in ids if d in set(only)]
    devices = CommandDevices(
        ids,
        mqtt_url=settings.mqtt_url,
        protocol=settings.mqtt_protocol,
        config=config.commands,
        credentials=Credentials(credentials, settings.mqtt_ca_file),
        faulty=faulty,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_a: stop.set())
    devices.start()
    click.echo(f"{len(ids)} devices connected; answering commands (Ctrl-C stops)", err=True)
    try:
        while not stop.wait(0.5):
            if devices.error is not None:
                raise UsageError(f"the simulated devices stopped: {devices.error}")
    finally:
        devices.stop()
