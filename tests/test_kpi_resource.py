"""资源预警率 (resource-warning rate) truth at the edges, by hand, on the real PostgreSQL.

Every device is a 24x7 off-site ATM with heartbeat 300 s (unless said), in tier 2; the
store's history starts DAY-1 12:00 local; a collector outage DAY 10:00-12:00 (local)
takes 2 h out of every device's S on DAY. Heartbeats every 5 minutes; a "warning" is
a heartbeat whose cash unit, component or state says so (rules/default.yaml).

    S1 / B1  MID  dispense unit low DAY 22:00 -> D1 02:00 (across midnight)
             WIN  smart teller on site, window 09:00-17:00; ptr warning DAY 16:00-18:00
             UNK  ptr warning DAY 09:00-13:00, across the collector outage
    S2 / B2  PLN  cash low DAY 13:00-17:00; planned_maintenance 14:00-16:00
             DWN  cash low DAY 13:00-17:00; fault 14:00-16:00 (counts: documented)
             OFF  cash low DAY 13:00-17:00; silent 14:00-16:00 (offline: does not count)
             OVL  cash low DAY 13:00-16:00 and receipt paper low 15:00-18:00 (once)
             NOS  planned_maintenance all DAY, cash empty: no S -> no data
    S3 / B3  OUT  state cash_out DAY 20:00-21:00 (no cash units sent)

DAY by hand (hours): MID 2/22, WIN 1/6, UNK 2/22, PLN 2/20, DWN 4/22, OFF 2/22,
OVL 5/22, NOS 0/0, OUT 1/22.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from click.testing import CliRunner

from app.cli import cli
from atmfleet.inventory import Branch, Device, Inventory, SubBranch
from atmfleet.protocol import StateMessage, device_topic, encode
from atmfleet.store.inventory import upsert_inventory
from atmfleet.store.writer import Accepted, BatchWriter
from rules.timeline import from_ms

pytestmark = pytest.mark.integration

TZ = ZoneInfo("Asia/Shanghai")
DAY = date(2026, 11, 20)
D1 = DAY + timedelta(days=1)
H = 3_600_000
START = DAY - timedelta(days=1)  # history from START 12:00
END_DAY = D1 + timedelta(days=1)  # heartbeats up to END_DAY 00:00


def at(day: date, hour: float) -> datetime:
    return datetime.combine(day, time(0), tzinfo=TZ).astimezone(UTC) + timedelta(hours=hour)


OUTAGE = (at(DAY, 10), at(DAY, 12))


def device(ident: str, branch: str, **kw: Any) -> Device:
    return Device(
        id=ident, branch=branch, type=kw.get("type", "atm"),
        placement=kw.get("placement", "off_site"), vendor="GRG", model="H22N",
        commissioned=date(2025, 1, 1), heartbeat_s=300,
    )  # fmt: skip


INVENTORY = Inventory(
    subbranches=(
        SubBranch(id="S1", name="赤峰", tier="2"),
        SubBranch(id="S2", name="通辽", tier="2"),
        SubBranch(id="S3", name="乌海", tier="2"),
    ),
    branches=(
        Branch(id="B1", name="红山支行", subbranch="S1"),
        Branch(id="B2", name="科尔沁支行", subbranch="S2"),
        Branch(id="B3", name="海勃湾支行", subbranch="S3"),
    ),
    devices=(
        device("MID", "B1"),
        device("WIN", "B1", type="smart_teller", placement="on_site"),
        device("UNK", "B1"),
        device("PLN", "B2"),
        device("DWN", "B2"),
        device("OFF", "B2"),
        device("OVL", "B2"),
        device("NOS", "B2"),
        device("OUT", "B3"),
    ),
)

Span = tuple[datetime, datetime]
LOW = [{"id": "CST1", "type": "dispense", "denomination": 100, "count": 90, "status": "low"}]
EMPTY = [{"id": "CST1", "type": "dispense", "denomination": 100, "count": 0, "status": "empty"}]
OK = [{"id": "CST1", "type": "dispense", "denomination": 100, "count": 1500, "status": "ok"}]


def inside(t: datetime, spans: list[Span]) -> bool:
    return any(a <= t < b for a, b in spans)


def scenario(
    ident: str,
    *,
    cash_low: list[Span] = (),  # type: ignore[assignment]
    paper_low: list[Span] = (),  # type: ignore[assignment]
    states: dict[str, list[Span]] | None = None,
    silent: list[Span] = (),  # type: ignore[assignment]
    units: list[dict[str, Any]] = LOW,
) -> list[Accepted]:
    """Heartbeats every 5 minutes from START 12:00 to END_DAY 00:00, except inside the
    collector outage and the ``silent`` spans (exclusive of their edges)."""
    out = []
    t, seq = at(START, 12), 0
    while t <= at(END_DAY, 0):
        quiet = [OUTAGE, *silent]
        if not any(a < t < b for a, b in quiet):
            state = "in_service"
            for name, spans in (states or {}).items():
                if inside(t, spans):
                    state = name
            m = StateMessage.model_validate({
                "v": 1, "device_id": ident, "ts": t, "seq": seq, "state": state,
                "heartbeat_s": 300,
                "components": {"ptr": "warning" if inside(t, paper_low) else "ok", "cdm": "ok"},
                "cash_units": units if inside(t, cash_low) else OK,
            })  # fmt: skip
            out.append(Accepted(m, t, device_topic(ident, "state"), encode(m)))
        t += timedelta(minutes=5)
        seq += 1
    return out


def messages() -> list[Accepted]:
    day = DAY
    return [
        *scenario("MID", cash_low=[(at(day, 22), at(D1, 2))]),
        *scenario("WIN", paper_low=[(at(day, 16), at(day, 18))]),
        *scenario("UNK", paper_low=[(at(day, 9), at(day, 13))]),
        *scenario(
            "PLN", cash_low=[(at(day, 13), at(day, 17))],
            states={"planned_maintenance": [(at(day, 14), at(day, 16))]},
        ),
        *scenario(
            "DWN", cash_low=[(at(day, 13), at(day, 17))],
            states={"fault": [(at(day, 14), at(day, 16))]},
        ),
        *scenario(
            "OFF", cash_low=[(at(day, 13), at(day, 17))], silent=[(at(day, 14), at(day, 16))]
        ),
        *scenario(
            "OVL", cash_low=[(at(day, 13), at(day, 16))], paper_low=[(at(day, 15), at(day, 18))]
        ),
        *scenario(
            "NOS", cash_low=[(at(day, 0), at(D1, 0))], units=EMPTY,
            states={"planned_maintenance": [(at(day, 0), at(D1, 0))]},
        ),
        *scenario("OUT", states={"cash_out": [(at(day, 20), at(day, 21))]}),
    ]  # fmt: skip


def load(url: str, compress: bool = False) -> None:
    """The inventory, the messages and the collector outage, as ingest leaves them."""
    with psycopg.connect(url) as conn:
        upsert_inventory(conn, INVENTORY)
        BatchWriter(conn, "test").write(messages())
        conn.execute(
            "INSERT INTO collector_outages (started_at, ended_at, detected_by) "
            "VALUES (%s, %s, 'test')",
            OUTAGE,
        )
        if compress:
            conn.execute("SELECT compress_chunk(c) FROM show_chunks('state_samples') c")
        conn.commit()


@pytest.fixture(scope="module")
def store() -> Iterator[dict[str, str]]:
    from atmfleet.store.migrate import upgrade
    from tests.conftest import create_database, drop_database

    url = create_database()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            upgrade(conn)
        load(url)
        yield {"ATMFLEET_DATABASE_URL": url}
    finally:
        drop_database(url)


def run(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env={**env, "ATMFLEET_RULES_FILE": None})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def kpi(env: dict[str, str], *args: str) -> dict[str, Any]:
    code, out = run(env, "kpi", *args, "--json")
    assert code == 0, out
    data: dict[str, Any] = json.loads(out)
    return data


def rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["group"]: r for r in report["rows"]}


def by_device(env: dict[str, str], day: date = DAY) -> dict[str, dict[str, Any]]:
    return rows(kpi(env, "resource-warnings", "--date", str(day), "--by", "device"))


def wh(row: dict[str, Any]) -> tuple[float, float]:
    """(W, S) in hours."""
    return row["warning_ms"] / H, row["scheduled_ms"] / H


class TestEdges:
    def test_a_warning_across_midnight_counts_in_each_day(self, store: dict[str, str]) -> None:
        assert wh(by_device(store)["MID"]) == (2, 22)  # 22:00-24:00; S less the outage
        assert wh(by_device(store, D1)["MID"]) == (2, 24)  # 00:00-02:00

    def test_only_the_part_inside_the_service_window_counts(self, store: dict[str, str]) -> None:
        win = by_device(store)["WIN"]
        # 16:00-17:00 of 16:00-18:00; S = 09:00-17:00 less the outage 10:00-12:00.
        assert wh(win) == (1, 6) and win["rate"] == 1 / 6

    def test_unknown_time_is_neither_w_nor_s(self, store: dict[str, str]) -> None:
        assert wh(by_device(store)["UNK"]) == (2, 22)  # 09-10 and 12-13, not the outage

    def test_planned_maintenance_is_neither_w_nor_s(self, store: dict[str, str]) -> None:
        assert wh(by_device(store)["PLN"]) == (2, 20)

    def test_a_warning_while_down_for_a_reported_fault_counts(self, store: dict[str, str]) -> None:
        assert wh(by_device(store)["DWN"]) == (4, 22)

    def test_a_warning_is_never_assumed_while_offline(self, store: dict[str, str]) -> None:
        # The 2 h silence is communications (in S, down); the cash low around it counts.
        assert wh(by_device(store)["OFF"]) == (2, 22)
        up = rows(kpi(store, "uptime", "--date", str(DAY), "--by", "device"))["OFF"]
        assert up["down_ms_by_cause"] == {"communications": 2 * H}

    def test_overlapping_warnings_count_once(self, store: dict[str, str]) -> None:
        assert wh(by_device(store)["OVL"]) == (5, 22)  # 13:00-18:00, not 3 + 3

    def test_a_cash_out_state_is_a_warning_by_itself(self, store: dict[str, str]) -> None:
        assert wh(by_device(store)["OUT"]) == (1, 22)

    def test_no_scheduled_time_is_no_data(self, store: dict[str, str]) -> None:
        nos = by_device(store)["NOS"]
        assert wh(nos) == (0, 0) and nos["rate"] is None and nos["rank"] is None
        code, table = run(store, "kpi", "rwr", "--date", str(DAY), "--by", "device")
        assert code == 0
        line = next(x for x in table.splitlines() if " NOS " in f" {x} ")
        assert line.split()[:4] == ["–", "NOS", "1", "–"], line  # not 0.00%

    def test_a_day_before_any_data_is_no_data(self, store: dict[str, str]) -> None:
        got = kpi(store, "rwr", "--date", str(START - timedelta(days=1)))
        assert got["total"]["rate"] is None and got["total"]["scheduled_ms"] == 0
        assert all(r["rate"] is None and r["rank"] is None for r in got["rows"])


class TestRollUp:
    def test_groups_add_w_and_s_and_rank_ascending(self, store: dict[str, str]) -> None:
        got = kpi(store, "rwr", "--date", str(DAY), "--by", "subbranch")
        subs = rows(got)
        assert wh(subs["S1"]) == (5, 50) and subs["S1"]["rate"] == 5 / 50
        # Not the mean of 2/22, 1/6 and 2/22 (0.116...).
        assert wh(subs["S2"]) == (13, 86) and subs["S2"]["devices"] == 5
        assert wh(subs["S3"]) == (1, 22)
        # Lower is better: S3 1/22 < S1 5/50 < S2 13/86.
        assert [(r["rank"], r["group"]) for r in got["rows"]] == [(1, "S3"), (2, "S1"), (3, "S2")]
        assert wh(got["total"]) == (19, 158) and got["total"]["rate"] == 19 / 158
        assert got["total"]["group"] == "fleet"

    def test_uptime_is_shown_beside_it_from_the_same_s(self, store: dict[str, str]) -> None:
        rw = rows(kpi(store, "rwr", "--date", str(DAY), "--by", "branch"))
        up = rows(kpi(store, "uptime", "--date", str(DAY), "--by", "branch"))
        for branch in ("B1", "B2", "B3"):
            assert rw[branch]["scheduled_ms"] == up[branch]["scheduled_ms"]
            assert rw[branch]["uptime"] == up[branch]["uptime"]

    def test_a_scope_selects_its_devices_and_an_unknown_one_is_refused(
        self, store: dict[str, str]
    ) -> None:
        got = kpi(store, "rwr", "--date", str(DAY), "--scope", "branch:B2")
        assert got["by"] == "device" and set(rows(got)) == {"PLN", "DWN", "OFF", "OVL", "NOS"}
        assert wh(got["total"]) == (13, 86) and got["total"]["group"] == "branch:B2"
        code, out = run(store, "kpi", "rwr", "--date", str(DAY), "--scope", "branch:NOPE")
        assert code == 2 and "no branch 'NOPE'" in out and "Traceback" not in out

    def test_a_period_is_the_sum_of_its_days(self, store: dict[str, str]) -> None:
        got = rows(kpi(store, "rwr", "--from", str(DAY), "--to", str(D1), "--by", "device"))
        assert wh(got["MID"]) == (4, 46)


class TestSqlEqualsCore:
    def test_the_feed_finds_the_spans_the_core_finds_in_the_raw_messages(
        self, store: dict[str, str]
    ) -> None:
        from rules.config import load_rules
        from rules.feed import Feed
        from rules.resource import WarningPolicy, WarningSample, warning_spans
        from rules.timeline import ms
        from rules.uptime import day_span

        rules = load_rules()
        policy = WarningPolicy.from_rules(rules)
        lo, hi = day_span(DAY, rules.tz)
        with psycopg.connect(store["ATMFLEET_DATABASE_URL"]) as conn:
            feed = Feed(conn, rules)
            got = feed.warning_spans(lo, hi, hi, policy.query_params())
            raw: dict[str, list[WarningSample]] = {}
            for dev, ts, seq, state, cash, comps, faults in conn.execute(
                "SELECT device_id, ts, seq, state, cash_units, components, faults"
                " FROM state_samples WHERE ts >= %s AND ts < %s",
                (from_ms(lo - feed.context_ms()), from_ms(hi)),
            ):
                warning = policy.is_warning(state, cash, comps, faults)
                raw.setdefault(dev, []).append(WarningSample(ms(ts), warning, seq))
        want = {d: spans for d, s in raw.items() if (spans := warning_spans(s))}
        assert got == want
        assert set(got) == {"MID", "WIN", "UNK", "PLN", "DWN", "OFF", "OVL", "NOS", "OUT"}


class TestOwner:
    def test_the_read_only_login_computes_it(self, store: dict[str, str]) -> None:
        """kpi, bulletins and serve run as the reader (SELECT only): so does the rate."""
        from rules.config import load_rules
        from rules.feed import Feed
        from rules.report import Context, Scope, resource_report

        url = store["ATMFLEET_DATABASE_URL"]
        with psycopg.connect(url) as conn:
            conn.execute(f'SET ROLE "{url.rsplit("/", 1)[1]}_reader"')
            feed = Feed(conn, load_rules())
            ctx = Context.make(
                feed, feed.inventory(), Scope("fleet", "fleet"), DAY, DAY, feed.now_ms()
            )
            assert resource_report(ctx, "subbranch").extra["total"]["rate"] == 19 / 158


class TestChoices:
    def test_a_bank_may_count_warnings_only_while_the_device_serves(
        self, store: dict[str, str]
    ) -> None:
        from rules.config import parse_rules
        from rules.feed import Feed
        from rules.report import Context, Scope, resource_report

        rules = parse_rules("resource_warning:\n  counted_in: [available]\n")
        with psycopg.connect(store["ATMFLEET_DATABASE_URL"]) as conn:
            feed = Feed(conn, rules)
            ctx = Context.make(
                feed, feed.inventory(), Scope("fleet", "fleet"), DAY, DAY, feed.now_ms()
            )
            got = {r["group"]: wh(r) for r in resource_report(ctx, "device").rows}
        assert got["DWN"] == (2, 22)  # the 2 h of fault no longer count
        assert got["OUT"] == (0, 22)  # nor does a cash-out state
        assert got["OVL"] == (5, 22)


class TestBulletin:
    def test_the_daily_bulletin_shows_the_cli_figures(
        self, store: dict[str, str], tmp_path: Path
    ) -> None:
        cli_sub = kpi(store, "rwr", "--date", str(DAY), "--by", "subbranch")
        cli_branch = rows(kpi(store, "rwr", "--date", str(DAY), "--by", "branch"))
        code, out = run(
            store, "bulletin", "daily", "--date", str(DAY), "--format", "json", "--lang", "en",
            "--out", str(tmp_path),
        )  # fmt: skip
        assert code == 0, out
        doc = json.loads(Path(out.strip()).read_text())
        table = doc["tables"]["rw_subbranches"]["rows"]
        assert [(r["rank"], r["subbranch"], r["resource_warning"]) for r in table] == [
            (r["rank"], r["group"], r["rate"]) for r in cli_sub["rows"]
        ]
        assert [r["warning_h"] for r in table] == [r["warning_ms"] / H for r in cli_sub["rows"]]
        branches = {r["branch"]: r for r in doc["tables"]["rw_branches"]["rows"]}
        for b, r in cli_branch.items():
            assert branches[b]["resource_warning"] == r["rate"]
            assert branches[b]["uptime"] == r["uptime"]
        summary = doc["summary"]["resource_warning"]
        assert summary["value"] == cli_sub["total"]["rate"] == 19 / 158

    def test_the_chinese_bulletin_names_it(self, store: dict[str, str], tmp_path: Path) -> None:
        code, out = run(
            store, "bulletin", "daily", "--date", str(DAY), "--format", "html",
            "--out", str(tmp_path),
        )  # fmt: skip
        assert code == 0, out
        text = Path(out.strip()).read_text()
        assert "资源预警率" in text and "二级分行资源预警率排名" in text


@pytest.mark.timescale
def test_timescaledb_gives_the_same_figures_from_compressed_chunks(
    store: dict[str, str], timescale_url: str
) -> None:
    """The same query on TimescaleDB hypertables (compressed) as on plain PostgreSQL."""
    from atmfleet.store.migrate import Flavour, upgrade

    with psycopg.connect(timescale_url, autocommit=True) as conn:
        assert upgrade(conn).flavour is Flavour.TIMESCALE
    load(timescale_url, compress=True)
    ts = {"ATMFLEET_DATABASE_URL": timescale_url}
    for day in (DAY, D1):
        assert by_device(ts, day) == by_device(store, day)


class TestCore:
    """The pure core, without a database."""

    def test_a_warning_holds_until_the_next_message_and_duplicates_count_once(self) -> None:
        from rules.resource import OPEN_END, WarningSample, warning_spans

        samples = [
            WarningSample(0, False, 1), WarningSample(10, True, 2), WarningSample(20, True, 3),
            WarningSample(20, True, 3), WarningSample(30, False, 4), WarningSample(40, True, 5),
        ]  # fmt: skip
        assert warning_spans(reversed(samples)) == [(10, 30), (40, OPEN_END)]

    def test_w_is_cut_by_the_timeline_and_the_schedule(self) -> None:
        from rules.labels import Label
        from rules.resource import warning_ms

        line = [(0, 10, Label.AVAILABLE), (10, 20, Label.COMMUNICATIONS), (20, 40, Label.FAULT)]
        counted = frozenset({Label.AVAILABLE, Label.FAULT})
        assert warning_ms(line, [(5, 35)], [(0, 30)], counted) == 5 + 10
        assert warning_ms(line, [(5, 35)], [], counted) == 0

    def test_ranks_ascending_ties_share_no_data_last(self) -> None:
        from rules.resource import ranked

        got = ranked({"a": 0.2, "b": None, "c": 0.1, "d": 0.2, "e": 0.0})
        assert got == [(1, "e"), (2, "c"), (3, "a"), (3, "d"), (None, "b")]

    def test_the_policy_matches_what_the_sql_matches(self) -> None:
        from rules.config import load_rules
        from rules.resource import WarningPolicy

        policy = WarningPolicy.from_rules(load_rules())
        assert policy.is_warning("cash_out")
        assert policy.is_warning("in_service", LOW) and not policy.is_warning("in_service", OK)
        assert policy.is_warning("in_service", components={"ptr": "warning"})
        assert not policy.is_warning("in_service", components={"cdm": "warning"})
        assert policy.is_warning("fault", faults=["PTR:PAPER_OUT"])
        assert not policy.is_warning("fault", faults=["CDM:PICK_FAILURE"])
        inop = [{**OK[0], "status": "inop"}]
        assert not policy.is_warning("in_service", inop)


class TestRules:
    def test_the_section_is_validated_naming_the_field(self) -> None:
        from atmfleet.errors import ConfigError
        from rules.config import parse_rules

        with pytest.raises(ConfigError, match=r"resource_warning\.counted_in.*'planned' cannot"):
            parse_rules("resource_warning:\n  counted_in: [available, planned]\n")
        with pytest.raises(ConfigError, match=r"unknown key 'resource_warning\.colour'"):
            parse_rules("resource_warning:\n  colour: red\n")
        with pytest.raises(ConfigError, match=r"resource_warning\.cash_units"):
            parse_rules("resource_warning:\n  cash_units: {dispense: [sparkly]}\n")
        with pytest.raises(ConfigError, match=r"resource_warning\.fault_codes"):
            parse_rules("resource_warning:\n  fault_codes: ['PAPER OUT']\n")

    def test_a_business_excluded_cause_never_counts(self) -> None:
        from rules.config import parse_rules
        from rules.labels import Label
        from rules.resource import WarningPolicy

        rules = parse_rules("uptime:\n  business_excluded_causes: [cash_out]\n")
        assert Label.CASH_OUT not in WarningPolicy.from_rules(rules).counted


class TestKeptDays:
    def test_closed_days_keep_w_and_late_telemetry_makes_it_computed_again(self) -> None:
        """`kpi keep-days` keeps W beside S; `kpi rwr` then reads it (a marker shows it);
        a late state message deletes the kept day and W is computed again."""
        from atmfleet.store.migrate import upgrade
        from tests.conftest import create_database, drop_database

        url = create_database()
        env = {"ATMFLEET_DATABASE_URL": url}
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                upgrade(conn)
            load(url)
            before = by_device(env)
            code, out = run(env, "kpi", "keep-days", "--from", str(DAY), "--to", str(D1))
            assert code == 0, out
            with psycopg.connect(url) as conn:
                kept = dict(
                    conn.execute(
                        "SELECT device_id, warning_ms FROM kpi_device_days WHERE day = %s",
                        (DAY,),
                    ).fetchall()
                )
                assert kept["OVL"] == 5 * H and kept["NOS"] == 0 and len(kept) == 9
                assert by_device(env) == before  # read back, the same figures
                conn.execute(
                    "UPDATE kpi_device_days SET warning_ms = 1 WHERE device_id = 'OVL'"
                    " AND day = %s",
                    (DAY,),
                )
                conn.commit()
                assert by_device(env)["OVL"]["warning_ms"] == 1  # the kept value is read
                late = StateMessage(
                    v=1, device_id="OVL", ts=at(DAY, 20) + timedelta(seconds=1), seq=10**6,
                    state="in_service", heartbeat_s=300,
                )  # fmt: skip
                BatchWriter(conn, "test").write(
                    [Accepted(late, at(D1, 9), device_topic("OVL", "state"), encode(late))]
                )
            assert by_device(env)["OVL"]["warning_ms"] == 5 * H  # computed again
        finally:
            drop_database(url)

    def test_w_goes_only_into_kept_days_and_the_figures_stay(self) -> None:
        """W is sent to be kept only beside a kept S of the same value (what the update
        stores): a day not kept gets nothing, a kept day without W gets its W, and the
        figures are the ones computed from the messages."""
        from atmfleet.store.migrate import upgrade
        from tests.conftest import create_database, drop_database

        url = create_database()
        env = {"ATMFLEET_DATABASE_URL": url}
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                upgrade(conn)
            load(url)
            computed = by_device(env)  # nothing kept: every W computed, nothing kept
            with psycopg.connect(url) as conn:
                assert conn.execute("SELECT count(*) FROM kpi_device_days").fetchone() == (0,)
            code, out = run(env, "kpi", "keep-days", "--date", str(DAY))
            assert code == 0, out
            with psycopg.connect(url) as conn:
                conn.execute("UPDATE kpi_device_days SET warning_ms = NULL")
                conn.execute("DELETE FROM kpi_device_days WHERE device_id = 'NOS'")
                conn.commit()
            assert by_device(env) == computed
            with psycopg.connect(url) as conn:
                kept = dict(
                    conn.execute("SELECT device_id, warning_ms FROM kpi_device_days").fetchall()
                )
            assert "NOS" not in kept  # not kept: nothing stored for it
            assert kept["OVL"] == 5 * H and len(kept) == 8
            assert all(kept[d] == computed[d]["warning_ms"] for d in kept)
        finally:
            drop_database(url)
