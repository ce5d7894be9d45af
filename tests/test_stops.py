"""The planned-stop register against the real PostgreSQL: hand-computed 开机率 figures.

One local day, 2026-11-27 (Asia/Shanghai), of 24x7 devices reporting every 5 minutes from
local midnight (so the whole day is monitored). Each test uses its own devices, so the
module shares one database. Times below are local hours of that day.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from app.cli import cli
from atmfleet.errors import Conflict, Forbidden, UsageError
from atmfleet.inventory import Branch, Device, DeviceType, Inventory, Placement, SubBranch, Tier
from atmfleet.protocol import StateMessage, device_topic, encode
from atmfleet.store.audit import Actor
from atmfleet.store.inventory import upsert_inventory
from atmfleet.store.migrate import upgrade
from atmfleet.store.writer import Accepted, BatchWriter
from rules.config import Rules, load_rules
from rules.feed import Feed, uptime_for, window_days
from rules.labels import Label
from rules.timeline import registered_stops
from rules.uptime import Uptime
from stops import service
from tests.conftest import create_database, drop_database

pytestmark = pytest.mark.integration

RULES = load_rules()
TZ = RULES.tz
DAY = date(2026, 11, 27)
H = 3_600_000

#: device -> (branch, [(from hour, to hour, state)]); in service otherwise.
DEVICES: dict[str, tuple[str, list[tuple[float, float, str]]]] = {
    "P-A1": ("PB1", [(10, 14, "fault")]),
    "P-A2": ("PB1", [(8, 10, "planned_maintenance"), (10, 11, "fault")]),
    "P-C1": ("PB2", [(10, 12, "fault")]),
    "P-C2": ("PB2", [(10, 12, "fault")]),
    "P-R1": ("PB3", [(10, 14, "fault")]),
    "P-R2": ("PB3", [(10, 14, "fault")]),
    "P-X1": ("PB3", [(10, 14, "fault")]),
    "P-S1": ("PB4", [(10, 14, "fault")]),
    "P-B1": ("PB5", [(10, 14, "fault")]),
}
INVENTORY = Inventory(
    subbranches=(
        SubBranch(id="PS1", name="一支", tier=Tier.FIRST),
        SubBranch(id="PS2", name="二支", tier=Tier.SECOND),
        SubBranch(id="PS3", name="三支", tier=Tier.SECOND),
    ),
    branches=(
        Branch(id="PB1", name="网点一", subbranch="PS1"),
        Branch(id="PB2", name="网点二", subbranch="PS1"),
        Branch(id="PB3", name="网点三", subbranch="PS2"),
        Branch(id="PB4", name="网点四", subbranch="PS2"),
        Branch(id="PB5", name="网点五", subbranch="PS3"),
    ),
    devices=tuple(
        Device(
            id=d,
            branch=b,
            type=DeviceType.ATM,
            placement=Placement.OFF_SITE,
            vendor="V",
            model="M",
            commissioned=date(2026, 1, 1),
            heartbeat_s=300,
        )
        for d, (b, _) in DEVICES.items()
    ),
)
USERS = [
    ("alice", "operator", "fleet", None),
    ("bob", "operator", "fleet", None),
    ("vera", "viewer", "fleet", None),
    ("brian", "operator", "branch", "PB3"),  # one branch of PS2
    ("sam", "operator", "subbranch", "PS2"),
    ("ada", "admin", "fleet", None),
]
ALICE, BOB, VERA = Actor("alice", "cli"), Actor("bob", "cli"), Actor("vera", "cli")
BRIAN, SAM, ADA = Actor("brian", "cli"), Actor("sam", "cli"), Actor("ada", "cli")


def local(hour: float, day: date = DAY) -> datetime:
    """Local ``hour`` of ``day`` (Asia/Shanghai)."""
    return datetime.combine(day, time(0), tzinfo=TZ) + timedelta(hours=hour)


AHEAD = local(12, DAY - timedelta(days=1))  # "now" when a stop is registered ahead


def _messages() -> list[Accepted]:
    out = []
    for device, (_, spans) in DEVICES.items():
        for i in range(0, 24 * 12 + 7):  # 00:00 to 00:30 the next day, every 5 minutes
            at = (local(0) + timedelta(minutes=5 * i)).astimezone(UTC)
            value = next((s for a, b, s in spans if a * 12 <= i < b * 12), "in_service")
            msg = StateMessage(v=1, device_id=device, ts=at, seq=i, state=value, heartbeat_s=300)
            out.append(Accepted(msg, msg.ts, device_topic(device, "state"), encode(msg)))
    return out


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    url = create_database()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            upgrade(conn, timezone=RULES.timezone)
        with psycopg.connect(url) as conn:
            upsert_inventory(conn, INVENTORY)
            BatchWriter(conn, "test").write(_messages())
            for name, role, kind, scope in USERS:
                conn.execute(
                    "INSERT INTO users (username, role, scope_kind, scope_id) VALUES (%s,%s,%s,%s)",
                    (name, role, kind, scope),
                )
            conn.commit()
        yield url
    finally:
        drop_database(url)


@pytest.fixture
def conn(url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(url) as c:
        yield c


def uptime(conn: psycopg.Connection[Any], device: str, rules: Rules = RULES) -> Uptime:
    """The device's uptime on DAY through the feed (as `atmfleet kpi uptime` computes it)."""
    feed = Feed(conn, rules)
    dev = next(d for d in feed.inventory().devices if d.id == device)
    got = uptime_for(feed, [dev], DAY, DAY, feed.now_ms()).per_device[device][DAY]
    conn.commit()
    return got


def figures(up: Uptime) -> tuple[float, float, float, float]:
    """(S, A, planned excluded, down) in hours."""
    return (up.scheduled_ms / H, up.available_ms / H, up.planned_excluded_ms / H, up.down_ms / H)


def ahead(conn: psycopg.Connection[Any], a: float, b: float, **target: str) -> service.Stop:
    """A stop registered the day before by alice and approved by bob."""
    stop = service.add(conn, ALICE, rules=RULES, starts_at=local(a), ends_at=local(b),
                       reason="系统升级", now=AHEAD, **target)  # fmt: skip
    return service.approve(conn, stop.id, BOB, rules=RULES, now=AHEAD + timedelta(hours=1))


def capped(seconds: int) -> Rules:
    return RULES.model_copy(
        update={"planned_maintenance": RULES.planned_maintenance.model_copy(
            update={"max_excluded_s_per_day": seconds})}
    )  # fmt: skip


def invoke(url: str, *args: str, user: str = "alice", rules_file: str | None = None) -> Any:
    env = {"ATMFLEET_DATABASE_URL": url, "ATMFLEET_USER": user, "ATMFLEET_RULES_FILE": rules_file}
    return CliRunner().invoke(cli, list(args), env=env)


# --------------------------------------------------------------------- the pure rule


def test_the_merge_rule_on_plain_intervals() -> None:
    """Inside a stop every downtime cause becomes planned; available and unknown stay."""
    line = [(0, 10, Label.AVAILABLE), (10, 20, Label.FAULT), (20, 30, Label.UNKNOWN),
            (30, 40, Label.PLANNED), (40, 50, Label.COMMUNICATIONS)]  # fmt: skip
    assert registered_stops(line, [(5, 45), (44, 47)]) == [
        (0, 10, Label.AVAILABLE),
        (10, 20, Label.PLANNED),
        (20, 30, Label.UNKNOWN),
        (30, 47, Label.PLANNED),
        (47, 50, Label.COMMUNICATIONS),
    ]


def test_local_times_on_the_command_line() -> None:
    from stops.cli import parse_local

    assert parse_local("2026-12-03 09:00", RULES, "--from") == local(9, date(2026, 12, 3))
    assert parse_local("2026-12-03T9:30", RULES, "--from") == local(9.5, date(2026, 12, 3))
    assert parse_local("2026-12-03", RULES, "--from") == local(0, date(2026, 12, 3))
    assert parse_local("2026-12-03", RULES, "--to", end=True) == local(0, date(2026, 12, 4))
    assert parse_local("2026-12-03T01:00:00+00:00", RULES, "--to") == local(9, date(2026, 12, 3))
    with pytest.raises(UsageError, match=r"--from 'tomorrow': give local time"):
        parse_local("tomorrow", RULES, "--from")
    with pytest.raises(UsageError, match="--to '2026-02-30'"):
        parse_local("2026-02-30", RULES, "--to", end=True)


# ------------------------------------------------------------------ the figures of S


def test_a_stop_registered_ahead_takes_the_fault_inside_it_out_of_s(
    conn: psycopg.Connection[Any],
) -> None:
    """P-A1: fault 10-14; stop 09-12 registered the day before and approved. 09-10 it
    was in service (stays available), 10-12 is planned, 12-14 stays fault."""
    assert figures(uptime(conn, "P-A1")) == (24, 20, 0, 4)
    stop = service.add(conn, ALICE, rules=RULES, starts_at=local(9), ends_at=local(12),
                       reason="系统升级", device_id="P-A1", now=AHEAD)  # fmt: skip
    assert not stop.retroactive and stop.status == "requested"
    assert figures(uptime(conn, "P-A1")) == (24, 20, 0, 4)  # requested: nothing changes
    service.approve(conn, stop.id, BOB, rules=RULES, now=AHEAD)
    up = uptime(conn, "P-A1")
    assert figures(up) == (22, 20, 2, 2)
    assert up.down_by_cause()[Label.FAULT] == 2 * H
    # The cap (1 h a day) applies: 1 h planned out of S, the other hour down (planned).
    up = uptime(conn, "P-A1", capped(3600))
    assert figures(up) == (23, 20, 1, 3)
    assert up.down_by_cause()[Label.PLANNED] == 1 * H
    assert service.covering(conn, ["P-A1", "P-A2"], local(11)) == {"P-A1"}
    assert service.covering(conn, ["P-A1"], local(12)) == set()  # [from, to)


def test_overlap_with_declared_planned_and_a_fault_is_counted_once_under_the_cap(
    conn: psycopg.Connection[Any],
) -> None:
    """P-A2 declares planned maintenance 08-10, then a fault 10-11; stop 09-12. Planned
    is the union 08-11 (3 h, the overlap 09-10 once); 11-12 it served (available)."""
    assert figures(uptime(conn, "P-A2")) == (22, 21, 2, 1)
    ahead(conn, 9, 12, device_id="P-A2")
    assert figures(uptime(conn, "P-A2")) == (21, 21, 3, 0)
    # With a 1 h cap the union (3 h) is capped once: 1 h out of S, 2 h down (planned).
    up = uptime(conn, "P-A2", capped(3600))
    assert figures(up) == (23, 21, 1, 2)
    assert up.down_by_cause()[Label.PLANNED] == 2 * H
    assert up.down_by_cause()[Label.FAULT] == 0


def test_a_branch_stop_covers_every_device_of_the_branch(
    conn: psycopg.Connection[Any], url: str
) -> None:
    """PB2 (P-C1, P-C2, each fault 10-12): a branch stop 10-11."""
    stop = ahead(conn, 10, 11, branch_id="PB2")
    assert stop.target == "branch:PB2"
    for d in ("P-C1", "P-C2"):
        assert figures(uptime(conn, d)) == (23, 22, 1, 1)
    assert service.covering(conn, ["P-C1", "P-C2", "P-R2"], local(10.5)) == {"P-C1", "P-C2"}
    assert service.covering(conn, ["P-C1", "P-C2"], local(11)) == set()
    got = invoke(url, "kpi", "uptime", "--scope", "branch:PB2", "--date", str(DAY), "--json")
    assert got.exit_code == 0, got.output
    total = json.loads(got.output)["total"]
    assert (total["scheduled_ms"], total["available_ms"], total["planned_ms"]) == (
        46 * H, 44 * H, 2 * H,
    )  # fmt: skip
    assert "planned_h" in invoke(url, "kpi", "uptime", "--scope", "branch:PB2", "--date",
                                 str(DAY)).output  # fmt: skip


def test_retroactive_within_n_days_needs_an_approver_and_beyond_is_refused(
    conn: psycopg.Connection[Any],
) -> None:
    """P-R1, fault 10-14 on the 27th. Registered on the 29th (2 days back, N = 3):
    requested, not excluded; excluded once approved. On 1 December (4 days back) refused,
    and a request of the 29th approved on 1 December is refused too."""
    retro = service.add(conn, ALICE, rules=RULES, starts_at=local(10), ends_at=local(14),
                        reason="迁移", device_id="P-R1", now=local(10, date(2026, 11, 29)))  # fmt: skip
    assert retro.retroactive and retro.status == "requested"
    assert figures(uptime(conn, "P-R1")) == (24, 20, 0, 4)  # without approval: downtime
    with pytest.raises(UsageError, match=r"at most 3 days back.*max_retroactive_days"):
        service.add(conn, ALICE, rules=RULES, starts_at=local(10), ends_at=local(14),
                    reason="迁移", device_id="P-R1", now=local(10, date(2026, 12, 1)))  # fmt: skip
    late = service.add(conn, ALICE, rules=RULES, starts_at=local(10), ends_at=local(14),
                       reason="迁移", device_id="P-R2", now=local(10, date(2026, 11, 29)))  # fmt: skip
    with pytest.raises(UsageError, match="cannot approve it: the stop starts 2026-11-27 10:00"):
        service.approve(conn, late.id, BOB, rules=RULES, now=local(10, date(2026, 12, 1)))
    assert figures(uptime(conn, "P-R2")) == (24, 20, 0, 4)

    # Kept days: the 27th is closed and kept before the approval ...
    feed = Feed(conn, RULES)
    dev = [d for d in feed.inventory().devices if d.id == "P-R1"]
    horizon = feed.now_ms()
    assert window_days(feed, dev, DAY, DAY, horizon)["P-R1"].scheduled == [24 * H]
    kept = conn.execute("SELECT count(*) FROM kpi_device_days WHERE device_id = 'P-R1'")
    assert kept.fetchone() == (1,)
    conn.commit()
    service.approve(conn, retro.id, BOB, rules=RULES, now=local(11, date(2026, 11, 29)))
    # ... and the approval deleted it in its transaction: the day is computed anew.
    kept = conn.execute("SELECT count(*) FROM kpi_device_days WHERE device_id = 'P-R1'")
    assert kept.fetchone() == (0,)
    conn.commit()
    assert window_days(feed, dev, DAY, DAY, horizon)["P-R1"].scheduled == [20 * H]
    assert figures(uptime(conn, "P-R1")) == (20, 20, 4, 0)


def test_cancel_gives_the_downtime_back_and_every_change_is_audited(
    conn: psycopg.Connection[Any],
) -> None:
    """P-X1, fault 10-14: a stop added, edited, approved, then cancelled."""
    stop = service.add(conn, ALICE, rules=RULES, starts_at=local(10), ends_at=local(12),
                       reason="装修", device_id="P-X1", now=AHEAD)  # fmt: skip
    stop = service.edit(conn, stop.id, ALICE, rules=RULES, ends_at=local(14), now=AHEAD)
    stop = service.approve(conn, stop.id, BOB, rules=RULES, now=AHEAD)
    assert figures(uptime(conn, "P-X1")) == (20, 20, 4, 0)
    stop = service.cancel(conn, stop.id, ALICE, remarks="推迟")
    assert stop.status == "cancelled" and stop.cancelled_by == "alice"
    assert figures(uptime(conn, "P-X1")) == (24, 20, 0, 4)
    rows = conn.execute(
        "SELECT actor, action, before->>'status', after->>'status', before->>'ends_at',"
        " after->>'ends_at' FROM audit_log WHERE object_type = 'planned_stop'"
        " AND object_id = %s ORDER BY id",
        (str(stop.id),),
    ).fetchall()
    end12, end14 = local(12).astimezone(UTC), local(14).astimezone(UTC)
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        ("alice", "stop.add", None, "requested"),
        ("alice", "stop.edit", "requested", "requested"),
        ("bob", "stop.approve", "requested", "approved"),
        ("alice", "stop.cancel", "approved", "cancelled"),
    ]
    assert datetime.fromisoformat(rows[1][4]) == end12
    assert datetime.fromisoformat(rows[1][5]) == end14
    # Final: nothing more may happen to it, and the message says so.
    with pytest.raises(UsageError, match="it is cancelled; allowed: none"):
        service.approve(conn, stop.id, BOB, rules=RULES)


# ----------------------------------------------------------------- who may do what


def test_role_and_scope_refusals(conn: psycopg.Connection[Any]) -> None:
    def add(actor: Actor, device: str) -> service.Stop:
        return service.add(conn, actor, rules=RULES, starts_at=local(1), ends_at=local(2),
                           reason="测试", device_id=device, now=AHEAD)  # fmt: skip

    with pytest.raises(Forbidden, match="is a viewer; this needs operator"):
        add(VERA, "P-S1")
    with pytest.raises(UsageError, match="not registered"):
        add(Actor("nobody", "cli"), "P-S1")
    with pytest.raises(Forbidden, match="outside that scope"):
        add(BRIAN, "P-S1")  # PB4, brian acts for PB3
    with pytest.raises(UsageError, match="not in the inventory"):
        add(ALICE, "NOPE")
    stop = add(BRIAN, "P-R2")  # his own branch
    with pytest.raises(Forbidden, match="another user"):
        service.approve(conn, stop.id, BRIAN, rules=RULES, now=AHEAD)
    with pytest.raises(Forbidden, match="is a viewer"):
        service.approve(conn, stop.id, VERA, rules=RULES, now=AHEAD)
    admins_only = RULES.model_copy(update={"planned_stops": RULES.planned_stops.model_copy(
        update={"approver_role": "admin"})})  # fmt: skip
    with pytest.raises(Forbidden, match="this needs admin"):
        service.approve(conn, stop.id, BOB, rules=admins_only, now=AHEAD)
    # A stale version is a conflict; the sub-branch's operator approves.
    with pytest.raises(Conflict, match="changed by someone else"):
        service.approve(conn, stop.id, SAM, rules=RULES, expected_version=0, now=AHEAD)
    approved = service.approve(conn, stop.id, SAM, rules=RULES, expected_version=1, now=AHEAD)
    assert approved.approver == "sam" and approved.version == 2
    with pytest.raises(UsageError, match="it is approved; allowed: cancel"):
        service.approve(conn, stop.id, ADA, rules=RULES)
    elsewhere = add(ALICE, "P-A1")
    with pytest.raises(Forbidden, match="outside that scope"):
        service.approve(conn, elsewhere.id, SAM, rules=RULES, now=AHEAD)  # PS1, sam has PS2
    service.reject(conn, elsewhere.id, ADA, rules=RULES, remarks="不需要")
    service.cancel(conn, approved.id, BRIAN)
    # Each sees only the stops of their scope.
    seen = {s.id for s in service.list_stops(conn, BRIAN)}
    assert approved.id in seen and elsewhere.id not in seen
    assert elsewhere.id in {s.id for s in service.list_stops(conn, VERA)}


# ---------------------------------------------------------------------- the commands


def test_the_command_line(url: str, tmp_path: Path) -> None:
    """Times are typed and shown in local time; refusals are one line and exit 2."""
    got = invoke(url, "stops", "add", "--device", "P-S1", "--from", "2026-11-27 10:00",
                 "--to", "2026-11-27 13:00", "--reason", "迁移", "--json")  # fmt: skip
    assert got.exit_code == 2
    assert got.output.startswith("atmfleet: error: cannot register it: the stop starts")
    assert "Traceback" not in got.output
    rules_file = tmp_path / "rules.yaml"
    back = (datetime.now(TZ).date() - DAY).days  # the 27th is this many days back
    rules_file.write_text(f"planned_stops:\n  max_retroactive_days: {back}\n")
    rf = str(rules_file)
    got = invoke(url, "stops", "add", "--device", "P-S1", "--from", "2026-11-27 10:00",
                 "--to", "2026-11-27 13:00", "--reason", "迁移", "--json", rules_file=rf)  # fmt: skip
    assert got.exit_code == 0, got.output
    stop = json.loads(got.output)
    assert stop["starts_at"] == "2026-11-27T10:00:00+08:00" and stop["retroactive"] is True
    assert (stop["status"], stop["requester"], stop["target"]) == ("requested", "alice",
                                                                   "device:P-S1")  # fmt: skip
    got = invoke(url, "stops", "approve", str(stop["id"]), rules_file=rf)
    assert got.exit_code == 2 and "another user" in got.output
    got = invoke(url, "stops", "approve", str(stop["id"]), "--json", user="bob", rules_file=rf)
    assert got.exit_code == 0, got.output
    assert json.loads(got.output)["status"] == "approved"
    listed = invoke(url, "stops", "list", "--device", "P-S1", user="brian")  # PB3 only
    assert "device:P-S1" not in listed.output
    listed = invoke(url, "stops", "list", "--device", "P-S1", "--json", user="sam")
    assert [s["id"] for s in json.loads(listed.output)] == [stop["id"]]
    table = invoke(url, "stops", "list", "--device", "P-S1", user="sam").output
    assert "2026-11-27 10:00" in table and "Asia/Shanghai" in table
    got = invoke(url, "kpi", "uptime", "--scope", "device:P-S1", "--date", str(DAY), "--json")
    total = json.loads(got.output)["total"]
    assert (total["scheduled_ms"], total["available_ms"], total["planned_ms"]) == (
        21 * H, 20 * H, 3 * H,
    )  # fmt: skip


def test_the_bulletin_shows_planned_time_as_kpi_does(url: str, tmp_path: Path) -> None:
    """PS3 (only P-B1 of PB5, fault 10-14): a device stop 10-13 registered ahead, a branch
    stop 13:00-13:30 registered the next day, and a request never approved (00-01): 3.5 h
    planned in the bulletin's planned table and summary, the numbers `atmfleet kpi
    uptime` prints, and the two approved stops listed."""
    with psycopg.connect(url) as conn:
        ahead(conn, 10, 13, device_id="P-B1")
        next_day = local(10, DAY + timedelta(days=1))
        retro = service.add(conn, ALICE, rules=RULES, starts_at=local(13), ends_at=local(13.5),
                            reason="断电检修", branch_id="PB5", now=next_day)  # fmt: skip
        service.approve(conn, retro.id, BOB, rules=RULES, now=next_day)
        service.add(conn, ALICE, rules=RULES, starts_at=local(0), ends_at=local(1),
                    reason="未批", device_id="P-B1", now=AHEAD)  # fmt: skip
    got = invoke(url, "bulletin", "daily", "--date", str(DAY), "--format", "json",
                 "--out", str(tmp_path))  # fmt: skip
    assert got.exit_code == 0, got.output
    doc = json.loads(Path(got.output.strip().splitlines()[0]).read_text())
    kpi = json.loads(invoke(url, "kpi", "uptime", "--by", "subbranch", "--date", str(DAY),
                            "--json").output)  # fmt: skip
    table = doc["tables"]["planned"]
    rows = {r["subbranch"]: r for r in table["rows"]}
    for r in kpi["rows"]:
        assert rows[r["group"]]["planned_h"] == r["planned_ms"] / H
        assert rows[r["group"]]["scheduled_h"] == r["scheduled_ms"] / H
    assert (rows["PS3"]["planned_h"], rows["PS3"]["scheduled_h"]) == (3.5, 20.5)
    total = kpi["total"]["planned_ms"] / H
    assert doc["summary"]["planned_h"]["value"] == total
    assert any(f"{total:.2f}" in note for note in doc["footnotes"])
    listed = {r["target"]: r for r in doc["tables"]["stops"]["rows"]}
    device, branch = listed["P-B1"], listed["PB5"]
    assert (device["starts"], device["ends"]) == ("2026-11-27 10:00", "2026-11-27 13:00")
    assert (device["requester"], device["approver"], device["retroactive"]) == (
        "alice",
        "bob",
        "否",
    )
    assert (branch["subbranch"], branch["retroactive"], branch["stop_reason"]) == (
        "PS3",
        "是",
        "断电检修",
    )
    assert "未批" not in {r["stop_reason"] for r in doc["tables"]["stops"]["rows"]}


def test_the_monthly_assessment_shows_planned_time_as_kpi_does(url: str, tmp_path: Path) -> None:
    got = invoke(url, "bulletin", "monthly", "--month", "2026-11", "--format", "json",
                 "--out", str(tmp_path))  # fmt: skip
    assert got.exit_code == 0, got.output
    doc = json.loads(Path(got.output.strip().splitlines()[0]).read_text())
    kpi = json.loads(invoke(url, "kpi", "uptime", "--by", "subbranch", "--from", "2026-11-01",
                            "--to", "2026-11-30", "--json").output)  # fmt: skip
    rows = {r["subbranch"]: r for r in doc["tables"]["planned"]["rows"]}
    assert {g: rows[g]["planned_h"] for g in rows if g.startswith("PS")} == {
        r["group"]: r["planned_ms"] / H for r in kpi["rows"]
    }
    assert doc["summary"]["planned_h"]["value"] == kpi["total"]["planned_ms"] / H


def test_a_reader_login_is_refused_in_one_line(url: str) -> None:
    """The register is written with the writer (or owner) login; the reader may list."""
    name = url.rsplit("/", 1)[1]
    as_reader = f"{url}?options=-c%20role%3D{name}_reader"
    got = invoke(as_reader, "stops", "add", "--device", "P-S1", "--from", "2030-01-01 10:00",
                 "--to", "2030-01-01 11:00", "--reason", "装修")  # fmt: skip
    assert got.exit_code == 2
    assert got.output.startswith("atmfleet: error: this database login may not change the register")
    assert invoke(as_reader, "stops", "list", "--json").exit_code == 0


def test_two_approvers_at_once_one_wins_the_other_is_told(url: str) -> None:
    """Bob's approval holds the row until it commits; Ada's, at the same moment, waits
    for it and is then told the stop is approved (only cancel is left)."""
    import threading

    with psycopg.connect(url) as first, psycopg.connect(url) as second:
        stop = service.add(first, ALICE, rules=RULES, starts_at=local(2), ends_at=local(3),
                           reason="并发", device_id="P-R2", now=AHEAD)  # fmt: skip
        outcome: list[BaseException | service.Stop] = []

        def other() -> None:
            try:
                outcome.append(service.approve(second, stop.id, ADA, rules=RULES, now=AHEAD))
            except BaseException as exc:  # the outcome is asserted below
                outcome.append(exc)

        with first.transaction():  # Bob's approval, not committed yet
            service.approve(first, stop.id, BOB, rules=RULES, now=AHEAD)
            worker = threading.Thread(target=other)
            worker.start()
            with psycopg.connect(url, autocommit=True) as watch:
                for _ in range(600):  # until Ada's statement waits on the row lock
                    row = watch.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock'"
                    ).fetchone()
                    if row and row[0]:
                        break
                    worker.join(0.05)
                else:
                    pytest.fail("the second approval never waited for the first")
        worker.join(30)
        assert len(outcome) == 1 and isinstance(outcome[0], UsageError)
        assert "it is approved; allowed: cancel" in str(outcome[0])
        assert service.get(first, stop.id, ALICE).approver == "bob"
