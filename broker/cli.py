"""``atmfleet broker``: the broker's credentials and ACL, from the inventory."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from atmfleet.errors import ConfigError
from broker.credentials import DeviceAuth, generate, write_file
from broker.policy import (
    DEFAULT_FEED,
    Identity,
    Services,
    check_names,
    identities,
    render_acl,
)

log = logging.getLogger(__name__)

_services = [
    click.option(
        "--collector",
        "collectors",
        multiple=True,
        help="A collector identity (repeat for several; default atmfleet-collector-1). "
        "It is also that collector's client id.",
    ),
    click.option(
        "--feed", default=DEFAULT_FEED, show_default=True, help="The counter feed's identity."
    ),
    click.option(
        "--operator",
        "operators",
        multiple=True,
        help="An operators' tool identity (repeat; default atmfleet-ops).",
    ),
    click.option(
        "--commands",
        "commands",
        multiple=True,
        help="The remote-command listener's identity (default atmfleet-commands).",
    ),
]


_F = TypeVar("_F", bound=Callable[..., Any])


def _with_services(f: _F) -> _F:
    for option in reversed(_services):
        f = option(f)
    return f


def _identities(
    inventory_path: Path,
    collectors: tuple[str, ...],
    feed: str,
    operators: tuple[str, ...],
    commands: tuple[str, ...] = (),
) -> list[Identity]:
    from atmfleet.inventory_io import load_inventory

    services = Services(
        collectors or Services.collectors,
        feed,
        operators or Services.operators,
        commands or Services.commands,
    )
    idents = identities(load_inventory(inventory_path), services)
    check_names(idents)
    return idents


@click.group("broker")
def broker() -> None:
    """The MQTT broker's credentials and ACL, from the inventory (docs/security.md)."""


@broker.command("credentials")
@click.argument("inventory", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The broker's credentials directory (e.g. /etc/mosquitto/atmfleet).",
)
@click.option(
    "--devices",
    "device_auth",
    type=click.Choice([a.value for a in DeviceAuth]),
    default=DeviceAuth.CERT.value,
    show_default=True,
    help="How devices and gateways authenticate: client certificate (recommended) or password.",
)
@click.option(
    "--server-name",
    "server_names",
    multiple=True,
    help="Host name or IP address clients use for the broker (repeat; default localhost, 127.0.0.1).",
)
@click.option("--ca-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--ca-key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_with_services
def broker_credentials(
    inventory: Path,
    out: Path,
    device_auth: str,
    server_names: tuple[str, ...],
    ca_cert: Path | None,
    ca_key: Path | None,
    collectors: tuple[str, ...],
    feed: str,
    operators: tuple[str, ...],
    commands: tuple[str, ...],
) -> None:
    """Write the password file, certificates and CRL for every identity of the inventory;
    revoke the identities it no longer has. Reload the broker afterwards (SIGHUP)."""
    idents = _identities(inventory, collectors, feed, operators, commands)
    report = generate(
        out,
        idents,
        device_auth=DeviceAuth(device_auth),
        server_names=server_names or ("localhost", "127.0.0.1"),
        ca_cert=ca_cert,
        ca_key=ca_key,
    )
    log.info("broker credentials in %s: %s", out, report.summary())
    click.echo(
        f"{out}: {report.summary()}; passwords are in {out / 'secrets'} (0600), never printed"
    )


@broker.command("acl")
@click.argument("inventory", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the ACL here (default: standard output).",
)
@_with_services
def broker_acl(
    inventory: Path,
    out: Path | None,
    collectors: tuple[str, ...],
    feed: str,
    operators: tuple[str, ...],
    commands: tuple[str, ...],
) -> None:
    """Write the Mosquitto ACL: each identity may use only its own topics."""
    idents = _identities(inventory, collectors, feed, operators, commands)
    text = render_acl(idents)
    if out is None:
        click.echo(text, nl=False)
        return
    if out.is_dir():
        raise ConfigError(f"--out {out}: is a folder; give the ACL file's path")
    write_file(out, text.encode(), 0o644)
    click.echo(f"{out}: {len(idents)} identities")
