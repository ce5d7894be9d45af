"""The ``atmfleet`` command. Each part of the system adds its own subcommands here."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from atmfleet.errors import AtmfleetError

#: (name, module, attribute) of each subcommand; the parts own their commands. A part's
#: module is imported only when its command runs (or for --help), so that e.g. the
#: collector does not load the web console, the cash forecast's numpy and the rest.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("db", "atmfleet.store.cli", "db"),
    ("collect", "collector.cli", "collect"),
    ("counters", "collector.cli", "counters"),
    ("inventory", "app.inventory_cli", "inventory"),
    ("simulate", "simulator.cli", "simulate_command"),
    ("demo", "app.demo", "demo"),
    ("kpi", "rules.cli", "kpi"),
    ("bulletin", "exporters.bulletin_cli", "bulletin"),
    ("serve", "exporters.cli", "serve"),
    ("dashboards", "dashboards.cli", "dashboards"),
    ("broker", "broker.cli", "broker"),
    ("notify", "notify.cli", "notify"),
    ("stops", "stops.cli", "stops"),
    ("incidents", "incidents.cli", "incidents"),
    ("command", "commands.cli", "command"),
    ("simulate-devices", "simulator.devices_cli", "simulate_devices"),
    ("web", "web.cli", "web"),
    ("users", "web.cli", "users"),
    ("cash", "cash.cli", "cash"),
)


class AtmfleetGroup(click.Group):
    """Loads each part's command on first use, and turns a user-facing error into one line
    on stderr and exit code 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *(name for name, _m, _a in COMMANDS)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        for name, module, attr in COMMANDS:
            if name == cmd_name:
                command: click.Command = getattr(importlib.import_module(module), attr)
                return command
        return super().get_command(ctx, cmd_name)

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


def main() -> None:
    cli(prog_name="atmfleet")


if __name__ == "__main__":
    main()
