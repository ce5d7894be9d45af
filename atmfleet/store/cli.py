"""``atmfleet db``: create/upgrade the schema, load the inventory, prune old rows, the
store's maintenance jobs (TimescaleDB policies, :mod:`atmfleet.store.jobs`), and the
devices that send messages but are not in the inventory."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path
from zoneinfo import ZoneInfo

import click

from atmfleet.settings import load_settings
from atmfleet.store.connect import connect
from atmfleet.store.jobs import job_lines, read_jobs, run_policies
from atmfleet.store.migrate import Flavour, applied_versions, discover, require_current, upgrade
from atmfleet.store.retention import prune, prune_dead_letters, set_policy


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
    """Show which migrations are applied and which are pending, and each TimescaleDB job
    (policy) with its latest run by the scheduler and by `atmfleet db prune`."""
    settings = load_settings()
    with connect(settings.require_database_url(), autocommit=True) as conn:
        done = applied_versions(conn)
        jobs = read_jobs(conn)
        row = conn.execute("SELECT clock_timestamp()").fetchone()
    for mig in discover():
        state = f"applied ({done[mig.version][0]})" if mig.version in done else "pending"
        click.echo(f"{mig.version:04d}_{mig.name}: {state}")
    assert row is not None
    for line in job_lines(jobs, row[0], ZoneInfo(settings.timezone)):
        click.echo(line)


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
    click.echo(
        f"loaded {subbranches} sub-branches, {branches} branches, {devices} devices,"
        f" {len(inventory.maintainers)} maintainers"
    )


@db.command("unregistered")
def db_unregistered() -> None:
    """List devices that send messages but are not in the inventory (stored, not counted)."""
    from atmfleet.store.unregistered import unregistered

    settings = load_settings()
    with connect(settings.require_database_url()) as conn:
        found = unregistered(conn)
    if not found:
        click.echo("no unregistered devices: every device that sent messages is in the inventory")
        return
    click.echo(f"{len(found)} device(s) not in the inventory; their messages are stored and "
               "count once `atmfleet db load-inventory` lists them")  # fmt: skip
    width = max(len("device"), *(len(u.device_id) for u in found))
    click.echo(f"{'device':<{width}}  first seen (UTC)     last seen (UTC)      messages")
    for u in found:
        a = u.first_seen.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        b = u.last_seen.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        click.echo(f"{u.device_id:<{width}}  {a}  {b}  {u.messages:>8}")


@db.command("prune")
@click.option("--days", type=click.IntRange(min=1), default=None, help="Default: the setting.")
@click.option(
    "--all-policies",
    is_flag=True,
    help="TimescaleDB: run every policy, not only those the scheduler does not keep on time.",
)
def db_prune(days: int | None, all_policies: bool) -> None:
    """Plain PostgreSQL: delete telemetry older than the retention. TimescaleDB: run the
    policies (compression, refresh, retention) its scheduler does not keep on time, then
    delete old dead letters. Run it hourly (deploy/atmfleet-db-prune.timer)."""
    settings = load_settings()
    keep = days or settings.database_retention_days
    with connect(settings.require_database_url(), autocommit=True) as conn:
        flavours = {f for f, _ in applied_versions(conn).values()}
        if Flavour.TIMESCALE.value in flavours:
            outcomes = run_policies(conn, everything=all_policies)
            for o in outcomes:
                result = "ok" if o.succeeded else f"failed: {o.error}"
                click.echo(f"job {o.job_id} ({o.proc} {o.relation or '–'}): {result}")
            if not outcomes:
                click.echo(
                    "policies: none due (each kept on time by the scheduler or an earlier run)"
                )
            if keep is not None:
                with conn.transaction():
                    n = prune_dead_letters(conn, keep)
                click.echo(f"dead_letters: {n}")
            if any(not o.succeeded for o in outcomes):
                raise SystemExit(1)
            return
        if keep is None:
            raise click.UsageError("set ATMFLEET_DATABASE_RETENTION_DAYS or pass --days")
        deleted = prune(conn, keep)
    click.echo(", ".join(f"{table}: {n}" for table, n in deleted.items()))
