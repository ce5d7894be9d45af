"""The daily bulletin equals ``atmfleet kpi ... --json``, cell by cell.

A simulated fleet's history (incidents, transactions, counter volumes) is stored from the
middle of the day before the bulletin's day, so the previous-day column covers a part of a
day and the days before it have no data. The daily bulletin is written in every format and
both languages; each cell of each table computed by ``atmfleet kpi`` (tiers, sub-branches
with the previous day and the change, branches, devices below target, deposit coverage,
both tails with their streaks, low-yield, 资源预警率 by sub-branch and branch) is compared with the CLI's JSON: exactly in the
JSON and the XLSX, as written text in the CSV. The table of devices down for more than
24 h has no ``kpi`` counterpart (it reads the timeline): its devices are checked to be
fully down in ``kpi uptime``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import zipfile
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import openpyxl
import psycopg
import pytest
from click.testing import CliRunner

from app.cli import cli
from atmfleet.inventory import Inventory
from atmfleet.store.migrate import upgrade
from exporters.bulletin.messages import Messages
from exporters.bulletin.model import Kind
from rules.labels import CAUSES
from simulator.config import make_config
from simulator.fleet import generate_inventory
from tests.conftest import create_database, drop_database
from tests.simulated import store_simulated

pytestmark = pytest.mark.integration

TZ = ZoneInfo("Asia/Shanghai")
DAY = date(2026, 11, 20)
BEFORE = DAY - timedelta(days=1)
H = 3_600_000


def _fleet() -> Inventory:
    config = make_config(
        {"incidents": {"branch_power_cuts_per_year": 300, "device_link_drops_per_year": 600}}
    )
    inv = generate_inventory(24, 11, prefix="eq", config=config)
    # One device leaves the fleet the day before, one joins the day after: in no count.
    devices = list(inv.devices)
    devices[0] = devices[0].model_copy(update={"decommissioned": BEFORE})
    devices[1] = devices[1].model_copy(update={"commissioned": DAY + timedelta(days=1)})
    return inv.model_copy(update={"devices": tuple(devices)})


INVENTORY = _fleet()


@pytest.fixture(scope="module")
def db() -> Iterator[str]:
    url = create_database()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            upgrade(conn)
        start = datetime.combine(BEFORE, time(13, 30), tzinfo=TZ).astimezone(UTC)
        end = datetime.combine(DAY + timedelta(days=1), time(2), tzinfo=TZ).astimezone(UTC)
        # Small loads, so that cash runs low and cassettes fill (资源预警率 has something to show).
        config = make_config({"cash": {"notes_loaded": 400, "deposit_capacity": 400}})
        store_simulated(url, INVENTORY, config, 11, start, end, heartbeat_s=300)
        yield url
    finally:
        drop_database(url)


def invoke(url: str, *args: str) -> str:
    result = CliRunner().invoke(
        cli, list(args), env={"ATMFLEET_DATABASE_URL": url, "ATMFLEET_RULES_FILE": None}
    )
    assert result.exit_code == 0, result.output
    return result.output


def kpi(url: str, *args: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(invoke(url, "kpi", *args, "--date", str(DAY), "--json"))
    return data


@pytest.fixture(scope="module")
def cli_json(db: str) -> dict[str, dict[str, Any]]:
    return {
        "tier": kpi(db, "uptime", "--by", "tier"),
        "subbranch": kpi(db, "uptime", "--by", "subbranch", "--previous"),
        "branch": kpi(db, "uptime", "--by", "branch"),
        "device": kpi(db, "uptime", "--by", "device"),
        "s_tier": kpi(db, "substitution", "--by", "tier"),
        "s_subbranch": kpi(db, "substitution", "--by", "subbranch"),
        "s_branch": kpi(db, "substitution", "--by", "branch"),
        "low_yield": kpi(db, "low-yield", "--by", "subbranch"),
        "tail_uptime": kpi(db, "tail", "--rank", "uptime"),
        "tail_volume": kpi(db, "tail", "--rank", "volume"),
        "network": kpi(db, "network"),
        "rw_subbranch": kpi(db, "resource-warnings", "--by", "subbranch"),
        "rw_branch": kpi(db, "rwr", "--by", "branch"),
    }


@pytest.fixture(scope="module")
def written(db: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    folder = tmp_path_factory.mktemp("eq")
    out: dict[str, dict[str, Path]] = {}
    for lang in ("zh-CN", "en"):
        text = invoke(
            db, "bulletin", "daily", "--date", str(DAY), "--format", "all", "--lang", lang,
            "--out", str(folder / lang),
        )  # fmt: skip
        paths = [Path(line) for line in text.splitlines()]
        out[lang] = {p.name.split(".", 2)[-1]: p for p in paths}
    return out


def by_group(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["group"]: r for r in report["rows"]}


def hours(value: int | None) -> float | None:
    return None if value is None else value / H


def expected_tables(j: dict[str, dict[str, Any]], m: Messages) -> dict[str, list[list[Any]]]:
    """Every table of the daily bulletin, built from the CLI's JSON only (and the labels)."""
    inv = INVENTORY
    subs = inv.subbranch_by_id
    branches = inv.branch_by_id

    def cause(c: str | None) -> str | None:
        return m(f"cause.{c}") if c else None

    s_tier, s_sub, s_br = (by_group(j[k]) for k in ("s_tier", "s_subbranch", "s_branch"))
    ly = by_group(j["low_yield"])
    out: dict[str, list[list[Any]]] = {}
    out["tiers"] = [
        [m("tier", n=r["group"]), r["devices"], r["uptime"], r["target"], r["technical"],
         r["coverage"], hours(r["down_ms"]), s_tier[r["group"]]["self_financial"],
         s_tier[r["group"]]["rate"]]
        for r in j["tier"]["rows"]
    ]  # fmt: skip
    ranked = sorted(
        j["subbranch"]["rows"], key=lambda r: (r["uptime"] is None, -(r["uptime"] or 0), r["group"])
    )
    out["subbranches"] = [
        [i if r["uptime"] is not None else None, r["group"], subs[r["group"]].name,
         m("tier", n=subs[r["group"]].tier.value), r["devices"], r["uptime"], r["previous"],
         r["change"], r["target"],
         None if r["meets_target"] is None else m("no") if r["meets_target"] else m("yes"),
         r["technical"], r["coverage"], hours(r["down_ms"]), cause(r["main_cause"]),
         s_sub[r["group"]]["self_financial"] if r["group"] in s_sub else 0,
         s_sub[r["group"]]["rate"] if r["group"] in s_sub else None,
         ly[r["group"]]["share"] if r["group"] in ly else None]
        for i, r in enumerate(ranked, 1)
    ]  # fmt: skip
    rows = sorted(
        j["branch"]["rows"],
        key=lambda r: (branches[r["group"]].subbranch, r["uptime"] is None, r["uptime"] or 0,
                       r["group"]),
    )  # fmt: skip
    out["branches"] = []
    for r in rows:
        st = s_br.get(r["group"])
        out["branches"].append(
            [branches[r["group"]].subbranch, r["group"], branches[r["group"]].name,
             r["devices"], r["uptime"], r["target"], hours(r["down_ms"]), cause(r["main_cause"]),
             r["financial"],
             st["counter_financial"] if st and st["rate"] is not None else None,
             st["rate"] if st else None, st["on_site_rate"] if st else None]
        )  # fmt: skip
    below = sorted(
        (r for r in j["device"]["rows"] if r["meets_target"] is False),
        key=lambda r: (r["uptime"], -r["down_ms"], r["group"]),
    )
    out["below_target"] = [
        [r["group"], inv.subbranch_of(inv.device_by_id[r["group"]]).id,
         inv.device_by_id[r["group"]].branch,
         m(f"type.{inv.device_by_id[r['group']].type.value}"), inv.device_by_id[r["group"]].vendor,
         r["uptime"], r["target"], hours(r["down_ms"]),
         *[hours(r["down_ms_by_cause"].get(c.value, 0)) for c in CAUSES]]
        for r in below
    ]  # fmt: skip
    out["deposit"] = [
        [g["subbranch"], g["group"], branches[g["group"]].name, m(f"reason.{g['reason']}"),
         g["installed"], g["working"]]
        for g in j["network"]["deposit_coverage"]["rows"]
    ]  # fmt: skip
    for key, value in (("tail_uptime", "uptime"), ("tail_volume", "daily_financial")):
        out[key] = [
            [r["group"], r["position"], r["device"], inv.device_by_id[r["device"]].branch,
             r[value], r["target"], r["streak"]]
            for r in j[key]["rows"]
        ]  # fmt: skip
    out["low_yield"] = [
        [name, r["low"], r["evaluated"], r["share"], r["max_share"], r["exempt"],
         r["not_evaluated_coverage"], r["low_efficiency"]]
        for name, r in [*((r["group"], r) for r in j["low_yield"]["rows"]),
                        (m("fleet"), j["low_yield"]["total"])]
    ]  # fmt: skip
    # 资源预警率: the CLI's rows are already ranked ascending; branches within sub-branch.
    out["rw_subbranches"] = [
        [r["rank"], r["group"], subs[r["group"]].name, m("tier", n=subs[r["group"]].tier.value),
         r["devices"], r["rate"], hours(r["warning_ms"]), hours(r["scheduled_ms"]), r["uptime"]]
        for r in j["rw_subbranch"]["rows"]
    ]  # fmt: skip
    out["rw_branches"] = []
    for sub in sorted({branches[r["group"]].subbranch for r in j["rw_branch"]["rows"]}):
        mine = [r for r in j["rw_branch"]["rows"] if branches[r["group"]].subbranch == sub]
        mine.sort(key=lambda r: (r["rate"] is None, r["rate"] or 0.0, r["group"]))
        rank, previous = 0, None
        for i, r in enumerate(mine, 1):
            if r["rate"] is not None and r["rate"] != previous:
                rank, previous = i, r["rate"]
            out["rw_branches"].append(
                [sub, rank if r["rate"] is not None else None, r["group"],
                 branches[r["group"]].name, r["devices"], r["rate"], hours(r["warning_ms"]),
                 hours(r["scheduled_ms"]), r["uptime"]]
            )  # fmt: skip
    return out


def same_in_xlsx(got: list[Any], want: list[Any], kinds: list[str]) -> bool:
    """XLSX keeps a number to 16 significant digits (the file's text form): equal to that;
    no data reads "–"; Decimal is written as a number; a change is held in percentage
    points (the JSON's difference of ratios × 100, as its header says)."""
    if len(got) != len(want):
        return False
    for g, w, kind in zip(got, want, kinds, strict=True):
        if w is None:
            w = "–"
        if isinstance(w, (int, float)) and not isinstance(w, bool):
            if kind == Kind.CHANGE.value:
                w = w * 100
            if not isinstance(g, (int, float)) or not math.isclose(g, w, rel_tol=1e-14):
                return False
        elif g != w:
            return False
    return True


def as_csv(value: Any) -> str:
    return "–" if value is None else str(value)


class TestTheDailyBulletinEqualsTheCli:
    @pytest.mark.parametrize("lang", ["zh-CN", "en"])
    def test_every_cell_of_every_table(
        self,
        cli_json: dict[str, dict[str, Any]],
        written: dict[str, dict[str, Path]],
        lang: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        m = Messages(lang)
        expected = expected_tables(cli_json, m)
        files = written[lang]
        doc = json.loads(files["json"].read_text())
        keys = list(doc["tables"])
        wb = openpyxl.load_workbook(files["xlsx"], read_only=True)
        csvs = zipfile.ZipFile(files["csv.zip"])
        compared = 0
        for key, rows in expected.items():
            table = doc["tables"][key]
            columns = [c["key"] for c in table["columns"]]
            got_json = [[r[c] for c in columns] for r in table["rows"]]
            assert got_json == rows, key
            sheet = [
                list(r) for r in wb.worksheets[1 + keys.index(key)].iter_rows(values_only=True)
            ]
            body_x = sheet[2 : 2 + len(rows)]
            rest = sheet[2 + len(rows) :]
            assert not rest or all(v is None for v in rest[0]), key  # then a blank, the note
            assert len(body_x) == len(rows), key
            kinds = [c["kind"] for c in table["columns"]]
            for got, want in zip(body_x, rows, strict=True):
                assert same_in_xlsx(got, want, kinds), (key, got, want)
            name = next(n for n in csvs.namelist() if n.endswith(f"_{key}.csv"))
            text = csvs.read(name).decode("utf-8-sig")
            body = list(csv.reader(io.StringIO(text)))[1:]
            assert body == [[as_csv(v) for v in r] for r in rows], key
            compared += 3 * sum(len(r) for r in rows)
        # The summary's figures are the CLI totals.
        summary = {k: v["value"] for k, v in doc["summary"].items()}
        total = cli_json["subbranch"]["total"]
        assert summary["uptime"] == total["uptime"]
        assert summary["coverage"] == total["coverage"]
        assert summary["down_h"] == total["down_ms"] / H
        assert summary["devices"] == total["devices"] == len(cli_json["device"]["rows"])
        assert summary["financial"] == cli_json["s_subbranch"]["total"]["self_financial"]
        assert summary["substitution"] == cli_json["s_subbranch"]["total"]["rate"]
        assert summary["low_yield_share"] == cli_json["low_yield"]["total"]["share"]
        assert summary["below_target"] == len(expected["below_target"])
        assert summary["resource_warning"] == cli_json["rw_subbranch"]["total"]["rate"]
        compared += 9
        # Devices down for more than 24 h have no kpi table: each is fully down in kpi uptime.
        devices = by_group(cli_json["device"])
        for r in doc["tables"]["down_24h"]["rows"]:
            assert devices[r["device"]]["available_ms"] == 0
        with capsys.disabled():
            print(f"\n[{lang}] bulletin cells compared with `atmfleet kpi --json`: {compared}")
        assert compared > 500

    def test_the_fleet_is_what_the_tests_are_about(self, cli_json: dict[str, Any]) -> None:
        """The comparison covers the edges: a partial previous day, devices out of the
        fleet, streaks from the day before, no data before monitoring began."""
        ids = {r["group"] for r in cli_json["device"]["rows"]}
        gone, future = INVENTORY.devices[0].id, INVENTORY.devices[1].id
        assert gone not in ids and future not in ids  # in no count
        subs = cli_json["subbranch"]["rows"]
        assert any(r["previous"] is not None for r in subs)
        assert all(r["coverage"] is not None and r["coverage"] == 1 for r in subs)
        assert any(r["streak"] == 2 for r in cli_json["tail_uptime"]["rows"])
        assert cli_json["tail_uptime"]["history_periods_with_data"] == 1  # only the day before
        assert any(r["meets_target"] is True for r in cli_json["device"]["rows"])
        tail_ids = {r["device"] for r in cli_json["tail_uptime"]["rows"]}
        at_target = {r["group"] for r in cli_json["device"]["rows"] if r["meets_target"]}
        assert not tail_ids & at_target  # a device at target is never the tail
        # The simulated fleet runs low on cash and fills deposit cassettes: W > 0 somewhere.
        assert any(r["warning_ms"] > 0 for r in cli_json["rw_branch"]["rows"])


class TestPeriodSummedAsItComes:
    def test_the_month_summed_day_by_day_equals_the_sum_of_its_device_days(self, db: str) -> None:
        """The monthly/quarterly assessment sums each device's days as they come
        (``period_uptime``): every time of every device, its labels in the same order,
        equal to the total of the month's per-day uptime."""
        from rules.config import load_rules
        from rules.feed import Feed
        from rules.report import Context, Scope, per_device_uptime, period_uptime

        first, last = date(2026, 11, 1), date(2026, 11, 30)
        now = int(datetime.combine(date(2026, 12, 1), time(9), tzinfo=TZ).timestamp() * 1000)
        with psycopg.connect(db) as conn:
            feed = Feed(conn, load_rules())
            inv = feed.inventory()
            fleet = Scope("fleet", "fleet")
            summed = period_uptime(Context.make(feed, inv, fleet, first, last, now))
            plain = per_device_uptime(Context.make(feed, inv, fleet, first, last, now))
        assert list(summed) == list(plain) and len(plain) == len(INVENTORY.devices)
        for d, want in plain.items():
            got = summed[d]
            assert list(got.by_label.items()) == list(want.by_label.items()), d
            assert got == want, d
        assert any(u.available_ms > 0 for u in plain.values())
        assert any(u.unknown_ms > 0 for u in plain.values())

    def test_the_month_s_transactions_read_day_by_day_equal_the_whole_read(self, db: str) -> None:
        """The substitution unit-days and each device's fees, summed by the database for a
        period longer than a day, equal those from the period's transactions held at once."""
        from rules.config import load_rules
        from rules.feed import Feed
        from rules.report import Context, Scope, period_fees, unit_entries

        first, last = date(2026, 11, 1), date(2026, 11, 30)
        with psycopg.connect(db) as conn:
            feed = Feed(conn, load_rules())
            inv = feed.inventory()
            by_day = Context.make(feed, inv, Scope("fleet", "fleet"), first, last, 0)
            held = Context.make(feed, inv, Scope("fleet", "fleet"), first, last, 0)
            held.txn()  # the period's transactions held: the whole read
            assert unit_entries(by_day) == unit_entries(held)
            fees = period_fees(by_day)
            assert ("txn", first, last) not in by_day.cache  # never held at once
            assert fees == period_fees(held)
        assert any(n > 0 for _, n in fees.values())
        assert any(v.self_financial > 0 for _, v in unit_entries(held))
