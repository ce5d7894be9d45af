"""Hand-built fleets and state histories for the incident tests (real PostgreSQL)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import psycopg

from atmfleet.inventory import (
    Branch,
    Device,
    DeviceType,
    Inventory,
    Maintainer,
    Placement,
    SubBranch,
    Tier,
)
from atmfleet.store.inventory import upsert_inventory

S1, S2 = "S1", "S2"
B1, B2 = "S1-B1", "S2-B1"


def inventory(
    devices_per_branch: int = 3, vendor: str = "GRG", windows: dict[str, str] | None = None
) -> Inventory:
    """Two sub-branches (tiers 1 and 3), one branch each, ``devices_per_branch`` off-site
    ATMs in each (ids ``S1-B1-D000``...), and GRG's teams: one for S1, one for the rest."""
    windows = windows or {}
    subs = (
        SubBranch(id=S1, name="一分行", tier=Tier.FIRST),
        SubBranch(id=S2, name="二分行", tier=Tier.THIRD),
    )
    branches = (
        Branch(id=B1, name="一支行", subbranch=S1),
        Branch(id=B2, name="二支行", subbranch=S2),
    )
    devices = tuple(
        Device(
            id=f"{b.id}-D{i:03d}",
            branch=b.id,
            type=DeviceType.ATM,
            placement=Placement.OFF_SITE,
            vendor=vendor,
            model="H68",
            commissioned=date(2020, 1, 1),
            service_window=windows.get(f"{b.id}-D{i:03d}"),
        )
        for b in branches
        for i in range(devices_per_branch)
    )
    maintainers = (
        Maintainer(id="M-GRG-S1", vendor=vendor, region=S1, name="一分行维保站"),
        Maintainer(id="M-GRG-ALL", vendor=vendor, region="*", name="总维保站"),
    )
    return Inventory(subbranches=subs, branches=branches, devices=devices, maintainers=maintainers)


def setup(conn: psycopg.Connection[Any], inv: Inventory) -> None:
    upsert_inventory(conn, inv)
    conn.execute(
        "INSERT INTO users (username, role, scope_kind, scope_id) VALUES"
        " ('alice', 'operator', 'fleet', NULL), ('bob', 'operator', 'subbranch', %s),"
        " ('carol', 'operator', 'fleet', NULL), ('vera', 'viewer', 'fleet', NULL)",
        (S2,),
    )
    conn.commit()


def db_now(conn: psycopg.Connection[Any]) -> datetime:
    row = conn.execute("SELECT date_trunc('second', now())").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


_seq = [0]


def run(
    conn: psycopg.Connection[Any],
    device_id: str,
    start: datetime,
    end: datetime,
    state: str,
    heartbeat_s: int = 60,
) -> None:
    """One state run (consecutive samples of one state, as the store keeps them)."""
    _seq[0] += 2
    samples = max(1, int((end - start).total_seconds() // heartbeat_s) + 1)
    conn.execute(
        "INSERT INTO state_runs (device_id, start_ts, start_seq, last_ts, last_seq, state,"
        " heartbeat_s, samples) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (device_id, start, _seq[0], end, _seq[0] + 1, state, heartbeat_s, samples),
    )


def history(
    conn: psycopg.Connection[Any], device_id: str, now: datetime, *steps: tuple[float, str]
) -> None:
    """Runs from (minutes before now, state) steps, each lasting until the next one; the
    last one until now. Samples every 60 s, so each run ends one heartbeat before the next
    starts (no silent gap)."""
    for k, (minutes, state) in enumerate(steps):
        start = now - timedelta(minutes=minutes)
        end = now if k + 1 == len(steps) else now - timedelta(minutes=steps[k + 1][0], seconds=1)
        run(conn, device_id, start, max(start, end), state)
    conn.commit()


def fault_event(
    conn: psycopg.Connection[Any], device_id: str, at: datetime, component: str
) -> None:
    _seq[0] += 1
    conn.execute(
        "INSERT INTO events (device_id, seq, ts, received_at, event, component, severity)"
        " VALUES (%s, %s, %s, %s, 'fault', %s, 'critical')",
        (device_id, _seq[0], at, at, component),
    )
    conn.commit()


def template_database() -> str:
    """An upgraded database to copy (``CREATE DATABASE ... TEMPLATE``): copying it is much
    cheaper than running every migration for each test."""
    from atmfleet.store.migrate import upgrade
    from tests.conftest import create_database

    url = create_database("atmfleet_tmpl")
    with psycopg.connect(url, autocommit=True) as conn:
        upgrade(conn)
    return url


def copy_database(template_url: str) -> str:
    import uuid
    from urllib.parse import urlsplit

    from tests.conftest import PG_ADMIN_URL, _with_db

    name = f"atmfleet_test_{uuid.uuid4().hex[:10]}"
    template = urlsplit(template_url).path.lstrip("/")
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return _with_db(PG_ADMIN_URL, name)
