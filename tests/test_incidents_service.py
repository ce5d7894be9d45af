"""The incident lifecycle (incidents/service.py) on the real PostgreSQL: every action from
every state allowed or refused with the allowed ones named; who may act; two operators at
once; the history and the audit trail."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

from atmfleet.errors import Conflict, Forbidden, UsageError
from atmfleet.store.audit import Actor
from incidents import service
from incidents.model import ALLOWED_FROM, Action, IncidentClass, State, events_of, load
from tests.incident_helpers import B1, B2, S1, S2, db_now, inventory, setup

ALICE = Actor("alice", "cli")  # operator, fleet
BOB = Actor("bob", "cli")  # operator, sub-branch S2
CAROL = Actor("carol", "cli")  # operator, fleet
VERA = Actor("vera", "cli")  # viewer
ENGINE = Actor.system("engine")
HOUR = timedelta(hours=1)


@pytest.fixture(scope="module")
def db(request: pytest.FixtureRequest) -> Iterator[str]:
    """One database for the module (each test opens incidents on devices of its own)."""
    from atmfleet.store.migrate import upgrade
    from tests.conftest import create_database, drop_database

    url = create_database()
    try:
        with psycopg.connect(url, autocommit=True) as c:
            upgrade(c)
        with psycopg.connect(url) as c:
            setup(c, inventory())
        yield url
    finally:
        drop_database(url)


@pytest.fixture
def conn(db: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db) as c:
        yield c


_devices = iter(range(1, 1_000_000))


def opened(
    conn: psycopg.Connection[Any], device: str | None = None, sub: str = S1, branch: str = B1
) -> int:
    """A new incident on a device no other test uses (the ids need not be in the
    inventory: the service reads the incident row)."""
    device = device or f"{branch}-T{next(_devices):04d}"
    now = db_now(conn)
    incident = service.open_incident(
        conn, device_id=device, subbranch_id=sub, branch_id=branch, vendor="GRG", model="H68",
        cls=IncidentClass.COMPONENT, cause="fault", component="cdm",
        started_at=now - 10 * timedelta(minutes=1), opened_at=now - timedelta(minutes=5),
        maintainer_id="M-GRG-S1", contract="default",
    )  # fmt: skip
    assert incident is not None
    conn.commit()
    return incident.id


def drive_to(
    conn: psycopg.Connection[Any], incident_id: int, state: State, suspended: bool
) -> None:
    """Take a fresh incident to ``state`` by the allowed path (then suspend it)."""
    now = db_now(conn)
    path = {
        State.OPEN: [],
        State.ACKNOWLEDGED: ["ack"],
        State.DISPATCHED: ["ack", "dispatch"],
        State.ON_SITE: ["ack", "dispatch", "arrive"],
        State.RESTORED: ["ack", "dispatch", "arrive", "restore"],
        State.CLOSED: ["ack", "dispatch", "arrive", "restore", "close"],
    }[state]
    for step in path:
        if step == "dispatch":
            service.dispatch(conn, incident_id, ALICE, eta=now + 2 * HOUR)
        elif step == "close":
            service.close(conn, incident_id, ALICE, cause="cdm jam", remarks="cleared")
        else:
            getattr(service, step)(conn, incident_id, ALICE)
    if suspended:
        service.suspend(conn, incident_id, ALICE, reason="waiting for parts")
    conn.commit()


def do(conn: psycopg.Connection[Any], action: Action, incident_id: int) -> None:
    now = db_now(conn)
    kwargs: dict[str, Any] = {
        Action.DISPATCH: {"eta": now + HOUR},
        Action.SUSPEND: {"reason": "parts"},
        Action.CLOSE: {"cause": "jam"},
        Action.REOPEN: {"reason": "not fixed"},
    }.get(action, {})
    service.ACTIONS[action](conn, incident_id, ALICE, **kwargs)


CASES = [
    (state, suspended, action)
    for state in State
    for suspended in ((False, True) if state.value in ("open", "acknowledged", "dispatched", "on_site") else (False,))
    for action in Action
]  # fmt: skip


class TestTransitions:
    """Every action from every state: done when ALLOWED_FROM says so, else refused with
    the list of allowed actions, and nothing changed."""

    @pytest.mark.parametrize(("state", "suspended", "action"), CASES,
                             ids=lambda v: getattr(v, "value", str(v)))  # fmt: skip
    def test_action_from_state(
        self, conn: psycopg.Connection[Any], state: State, suspended: bool, action: Action
    ) -> None:
        incident_id = opened(conn)
        drive_to(conn, incident_id, state, suspended)
        before = load(conn, incident_id)
        assert before is not None
        if suspended:
            allowed = action in (Action.RESUME, Action.RESTORE)
        else:
            allowed = action is not Action.RESUME and state in ALLOWED_FROM[action]
        if allowed:
            do(conn, action, incident_id)
            conn.commit()
            after = load(conn, incident_id)
            assert after is not None and after.version > before.version
            last = events_of(conn, incident_id)[-1]
            assert (last.actor, last.from_state) == (
                "alice",
                before.state,
            ) or action is Action.RESTORE
        else:
            with pytest.raises(UsageError) as info:
                do(conn, action, incident_id)
            conn.rollback()
            names = ", ".join(a.value for a in before.allowed()) or "none"
            assert f"allowed: {names}" in str(info.value)
            after = load(conn, incident_id)
            assert after == before

    def test_close_before_restored_says_what_is_allowed(
        self, conn: psycopg.Connection[Any]
    ) -> None:
        incident_id = opened(conn)
        with pytest.raises(UsageError) as info:
            service.close(conn, incident_id, ALICE, cause="x")
        assert str(info.value) == (
            f"incident {incident_id} is open: close is not allowed;"
            " allowed: ack, dispatch, arrive, suspend, restore"
        )

    def test_dispatch_a_closed_incident_is_refused(self, conn: psycopg.Connection[Any]) -> None:
        incident_id = opened(conn)
        drive_to(conn, incident_id, State.CLOSED, False)
        with pytest.raises(UsageError, match="closed: dispatch is not allowed; allowed: reopen"):
            service.dispatch(conn, incident_id, ALICE, eta=db_now(conn) + HOUR)


class TestHistory:
    def test_every_step_has_its_time_actor_event_and_audit_row(
        self, conn: psycopg.Connection[Any]
    ) -> None:
        incident_id = opened(conn)
        now = db_now(conn)
        service.ack(conn, incident_id, ALICE)
        service.dispatch(conn, incident_id, ALICE, eta=now + 2 * HOUR)
        service.suspend(conn, incident_id, CAROL, reason="waiting for parts")
        service.resume(conn, incident_id, CAROL)
        service.arrive(conn, incident_id, ALICE)
        device = load(conn, incident_id).device_id  # type: ignore[union-attr]
        service.restore(conn, incident_id, Actor(f"device:{device}", "engine"))
        service.close(conn, incident_id, ALICE, cause="cdm jam", remarks="belt replaced")
        conn.commit()
        events = [(e.kind, e.actor, e.from_state, e.to_state) for e in events_of(conn, incident_id)]
        assert events == [
            ("opened", "system", None, "open"),
            ("acknowledged", "alice", "open", "acknowledged"),
            ("dispatched", "alice", "acknowledged", "dispatched"),
            ("suspended", "carol", "dispatched", "dispatched"),
            ("resumed", "carol", "dispatched", "dispatched"),
            ("on_site", "alice", "dispatched", "on_site"),
            ("restored", f"device:{device}", "on_site", "restored"),
            ("closed", "alice", "restored", "closed"),
        ]
        dispatched = events_of(conn, incident_id)[2]
        assert dispatched.recipients == ["maintainer:M-GRG-S1"]
        assert dispatched.detail["maintainer_id"] == "M-GRG-S1"
        audit = conn.execute(
            "SELECT actor, surface, action FROM audit_log WHERE object_type = 'incident'"
            " AND object_id = %s ORDER BY id",
            (str(incident_id),),
        ).fetchall()
        assert audit == [
            ("system", "engine", "incident.open"),
            ("alice", "cli", "incident.ack"),
            ("alice", "cli", "incident.dispatch"),
            ("carol", "cli", "incident.suspend"),
            ("carol", "cli", "incident.resume"),
            ("alice", "cli", "incident.arrive"),
            (f"device:{device}", "engine", "incident.restore"),
            ("alice", "cli", "incident.close"),
        ]
        final = load(conn, incident_id)
        assert final is not None
        assert (final.state, final.close_cause, final.remarks) == (
            "closed",
            "cdm jam",
            "belt replaced",
        )
        assert final.eta == now + 2 * HOUR
        for column in (
            "acknowledged_at",
            "dispatched_at",
            "on_site_at",
            "restored_at",
            "closed_at",
        ):
            assert getattr(final, column) is not None

    def test_the_history_is_append_only(self, conn: psycopg.Connection[Any]) -> None:
        opened(conn)
        conn.commit()
        for statement in ("UPDATE incident_events SET kind = 'x'", "DELETE FROM incident_events"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(statement)
            conn.rollback()

    def test_a_dispatch_goes_to_the_region_team_else_the_vendor_wide_one(
        self, conn: psycopg.Connection[Any]
    ) -> None:
        s2 = opened(conn, sub=S2, branch=B2)
        conn.execute("UPDATE incidents SET maintainer_id = NULL WHERE id = %s", (s2,))
        service.dispatch(conn, s2, ALICE, eta=db_now(conn) + HOUR)
        assert events_of(conn, s2)[-1].recipients == ["maintainer:M-GRG-ALL"]

    def test_an_eta_before_the_dispatch_is_refused(self, conn: psycopg.Connection[Any]) -> None:
        incident_id = opened(conn)
        with pytest.raises(UsageError, match=r"--eta .* is before the dispatch"):
            service.dispatch(conn, incident_id, ALICE, eta=db_now(conn) - HOUR)


class TestWhoMayAct:
    def test_a_viewer_may_not_act(self, conn: psycopg.Connection[Any]) -> None:
        incident_id = opened(conn)
        with pytest.raises(Forbidden, match="is a viewer; this needs operator"):
            service.ack(conn, incident_id, VERA)

    def test_an_unknown_user_is_told_how_to_be_added(self, conn: psycopg.Connection[Any]) -> None:
        incident_id = opened(conn)
        with pytest.raises(UsageError, match="not registered"):
            service.ack(conn, incident_id, Actor("mallory", "cli"))

    def test_a_user_named_system_on_the_cli_is_not_the_engine(
        self, conn: psycopg.Connection[Any]
    ) -> None:
        incident_id = opened(conn)
        with pytest.raises(UsageError, match="not registered"):
            service.ack(conn, incident_id, Actor("system", "cli"))

    def test_a_subbranch_operator_acts_on_its_own_subbranch_only(
        self, conn: psycopg.Connection[Any]
    ) -> None:
        mine = opened(conn, sub=S2, branch=B2)
        other = opened(conn)
        service.ack(conn, mine, BOB)
        with pytest.raises(Forbidden, match=f"acts on subbranch {S2}; incident {other}"):
            service.ack(conn, other, BOB)
        conn.rollback()
        seen_by_bob = {i.id for i in service.list_incidents(conn, user=_user(conn, "bob"))}
        assert mine in seen_by_bob and other not in seen_by_bob

    def test_an_operator_opens_by_hand_only_in_its_scope(
        self, conn: psycopg.Connection[Any]
    ) -> None:
        now = db_now(conn)
        kwargs: dict[str, Any] = dict(
            device_id=f"{B1}-H{next(_devices):04d}", subbranch_id=S1, branch_id=B1,
            vendor="GRG", model="H68", cls=IncidentClass.SOFTWARE, cause="fault",
            component=None, started_at=now, opened_at=now, maintainer_id=None, contract=None,
        )  # fmt: skip
        with pytest.raises(Forbidden, match=f"acts on subbranch {S2}"):
            service.open_incident(conn, actor=BOB, **kwargs)
        conn.rollback()
        incident = service.open_incident(conn, actor=ALICE, **kwargs)
        assert incident is not None
        assert events_of(conn, incident.id)[0].actor == "alice"

    def test_the_engine_may_not_close(self, conn: psycopg.Connection[Any]) -> None:
        incident_id = opened(conn)
        drive_to(conn, incident_id, State.RESTORED, False)
        with pytest.raises(UsageError, match="closed by an operator"):
            service.close(conn, incident_id, ENGINE, cause="x")


def _user(conn: psycopg.Connection[Any], name: str) -> Any:
    from atmfleet.store.audit import find_user

    return find_user(conn, name)


class TestTwoOperatorsAtOnce:
    """Two connections act on the same incident at the same moment: one wins, the other
    is told (Conflict), and the incident changed once."""

    def test_one_wins_the_other_gets_conflict(self, db: str, conn: psycopg.Connection[Any]) -> None:
        incident_id = opened(conn)
        seen = load(conn, incident_id)
        assert seen is not None
        conn.commit()
        barrier = threading.Barrier(2)
        results: dict[str, Any] = {}

        def act(name: str) -> None:
            with psycopg.connect(db) as c:
                barrier.wait()
                try:
                    service.ack(c, incident_id, Actor(name, "web"), expected_version=seen.version)
                    # Hold the row lock a moment so the other really waits on it.
                    c.execute("SELECT pg_sleep(0.2)")
                    c.commit()
                    results[name] = "won"
                except Conflict as exc:
                    c.rollback()
                    results[name] = exc

        threads = [threading.Thread(target=act, args=(n,)) for n in ("alice", "carol")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        outcomes = sorted(results.values(), key=str)
        assert len(outcomes) == 2
        assert [o for o in outcomes if o == "won"] == ["won"]
        loser = next(o for o in outcomes if o != "won")
        assert isinstance(loser, Conflict)
        assert f"incident {incident_id} was changed meanwhile (now acknowledged" in str(loser)
        final = load(conn, incident_id)
        assert final is not None and final.version == seen.version + 1
        acks = [e for e in events_of(conn, incident_id) if e.kind == "acknowledged"]
        assert len(acks) == 1

    def test_two_engines_never_open_two_incidents_for_one_outage(
        self, conn: psycopg.Connection[Any]
    ) -> None:
        first = opened(conn)
        device = load(conn, first).device_id  # type: ignore[union-attr]
        now: datetime = db_now(conn)
        again = service.open_incident(
            conn, device_id=device, subbranch_id=S1, branch_id=B1, vendor="GRG",
            model="H68", cls=IncidentClass.COMPONENT, cause="fault", component="cdm",
            started_at=now, opened_at=now, maintainer_id=None, contract=None,
        )  # fmt: skip
        assert again is None
        assert [i.id for i in service.list_incidents(conn, device_id=device)] == [first]
