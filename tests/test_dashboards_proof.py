"""Every query of every dashboard, expanded as Grafana expands it, returns data.

No Grafana runs here. The queries are taken from the committed JSON, their variables and
macros expanded by ``dashboards.expand`` (Grafana 11's rules), and sent to the real
services: PromQL to a real Prometheus that scraped ``atmfleet serve`` over the small stored
fleet of ``test_serve.py`` and evaluated the shipped rules (the ``prometheus`` fixture of
``test_serve_prometheus.py``); SQL to that fleet's PostgreSQL database as the read-only
role ``atmfleet_grafana`` (``SET ROLE``), which is what the provisioned data source uses.
Variables take "All": the values their own queries return as that role; the device
variable takes its first value (device A, which has transactions and cash units).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from atmfleet.protocol import EventMessage, device_topic, encode
from atmfleet.store.migrate import Flavour, discover, render, upgrade
from atmfleet.store.writer import Accepted, BatchWriter, Rejected
from dashboards.build import DEFAULT_DIR, Query, queries
from dashboards.expand import expand_promql, expand_sql
from tests.test_serve import Fleet
from tests.test_serve_prometheus import Prometheus, prometheus, wait_for  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROLE = "atmfleet_grafana"
RANGE = timedelta(hours=6)

#: Queries that cannot return data on this fleet, by (dashboard uid, query), with why; each
#: still has to run without error.
EXPECTED_EMPTY: dict[tuple[str, str], str] = {}


@dataclass
class Outcome:
    query: Query
    expanded: str
    results: int  # series (PromQL) or rows (SQL)


def _add_events_and_dead_letters(fleet: Fleet, run_id: str) -> None:
    """What the small fleet lacks for the device and collector panels: an event on A (the
    device the device dashboard shows) and a dead letter."""
    a = f"A-{run_id}"
    event = EventMessage(
        v=1, device_id=a, ts=fleet.fault_from, seq=500_000, event="cash_low",
        component="cdm", severity="warning", text="cassette 2 low",
    )  # fmt: skip
    dead = Rejected.of(device_topic(a, "state"), b"{not json", fleet.now, "invalid_json", "line 1")
    with psycopg.connect(fleet.url) as conn:
        BatchWriter(conn, "dashboards-proof").write(
            [Accepted(event, fleet.fault_from, device_topic(a, "event"), encode(event))], [dead]
        )


def _variables(conn: psycopg.Connection, doc: dict[str, Any], fleet: Fleet) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for var in doc["templating"].get("list", []):
        text = expand_sql(var["query"], values, fleet.now - RANGE, fleet.now)
        got = [str(r[0]) for r in conn.execute(text).fetchall()]
        assert got, f"{doc['uid']}: variable {var['name']} lists nothing"
        values[var["name"]] = got if var.get("multi") else got[:1]
    return values


def _run(prom: Prometheus, conn: psycopg.Connection, fleet: Fleet) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for path in sorted(DEFAULT_DIR.glob("*.json")):
        doc = json.loads(path.read_text("utf-8"))
        values = _variables(conn, doc, fleet)
        for q in queries(doc):
            if q.language == "sql":
                text = expand_sql(q.text, values, fleet.now - RANGE, fleet.now)
                rows = conn.execute(text).fetchall()
                outcomes.append(Outcome(q, text, len(rows)))
            else:
                expr = expand_promql(q.text, values, "1m")
                if q.instant:
                    result = prom.get("/api/v1/query", query=expr)
                else:
                    end = prom.get("/api/v1/query", query="time()")["data"]["result"][1]
                    result = prom.get(
                        "/api/v1/query_range", query=expr, start=str(float(end) - 120),
                        end=str(end), step="5",
                    )  # fmt: skip
                assert result["status"] == "success", (q, result)
                outcomes.append(Outcome(q, expr, len(result["data"]["result"])))
    return outcomes


def _ready(prom: Prometheus) -> None:
    """The recording rules and the alerts the panels read have been evaluated."""
    for expr in (
        'fleet:atmfleet_day_uptime:ratio{view="business"}',
        "subbranch:atmfleet_day_substitution:ratio",
        "fleet:atmfleet_collector_lag_seconds:max",
        'ALERTS{alertstate="firing",alertname="AtmfleetDeviceDown"}',
        "atmfleet_device_scheduled_down_since_timestamp_seconds",
    ):
        wait_for(expr, lambda e=expr: prom.query(e))  # type: ignore[misc]
    # rate() over the collector's counters needs two scrapes of them.
    wait_for(
        "two scrapes",
        lambda: prom.query("count_over_time(atmfleet_collector_messages_received_total[1m]) >= 2"),
    )


class TestEveryQueryReturnsData:
    def test_promql_on_prometheus_and_sql_as_the_read_only_role(
        self,
        prometheus: tuple[Prometheus, Fleet],  # noqa: F811  (the imported fixture)
    ) -> None:
        prom, fleet = prometheus
        _add_events_and_dead_letters(fleet, fleet.run_id)
        _ready(prom)
        with psycopg.connect(fleet.url, autocommit=True) as conn:
            conn.execute(f"SET ROLE {ROLE}")
            outcomes = _run(prom, conn, fleet)
        empty = {(o.query.dashboard, o.query.text): o for o in outcomes if o.results == 0}
        panels = {
            (o.query.dashboard, o.query.where)
            for o in outcomes
            if not o.query.where.startswith("variable ")
        }
        print(
            f"\ndashboards proof: {len(panels)} panels, {len(outcomes)} queries "
            f"({sum(o.query.language == 'promql' for o in outcomes)} PromQL, "
            f"{sum(o.query.language == 'sql' for o in outcomes)} SQL incl. variables), "
            f"{len(outcomes) - len(empty)} returned data; empty: {sorted(empty)}"
        )
        unexpected = {k: o.expanded for k, o in empty.items() if k not in EXPECTED_EMPTY}
        assert unexpected == {}
        assert set(EXPECTED_EMPTY) <= set(empty), "an expected-empty query has data now: update"


class TestTheReadOnlyRole:
    def test_reads_but_cannot_write(self, database_url: str) -> None:
        with psycopg.connect(database_url, autocommit=True) as conn:
            upgrade(conn, timezone="Asia/Shanghai")
            conn.execute(f"SET ROLE {ROLE}")
            assert conn.execute("SELECT count(*) FROM devices").fetchone() == (0,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("DELETE FROM dead_letters")

    def test_the_migration_can_run_again_where_the_role_exists(self, database_url: str) -> None:
        (mig,) = [m for m in discover() if m.version == 5]
        with psycopg.connect(database_url, autocommit=True) as conn:
            for text in mig.texts(Flavour.POSTGRES):
                conn.execute(render(text, "Asia/Shanghai"))
                conn.execute(render(text, "Asia/Shanghai"))
            row = conn.execute(
                "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", [ROLE]
            ).fetchone()
        assert row == (False,)


@pytest.mark.timescale
class TestTheReadOnlyRoleOnTimescale:
    def test_reads_the_hypertables_and_the_continuous_aggregates(self, timescale_url: str) -> None:
        with psycopg.connect(timescale_url, autocommit=True) as conn:
            assert upgrade(conn, timezone="Asia/Shanghai").flavour is Flavour.TIMESCALE
            conn.execute(f"SET ROLE {ROLE}")
            for relation in ("state_samples", "transactions", "txn_daily", "txn_hourly"):
                assert conn.execute(f"SELECT count(*) FROM {relation}").fetchone() == (0,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("DELETE FROM transactions")
