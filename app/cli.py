"""The ``atmfleet`` command. Each part of the system adds its own subcommands here."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from atmfleet.errors import AtmfleetError

#: (module, attribute) of each subcommand; the parts own their commands.
COMMANDS: tuple[tuple[str, str], ...] = (
    ("atmfleet.store.cli", "db"),
    ("collector.cli", "collect"),
    ("collector.cli", "counters"),
    ("app.inventory_cli", "inventory"),
    ("simulator.cli", "simulate_command"),
    ("app.demo", "demo"),
    ("rules.cli", "kpi"),
    ("exporters.bulletin_cli", "bulletin"),
    ("exporters.cli", "serve"),
    ("dashboards.cli", "dashboards"),
    ("broker.cli", "broker"),
    ("notify.cli", "notify"),
    ("stops.cli", "stops"),
    ("incidents.cli", "incidents"),
    ("commands.cli", "command"),
    ("simulator.devices_cli", "simulate_devices"),
    ("web.cli", "web"),
    ("web.cli", "users"),
    ("cash.cli", "cash"),
)


class AtmfleetGroup(click.Group):
    """Turns a user-facing error into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AtmfleetError as exc:
            click.echo(f"atmfleet: error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=AtmfleetGroup)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="atmfleet")
def cli(verbose: int) -> None:
    """Monitor a bank's fleet of self-service devices."""
    level = logging.WARNING - 10 * min(verbose + 1, 2)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


for _module, _attr in COMMANDS:
    cli.add_command(getattr(importlib.import_module(_module), _attr))


def main() -> None:
    cli(prog_name="atmfleet")


if __name__ == "__main__":
    main()
