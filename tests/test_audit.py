"""The audit log is append-only, refuses secrets, and the role check says what is missing."""

from __future__ import annotations

import psycopg
import pytest

from atmfleet.errors import Forbidden, UsageError
from atmfleet.store.audit import Actor, cli_actor, find_user, record, require_role

pytestmark = pytest.mark.integration


def test_record_and_read_back(db: str) -> None:
    with psycopg.connect(db) as conn:
        audit_id = record(
            conn,
            Actor("li.wei", "cli"),
            "stop.add",
            "planned_stop",
            7,
            before=None,
            after={"device": "HLBE-0001", "reason": "装修"},
        )
        row = conn.execute(
            "SELECT actor, surface, action, object_type, object_id, before, after"
            " FROM audit_log WHERE id = %s",
            (audit_id,),
        ).fetchone()
    assert row == (
        "li.wei",
        "cli",
        "stop.add",
        "planned_stop",
        "7",
        None,
        {"device": "HLBE-0001", "reason": "装修"},
    )


@pytest.mark.parametrize(
    "statement", ["UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log", "TRUNCATE audit_log"]
)
def test_append_only_even_for_the_owner(db: str, statement: str) -> None:
    with psycopg.connect(db) as conn:
        record(conn, Actor.system(), "incident.open", "incident", 1)
        conn.commit()
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute(statement)


def test_secret_fields_are_refused(db: str) -> None:
    with psycopg.connect(db) as conn, pytest.raises(ValueError, match="secret"):
        record(conn, Actor("admin", "web"), "user.add", "user", "a", after={"password": "x"})


def test_require_role(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with psycopg.connect(db) as conn:
        conn.execute(
            "INSERT INTO users (username, role, scope_kind, scope_id) VALUES"
            " ('ops', 'operator', 'subbranch', 'HLBE'), ('guest', 'viewer', 'fleet', NULL)"
        )
        assert require_role(conn, Actor("ops", "cli"), "operator").scope_id == "HLBE"
        with pytest.raises(Forbidden, match="viewer; this needs operator"):
            require_role(conn, Actor("guest", "cli"), "operator")
        with pytest.raises(UsageError, match="atmfleet users add"):
            require_role(conn, Actor("nobody", "cli"), "viewer")
        conn.execute("UPDATE users SET disabled = true WHERE username = 'ops'")
        with pytest.raises(Forbidden, match="disabled"):
            require_role(conn, Actor("ops", "cli"), "viewer")
        assert find_user(conn, "guest") is not None
    monkeypatch.setenv("ATMFLEET_USER", "ops")
    assert cli_actor() == Actor("ops", "cli")
