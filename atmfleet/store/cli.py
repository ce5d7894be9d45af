"""``atmfleet db``: create/upgrade the schema, load the inventory, prune old rows."""

from __future__ import annotations

from pathlib import Path

import click

from atmfleet.settings import load_settings
from atmfleet.store.connect import connect
from atmfleet.store.migrate import Flavour, applied_versions, discover, require_current, upgrade
from atmfleet.store.retention import prune, set_policy


@click.group("db")
def db() -> None:
    """The database: schema, inventory, retention (reads ATMFLEET_DATABASE_URL)."""


@db.command("upgrade")
@click.option(
    "--flavour",
    type=click.Choice([f.value for f in Flavour]),
    default=None,
    help="Force plain PostgreSQL or TimescaleDB on a new database (default: detect).",
)
def db_upgrade(flavour: str | None) -> None:
    """Apply every migration not yet applied (idempotent), then the retention policy."""
    settings = load_settings()
    with connect(settings.require_database_url(), autocommit=True) as conn:
        result = upgrade(
            conn, timezone=settings.timezone, flavour=Flavour(flavour) if flavour else None
        )
        set_policy(conn, result.flavour, settings.database_retention_days)
    applied = ", ".join(f"{v:04d}" for v in result.applied) or "none"
    click.echo(
        f"schema at version {result.current:04d} ({result.flavour.value}); applied: {applied}"
    )
    days = settings.database_retention_days
    if days is not None and result.flavour is Flavour.TIMESCALE:
        click.echo(f"retention: chunks older than {days} days are dropped by TimescaleDB")
    elif days is not None:
        click.echo(f"retention: {days} days; run `atmfleet db prune` daily (plain PostgreSQL)")


@db.command("status")
def db_status() -> None:
    """Show which migrations are applied and which are pending."""
    settings = load_settings()
    with connect(settings.require_database_url(), autocommit=True) as conn:
        done = applied_versions(conn)
    for mig in discover():
        state = f"applied ({done[mig.version][0]})" if mig.version in done else "pending"
        click.echo(f"{mig.version:04d}_{mig.name}: {state}")


@db.command("roles")
def db_roles() -> None:
    """Print the commands that create least-privilege logins (owner, writer, reader)."""
    from atmfleet.store.roles import role_commands

    settings = load_settings()
    with connect(settings.require_database_url(), autocommit=True) as conn:
        require_current(conn)
        click.echo(role_commands(conn), nl=False)


@db.command("load-inventory")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
def db_load_inventory(path: Path) -> None:
    """Upsert the inventory (YAML file or folder of CSV files) into the database."""
    from atmfleet.inventory_io import load_inventory
    from atmfleet.store.inventory import upsert_inventory

    inventory = load_inventory(path)
    settings = load_settings()
    with connect(settings.require_database_url()) as conn:
        subbranches, branches, devices = upsert_inventory(conn, inventory)
    click.echo(f"loaded {subbranches} sub-branches, {branches} branches, {devices} devices")


@db.command("prune")
@click.option("--days", type=click.IntRange(min=1), default=None, help="Default: the setting.")
def db_prune(days: int | None) -> None:
    """Delete telemetry older than the retention (plain PostgreSQL; run it daily)."""
    settings = load_settings()
    keep = days or settings.database_retention_days
    if keep is None:
        raise click.UsageError("set ATMFLEET_DATABASE_RETENTION_DAYS or pass --days")
    with connect(settings.require_database_url()) as conn:
        deleted = prune(conn, keep)
    click.echo(", ".join(f"{table}: {n}" for table, n in deleted.items()))
