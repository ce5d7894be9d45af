"""The incident engine on the real PostgreSQL: hand-built state histories in, incidents and
notifications out, exactly; restarts; a branch power cut.

Each test writes the store's state runs as the collector would have by the horizon it
evaluates (an engine pass at ``now - 15 min`` sees only what was stored by then).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

from atmfleet.store.audit import Actor
from incidents import service
from incidents.engine import Engine
from incidents.model import IncidentClass, events_of, load
from rules.config import Rules, parse_rules
from tests.incident_helpers import (
    B1,
    B2,
    S1,
    S2,
    copy_database,
    db_now,
    fault_event,
    inventory,
    run,
    setup,
    template_database,
)

MIN = timedelta(minutes=1)
ALICE = Actor("alice", "cli")
CAROL = Actor("carol", "cli")


@pytest.fixture(scope="module")
def template() -> Iterator[str]:
    from tests.conftest import drop_database

    url = template_database()
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture
def db(template: str) -> Iterator[str]:
    """A fresh upgraded database per test, copied from the module's template."""
    from tests.conftest import drop_database

    url = copy_database(template)
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture
def conn(db: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db) as c:
        setup(c, inventory())
        yield c


def incidents(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        'SELECT device_id, state, "class", cause, component, started_at, maintainer_id,'
        " contract, repeat_of, cycle FROM incidents ORDER BY device_id, id"
    ).fetchall()


def notifications(conn: psycopg.Connection[Any], kind: str | None = None) -> list[tuple[Any, ...]]:
    rows = conn.execute(
        "SELECT kind, recipients, incident_ids FROM incident_events WHERE recipients <> '{}'"
        " AND (%s::text IS NULL OR kind = %s) ORDER BY id",
        (kind, kind),
    ).fetchall()
    return [(k, r, sorted(ids)) for k, r, ids in rows]


def healthy(conn: psycopg.Connection[Any], now: datetime, *devices: str) -> None:
    for d in devices:
        run(conn, d, now - 180 * MIN, now, "in_service")
    conn.commit()


def engine(conn: psycopg.Connection[Any], rules: Rules | None = None, **kw: Any) -> Engine:
    return Engine(conn, rules or Rules(), **kw)


class TestOpening:
    def test_a_fault_past_the_debounce_opens_one_incident_a_shorter_one_none(
        self, conn: psycopg.Connection[Any]
    ) -> None:
        now = db_now(conn)
        run(conn, "S1-B1-D000", now - 120 * MIN, now - 20 * MIN - 1 * MIN, "in_service")
        run(conn, "S1-B1-D000", now - 20 * MIN, now, "fault")
        fault_event(conn, "S1-B1-D000", now - 20 * MIN, "cdm")
        run(conn, "S1-B1-D001", now - 120 * MIN, now - 4 * MIN, "in_service")
        run(conn, "S1-B1-D001", now - 3 * MIN, now, "fault")  # 3 min < 5 min debounce
        healthy(conn, now, "S1-B1-D002", "S2-B1-D000", "S2-B1-D001", "S2-B1-D002")
        stats = engine(conn).run_once(now)
        assert incidents(conn) == [
            ("S1-B1-D000", "open", "component", "fault", "cdm", now - 20 * MIN, "M-GRG-S1",
             "default", None, 0),
        ]  # fmt: skip
        assert (stats.opened, stats.errors) == (1, 0)
        assert notifications(conn) == [("opened", ["branch:S1-B1"], [1])]

    def test_causes_and_classes(self, conn: psycopg.Connection[Any]) -> None:
        now = db_now(conn)
        for d, began in (("S1-B1-D000", 60), ("S1-B1-D001", 60), ("S2-B1-D000", 120),
                         ("S2-B1-D001", 30), ("S2-B1-D002", 30)):  # fmt: skip
            run(conn, d, now - 180 * MIN, now - (began + 1) * MIN, "in_service")
        run(conn, "S1-B1-D000", now - 60 * MIN, now, "cash_out")
        run(conn, "S1-B1-D001", now - 60 * MIN, now, "powered_off")
        run(conn, "S1-B1-D002", now - 180 * MIN, now - 20 * MIN, "in_service")  # silent since
        run(conn, "S2-B1-D000", now - 120 * MIN, now, "supervisor")  # over the hour
        run(conn, "S2-B1-D001", now - 30 * MIN, now, "supervisor")  # under the hour
        run(conn, "S2-B1-D002", now - 30 * MIN, now, "fault")  # no component named
        conn.commit()
        engine(conn).run_once(now)
        got = [(d, s, c, cause, comp, start) for d, s, c, cause, comp, start, *_ in incidents(conn)]
        assert got == [
            ("S1-B1-D000", "open", "cash", "cash_out", None, now - 60 * MIN),
            ("S1-B1-D001", "open", "power", "power", None, now - 60 * MIN),
            # Silent: offline from the last sample (the gap is longer than the timeout).
            ("S1-B1-D002", "open", "network", "communications", None, now - 20 * MIN),
            ("S2-B1-D000", "open", "software", "supervisor", None, now - 120 * MIN),
            ("S2-B1-D002", "open", "software", "fault", None, now - 30 * MIN),
        ]
        assert notifications(conn) == [
            ("opened", ["branch:S1-B1"], [1, 2, 3]),
            ("opened", ["branch:S2-B1"], [4, 5]),
        ]

    def test_downtime_outside_the_service_window_does_not_open(self, db: str) -> None:
        with psycopg.connect(db) as conn:
            now = db_now(conn)
            local = now.astimezone(Rules().tz)
            # A one-hour window two hours from now: the last 20 minutes were outside it.
            window = f"daily {(local + 120 * MIN):%H:%M}-{(local + 180 * MIN):%H:%M}"
            setup(conn, inventory(windows={"S1-B1-D000": window}))
            run(conn, "S1-B1-D000", now - 20 * MIN, now, "fault")
            run(conn, "S1-B1-D001", now - 20 * MIN, now, "fault")
            conn.commit()
            engine(conn).run_once(now)
            assert [r[0] for r in incidents(conn)] == ["S1-B1-D001"]

    def test_a_device_never_heard_from_is_not_an_outage(
        self, conn: psycopg.Connection[Any]
    ) -> None:
        now = db_now(conn)
        healthy(conn, now, "S1-B1-D000")  # the others never sent anything
        assert engine(conn).run_once(now).opened == 0

    def test_an_approved_planned_stop_keeps_it_closed(self, conn: psycopg.Connection[Any]) -> None:
        from stops import service as stops

        rules = Rules()
        now = db_now(conn)
        stop = stops.add(
            conn, ALICE, rules=rules, starts_at=now - 30 * MIN, ends_at=now + 60 * MIN,
            reason="装修", device_id="S1-B1-D000",
        )  # fmt: skip
        stops.approve(conn, stop.id, CAROL, rules=rules)
        conn.commit()
        run(conn, "S1-B1-D000", now - 25 * MIN, now, "powered_off")
        run(conn, "S1-B1-D001", now - 25 * MIN, now, "powered_off")
        conn.commit()
        engine(conn, rules).run_once(now)
        assert [r[0] for r in incidents(conn)] == ["S1-B1-D001"]

    def test_after_a_planned_stop_the_debounce_starts_at_its_end(
        self, conn: psycopg.Connection[Any]
    ) -> None:
        from stops import service as stops

        rules = Rules()
        now = db_now(conn)
        stop = stops.add(
            conn, ALICE, rules=rules, starts_at=now - 60 * MIN, ends_at=now - 2 * MIN,
            reason="系统升级", device_id="S1-B1-D000",
        )  # fmt: skip
        stops.approve(conn, stop.id, CAROL, rules=rules)
        run(conn, "S1-B1-D000", now - 50 * MIN, now, "powered_off")  # 2 min past the stop
        conn.commit()
        assert engine(conn, rules).run_once(now).opened == 0

    def test_the_covering_hook_is_asked_before_opening(self, conn: psycopg.Connection[Any]) -> None:
        now = db_now(conn)
        run(conn, "S1-B1-D000", now - 20 * MIN, now, "powered_off")
        conn.commit()
        asked: list[list[str]] = []

        def covering(c: Any, ids: Any, at: datetime) -> set[str]:
            asked.append(sorted(ids))
            return set(ids)

        stats = engine(conn, covering=covering).run_once(now)
        assert (stats.opened, stats.skipped_planned, asked) == (0, 1, [["S1-B1-D000"]])


class TestLifecycleFromTheDevice:
    def test_maintenance_mode_is_on_site_and_back_in_service_is_restored(
        self, conn: psycopg.Connection[Any]
    ) -> None:
        now = db_now(conn)
        d = "S1-B1-D000"
        eng = engine(conn)
        run(conn, d, now - 60 * MIN, now - 31 * MIN, "in_service")
        run(conn, d, now - 30 * MIN, now - 15 * MIN, "fault")
        conn.commit()
        eng.run_once(now - 15 * MIN)
        (incident,) = service.list_incidents(conn)
        assert (incident.state, incident.started_at, incident.opened_at) == (
            "open", now - 30 * MIN, now - 15 * MIN,
        )  # fmt: skip
        service.ack(conn, incident.id, ALICE, at=now - 14 * MIN)
        conn.commit()
        run(conn, d, now - 15 * MIN + 1 * MIN, now - 11 * MIN, "fault")
        run(conn, d, now - 10 * MIN, now - 5 * MIN, "maintenance")
        conn.commit()
        eng.run_once(now - 5 * MIN)
        after = load(conn, incident.id)
        assert after is not None
        assert (after.state, after.on_site_at) == ("on_site", now - 10 * MIN)
        run(conn, d, now - 4 * MIN, now - 3 * MIN, "maintenance")
        run(conn, d, now - 2 * MIN, now, "in_service")
        conn.commit()
        eng.run_once(now)
        after = load(conn, incident.id)
        assert after is not None
        assert (after.state, after.restored_at) == ("restored", now - 2 * MIN)
        kinds = [(e.kind, e.actor) for e in events_of(conn, incident.id) if not e.recipients]
        assert kinds == [
            ("opened", "system"),
            ("acknowledged", "alice"),
            ("on_site", f"device:{d}"),
            ("restored", f"device:{d}"),
        ]
        service.close(conn, incident.id, ALICE, cause="cdm jam")
        conn.commit()
        assert len(service.list_incidents(conn, states=["closed"])) == 1

    def test_a_history_stored_ahead_of_the_horizon_is_not_seen(
        self, conn: psycopg.Connection[Any]
    ) -> None:
        """Replaying stored history (passes at past horizons) sees only what was stored
        by each horizon: the same steps as following it live."""
        now = db_now(conn)
        d = "S1-B1-D000"
        run(conn, d, now - 60 * MIN, now - 31 * MIN, "in_service")
        run(conn, d, now - 30 * MIN, now - 11 * MIN, "fault")
        run(conn, d, now - 10 * MIN, now - 3 * MIN, "maintenance")
        run(conn, d, now - 2 * MIN, now, "in_service")
        conn.commit()
        eng = engine(conn)
        eng.run_once(now - 15 * MIN)
        (incident,) = service.list_incidents(conn)
        assert (incident.state, incident.opened_at) == ("open", now - 15 * MIN)
        eng.run_once(now - 5 * MIN)
        assert load(conn, incident.id).on_site_at == now - 10 * MIN  # type: ignore[union-attr]
        eng.run_once(now)
        assert load(conn, incident.id).restored_at == now - 2 * MIN  # type: ignore[union-attr]

    def test_a_flap_continues_the_same_incident(self, conn: psycopg.Connection[Any]) -> None:
        now = db_now(conn)
        d = "S1-B1-D000"
        eng = engine(conn)
        run(conn, d, now - 60 * MIN, now - 40 * MIN, "fault")
        conn.commit()
        eng.run_once(now - 40 * MIN)
        run(conn, d, now - 39 * MIN, now - 30 * MIN, "in_service")
        conn.commit()
        eng.run_once(now - 30 * MIN)
        (first,) = service.list_incidents(conn, states=["restored"])
        # Down again 9 minutes after the restore (< merge_flaps_s 900 s), past the debounce.
        run(conn, d, now - 29 * MIN, now - 20 * MIN, "fault")
        conn.commit()
        stats = eng.run_once(now - 20 * MIN)
        assert stats.merged == 1 and stats.opened == 0
        again = load(conn, first.id)
        assert again is not None
        assert (again.state, again.restored_at, again.started_at) == ("open", None, now - 60 * MIN)
        assert [e.kind for e in events_of(conn, first.id) if not e.recipients][-2:] == [
            "restored", "merged",
        ]  # fmt: skip
        assert len(incidents(conn)) == 1

    def test_a_repeat_fault_links_to_the_last_one(self, conn: psycopg.Connection[Any]) -> None:
        now = db_now(conn)
        d = "S1-B1-D000"
        earlier = _closed_incident(conn, d, now - 2 * timedelta(days=1), "cdm")
        run(conn, d, now - 20 * MIN, now, "fault")
        fault_event(conn, d, now - 20 * MIN, "cdm")
        engine(conn).run_once(now)
        (new,) = service.list_incidents(conn)
        assert (new.repeat_of, new.component) == (earlier, "cdm")

    def test_a_fault_of_another_component_is_not_a_repeat(
        self, conn: psycopg.Connection[Any]
    ) -> None:
        now = db_now(conn)
        d = "S1-B1-D000"
        _closed_incident(conn, d, now - 2 * timedelta(days=1), "cdm")
        run(conn, d, now - 20 * MIN, now, "fault")
        fault_event(conn, d, now - 20 * MIN, "idc")
        engine(conn).run_once(now)
        (new,) = service.list_incidents(conn)
        assert (new.repeat_of, new.component) == (None, "idc")

    def test_with_reopen_a_repeat_fault_reopens_the_last_one(
        self, conn: psycopg.Connection[Any]
    ) -> None:
        now = db_now(conn)
        d = "S1-B1-D000"
        earlier = _closed_incident(conn, d, now - 3 * timedelta(days=1), "cdm")
        run(conn, d, now - 20 * MIN, now, "fault")
        fault_event(conn, d, now - 20 * MIN, "cdm")
        rules = parse_rules("incidents:\n  repeat:\n    action: reopen\n")
        engine(conn, rules).run_once(now)
        (again,) = service.list_incidents(conn)
        assert (again.id, again.state, again.cycle, again.cycle_at) == (earlier, "open", 1, now)
        history = events_of(conn, earlier)
        assert [e.kind for e in history if not e.recipients][-1] == "reopened"
        assert (history[-1].kind, history[-1].recipients) == ("opened", ["branch:S1-B1"])


def _closed_incident(
    conn: psycopg.Connection[Any], device: str, started: datetime, comp: str
) -> int:
    incident = service.open_incident(
        conn, device_id=device, subbranch_id=S1, branch_id=B1, vendor="GRG", model="H68",
        cls=IncidentClass.COMPONENT, cause="fault", component=comp, started_at=started,
        opened_at=started + 5 * MIN, maintainer_id="M-GRG-S1", contract="default",
    )  # fmt: skip
    assert incident is not None
    service.restore(conn, incident.id, Actor.system(), at=started + 60 * MIN)
    service.close(conn, incident.id, ALICE, cause="cdm jam")
    conn.commit()
    return incident.id


# A contract that breaches quickly: repair in 1 h from the outage's start, warning at half.
FAST = """
sla:
  contracts:
    - name: fast
      repair_hours: 1
      repair_from: started
      response_hours: null
      warning_share: 0.5
      warning_recipients: [maintainer]
      breach_recipients: [maintainer]
      escalation:
        - {after_hours: 0, recipients: [branch]}
        - {after_hours: 2, recipients: [subbranch_manager]}
        - {after_hours: 4, recipients: [head_office, vendor_manager]}
"""


class TestCommits:
    def test_every_pass_commits_also_after_the_inventory_is_read_again(self, db: str) -> None:
        """Seen from another connection: each pass's writes are committed, including the
        passes that re-read the inventory first."""
        rules = parse_rules("incidents:\n  inventory_refresh_s: 0.001\n")
        with psycopg.connect(db) as conn, psycopg.connect(db, autocommit=True) as other:
            setup(conn, inventory())
            now = db_now(conn)
            eng = engine(conn, rules)
            for k, d in enumerate(("S1-B1-D000", "S1-B1-D001", "S1-B1-D002")):
                run(conn, d, now - 30 * MIN, now, "fault")
                conn.commit()
                eng.run_once(now - (2 - k) * MIN)
                assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
                seen = other.execute("SELECT count(*), max(passes) FROM incidents, incident_engine")
                assert seen.fetchone() == (k + 1, k + 1)


class TestEscalation:
    def test_a_restarted_engine_recomputes_the_timers_and_repeats_nothing(
        self, conn: psycopg.Connection[Any]
    ) -> None:
        rules = parse_rules(FAST)
        now = db_now(conn)
        d = "S1-B1-D000"
        run(conn, d, now - 170 * MIN, now, "fault")
        conn.commit()
        first = engine(conn, rules)
        first.run_once(now - 160 * MIN)  # opens 10 min into the outage
        assert [k for k, *_ in notifications(conn)] == ["opened"]
        first.run_once(now)  # warning (30 min), breach and level 1 (1 h); level 2 (3 h) not yet
        expected = [
            ("opened", ["branch:S1-B1"], [1]),
            ("sla_warning", ["maintainer:M-GRG-S1"], [1]),
            ("sla_breach", ["maintainer:M-GRG-S1"], [1]),
            ("escalation", ["branch:S1-B1"], [1]),
        ]
        assert notifications(conn) == expected
        # "Stopped and started": a new engine, nothing in memory, the same horizon.
        second = engine(conn, rules)
        assert second.run_once(now).notifications == 0
        assert notifications(conn) == expected
        # Level 2 falls due at 3 h (10 minutes from now): once, whoever passes first.
        second.run_once(now + 11 * MIN)
        engine(conn, rules).run_once(now + 12 * MIN)
        assert notifications(conn) == [*expected, ("escalation", ["subbranch_manager:S1"], [1])]
        marks = conn.execute(
            "SELECT deadline, kind, level, due_at FROM incident_sla ORDER BY due_at, kind"
        ).fetchall()
        assert marks == [
            ("repair", "warning", 0, now - 140 * MIN),
            ("repair", "breach", 0, now - 110 * MIN),
            ("repair", "escalation", 1, now - 110 * MIN),
            ("repair", "escalation", 2, now + 10 * MIN),
        ]
        assert conn.execute(
            "SELECT count(*) FROM incident_sla WHERE event_id IS NULL"
        ).fetchone() == (0,)

    def test_a_suspension_stops_the_clock(self, conn: psycopg.Connection[Any]) -> None:
        rules = parse_rules(FAST)
        now = db_now(conn)
        d = "S1-B1-D000"
        run(conn, d, now - 20 * MIN, now, "fault")
        conn.commit()
        eng = engine(conn, rules)
        eng.run_once(now)
        (incident,) = service.list_incidents(conn)
        service.suspend(conn, incident.id, ALICE, reason="等待备件")
        conn.commit()
        eng.run_once(now + 3 * timedelta(hours=1))  # suspended: no breach however long
        assert [k for k, *_ in notifications(conn)] == ["opened"]
        assert service.sla_statuses(conn, [load(conn, incident.id)]) == {incident.id: "suspended"}  # type: ignore[list-item]


class TestBranchPowerCut:
    def test_500_devices_down_at_once_one_message_per_recipient(self, db: str) -> None:
        rules = parse_rules(FAST)
        with psycopg.connect(db) as conn:
            setup(conn, inventory(devices_per_branch=250))
            now = db_now(conn)
            # Both branches (500 devices) lost power 3 h 10 min ago: past the repair
            # deadline and its first two escalation levels.
            for b in (B1, B2):
                for i in range(250):
                    run(conn, f"{b}-D{i:03d}", now - 190 * MIN, now, "powered_off")
            conn.commit()
            eng = engine(conn, rules)
            stats = eng.run_once(now)
            assert (stats.opened, stats.errors) == (500, 0)
            got = notifications(conn)
            per_recipient: dict[tuple[str, str], int] = {}
            for kind, recipients, _ids in got:
                (recipient,) = recipients
                per_recipient[(kind, recipient)] = per_recipient.get((kind, recipient), 0) + 1
            assert all(n == 1 for n in per_recipient.values())
            s1 = list(range(1, 251))
            s2 = list(range(251, 501))
            assert got == [
                ("opened", ["branch:S1-B1"], s1),
                ("opened", ["branch:S2-B1"], s2),
                ("sla_warning", ["maintainer:M-GRG-ALL"], s2),
                ("sla_warning", ["maintainer:M-GRG-S1"], s1),
                ("sla_breach", ["maintainer:M-GRG-ALL"], s2),
                ("sla_breach", ["maintainer:M-GRG-S1"], s1),
                ("escalation", ["branch:S1-B1"], s1),
                ("escalation", ["branch:S2-B1"], s2),
                ("escalation", ["subbranch_manager:S1"], s1),
                ("escalation", ["subbranch_manager:S2"], s2),
            ]
            assert conn.execute("SELECT count(*) FROM incident_sla").fetchone() == (500 * 4,)
            # The next pass re-reads none of the 500 (nothing new from them) ...
            assert eng.run_once(now + timedelta(seconds=1)).candidates == 0
            # ... and a restart sends none of the notifications again.
            assert engine(conn, rules).run_once(now).notifications == 0
            assert S1 and S2


class TestSilence:
    """The devices a pass takes as silent past their heartbeat timeout come from a heap
    of due instants; at every horizon they are exactly the devices for which
    ``now - last > timeout_factor x heartbeat`` holds, as a look at every device gives."""

    @pytest.mark.parametrize("factor", [3.0, 2.7])
    def test_the_heap_gives_every_silent_device_at_any_horizon(
        self, conn: psycopg.Connection[Any], factor: float
    ) -> None:
        import random

        rules = parse_rules(f"heartbeat:\n  timeout_factor: {factor}\n")
        e = engine(conn, rules)
        rng = random.Random(7)
        devices = [f"D{i}" for i in range(60)]
        now = 1_700_000_000_000
        for step in range(400):
            for _ in range(rng.randint(0, 6)):  # samples, some late, some new heartbeats
                d = rng.choice(devices)
                last = now - rng.randint(-5_000, 400_000)
                e._seen(d, last, "in_service", rng.choice([30, 60, 60, 300]))
            if step % 50 == 49:
                now -= rng.randint(1, 900_000)  # a replay at an earlier horizon
            else:
                now += rng.randint(0, 40_000)
            want = {
                d for d, last in e.last_seen.items() if now - last > factor * e.heartbeat[d] * 1000
            }
            assert e._silent_now(now) == want
