"""A small stored fleet for the web console's tests: two sub-branches, three branches,
eight devices with state heartbeats from yesterday's local midnight up to now (one in a
fault since this morning, one never reporting), some transactions, and users of every
role and scope."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import psycopg

from atmfleet.inventory import Branch, Device, Inventory, SubBranch
from atmfleet.protocol import StateMessage, TxnMessage, device_topic, encode
from atmfleet.store.audit import Actor
from atmfleet.store.inventory import upsert_inventory
from atmfleet.store.migrate import upgrade
from atmfleet.store.writer import Accepted, BatchWriter
from web import auth

TZ = ZoneInfo("Asia/Shanghai")
PASSWORD = "correct horse battery"


def _device(ident: str, branch: str, kind: str = "atm", vendor: str = "GRG") -> Device:
    return Device(
        id=ident, branch=branch, type=kind, placement="off_site", vendor=vendor, model="H22N",
        commissioned=date(2025, 1, 1), heartbeat_s=300,
    )  # fmt: skip


INVENTORY = Inventory(
    subbranches=(
        SubBranch(id="S1", name="赤峰", tier="2"),
        SubBranch(id="S2", name="呼伦贝尔", tier="1"),
    ),
    branches=(
        Branch(id="B1", name="红山支行", subbranch="S1"),
        Branch(id="B2", name="松山支行", subbranch="S1"),
        Branch(id="B3", name="海拉尔支行", subbranch="S2"),
    ),
    devices=(
        _device("wa-1", "B1"),
        _device("wa-2", "B1", "crs"),  # in a fault since a few hours ago
        _device("wa-3", "B2", vendor="Hyosung"),
        _device("wa-4", "B2", "smart_teller"),
        _device("wb-1", "B3"),
        _device("wb-2", "B3", "crs", vendor="Hyosung"),
        _device("wb-3", "B3"),
        _device("wb-9", "B3"),  # never reports: no data
    ),
)

#: username -> (role, scope)
USERS = {
    "admin": ("admin", "fleet"),
    "op": ("operator", "fleet"),
    "viewer": ("viewer", "fleet"),
    "s1op": ("operator", "subbranch:S1"),
    "s2op": ("operator", "subbranch:S2"),
    "b3view": ("viewer", "branch:B3"),
}


def seed(url: str) -> datetime:
    """Schema, inventory, telemetry and users; returns now (UTC)."""
    with psycopg.connect(url, autocommit=True) as conn:
        upgrade(conn)
    now = datetime.now(UTC).replace(microsecond=0)
    today = now.astimezone(TZ).date()
    start = datetime.combine(today - timedelta(days=1), time(0), tzinfo=TZ).astimezone(UTC)
    fault_from = now - timedelta(hours=3)
    msgs: list[Accepted] = []
    for d in INVENTORY.devices:
        if d.id == "wb-9":
            continue
        at, seq = start, 0
        while at <= now:
            state = "fault" if d.id == "wa-2" and at >= fault_from else "in_service"
            m = StateMessage(
                v=1, device_id=d.id, ts=at, seq=seq, state=state, heartbeat_s=300,
                components={"idc": "ok", "cdm": "fault" if state == "fault" else "ok"},
                cash_units=[{"id": "C1", "type": "dispense", "denomination": 100,
                             "count": 1500, "capacity": 2500, "status": "ok"}],
            )  # fmt: skip
            msgs.append(Accepted(m, m.ts, device_topic(d.id, "state"), encode(m)))
            at += timedelta(minutes=5)
            seq += 1
        for i in range(12):
            ts = start + timedelta(hours=10, minutes=i)
            t = TxnMessage(
                v=1, device_id=d.id, ts=ts, seq=100_000 + i, txn_id=f"{d.id}-{i}",
                type="withdrawal" if i % 3 else "inquiry", amount=Decimal("100"),
                fee=Decimal("0"), result="ok", duration_ms=900,
            )  # fmt: skip
            msgs.append(Accepted(t, t.ts, device_topic(d.id, "txn"), encode(t)))
    with psycopg.connect(url) as conn:
        upsert_inventory(conn, INVENTORY)
        BatchWriter(conn, "test").write(msgs)
        for name, (role, scope) in USERS.items():
            auth.add_user(conn, Actor("admin", "cli"), name, role, scope, PASSWORD, name)
        conn.execute(
            "INSERT INTO maintainers (id, vendor, region, name, phone) VALUES"
            " ('grg-nm', 'GRG', '*', '广电运通内蒙古', '0471-0000000'),"
            " ('hy-nm', 'Hyosung', '*', '晓星内蒙古', '0471-1111111')"
        )
        conn.commit()
        open_incidents(conn, now)
        conn.commit()
    return now


#: The incidents the tests act on: device -> (class, cause, hours ago).
INCIDENTS = {
    "wa-2": ("component", "fault", 3),  # S1
    "wa-3": ("cash", "cash_out", 1),  # S1
    "wb-1": ("network", "communications", 2),  # S2
    "wb-2": ("component", "fault", 5),  # S2
}


def open_incidents(conn: psycopg.Connection, now: datetime) -> dict[str, int]:
    from incidents.model import IncidentClass
    from incidents.service import open_incident

    out = {}
    by_id = INVENTORY.device_by_id
    for device_id, (cls, cause, hours) in INCIDENTS.items():
        d = by_id[device_id]
        sub = INVENTORY.branch_by_id[d.branch].subbranch
        inc = open_incident(
            conn, device_id=device_id, subbranch_id=sub, branch_id=d.branch, vendor=d.vendor,
            model=d.model, cls=IncidentClass(cls), cause=cause,
            component="cdm" if cls == "component" else None,
            started_at=now - timedelta(hours=hours), opened_at=now - timedelta(hours=hours),
            maintainer_id=None, contract="default",
        )  # fmt: skip
        assert inc is not None
        out[device_id] = inc.id
    return out


if __name__ == "__main__":  # a manual look: python -m tests.web_fleet URL
    import sys

    seed(sys.argv[1] if len(sys.argv) > 1 else os.environ["ATMFLEET_DATABASE_URL"])
