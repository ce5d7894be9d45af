"""``atmfleet incidents``: the commands on the real PostgreSQL (list, show, the actions,
refusals in one line, local times, ``run --once``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from app.cli import cli
from tests.incident_helpers import (
    copy_database,
    db_now,
    fault_event,
    inventory,
    run,
    setup,
    template_database,
)

MIN = timedelta(minutes=1)


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


def invoke(url: str, *args: str, user: str = "alice") -> Any:
    env = {"ATMFLEET_DATABASE_URL": url, "ATMFLEET_USER": user, "ATMFLEET_RULES_FILE": None}
    return CliRunner().invoke(cli, list(args), env=env)


def test_the_work_order_from_the_command_line(db: str) -> None:
    with psycopg.connect(db) as conn:
        setup(conn, inventory())
        now = db_now(conn)
        run(conn, "S1-B1-D000", now - 120 * MIN, now - 21 * MIN, "in_service")
        run(conn, "S1-B1-D000", now - 20 * MIN, now, "fault")
        fault_event(conn, "S1-B1-D000", now - 20 * MIN, "cdm")

    got = invoke(db, "incidents", "run", "--once")
    assert got.exit_code == 0, got.output
    assert "opened 1" in got.output

    listed = json.loads(invoke(db, "incidents", "list", "--json").output)
    assert [(i["device_id"], i["state"], i["class"], i["sla_status"]) for i in listed] == [
        ("S1-B1-D000", "open", "component", "ok")
    ]
    (incident,) = listed
    assert incident["started_at"].endswith("+08:00")  # the bank's local time
    table = invoke(db, "incidents", "list").output
    assert "待受理" in table and "部件故障" in table
    iid = str(incident["id"])

    assert invoke(db, "incidents", "ack", iid).exit_code == 0
    got = invoke(db, "incidents", "dispatch", iid, "--eta", "+2h", "--json")
    assert got.exit_code == 0, got.output
    assert json.loads(got.output)["maintainer_id"] == "M-GRG-S1"

    # A stale version is a conflict; a transition not allowed names the allowed ones.
    got = invoke(db, "incidents", "arrive", iid, "--version", "1")
    assert (got.exit_code, got.output.count("\n")) == (2, 1)
    assert "changed meanwhile" in got.output
    got = invoke(db, "incidents", "close", iid, "--cause", "x")
    assert got.exit_code == 2
    assert got.output == (
        f"atmfleet: error: incident {iid} is dispatched: close is not allowed;"
        " allowed: arrive, suspend, restore\n"
    )
    # Out of scope reads as absent; a viewer may read but not act.
    assert "no incident" in invoke(db, "incidents", "show", iid, user="bob").output
    assert invoke(db, "incidents", "show", iid, user="vera").exit_code == 0
    assert "viewer" in invoke(db, "incidents", "ack", iid, user="vera").output

    shown = json.loads(invoke(db, "incidents", "show", iid, "--json").output)
    assert [e["kind"] for e in shown["events"]] == [
        "opened",
        "opened",
        "acknowledged",
        "dispatched",
    ]
    assert shown["events"][-1]["recipients"] == ["maintainer:M-GRG-S1"]
    assert shown["allowed"] == ["arrive", "suspend", "restore"]
    assert "故障开始" in invoke(db, "incidents", "show", iid).output
    assert "outage start" in invoke(db, "incidents", "show", iid, "--lang", "en").output
