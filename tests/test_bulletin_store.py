"""``atmfleet bulletin``: the cells of every format equal the KPI engine's figures for a
small stored fleet, in both languages; the HTML renders in headless Chromium; bad input
leaves no file behind."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import zipfile
import zlib
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import openpyxl
import psycopg
import pytest
from click.testing import CliRunner

from app.cli import cli
from atmfleet.inventory import Branch, Device, Inventory, SubBranch
from atmfleet.protocol import (
    CounterMessage,
    StateMessage,
    TxnMessage,
    counter_topic,
    device_topic,
    encode,
)
from atmfleet.store.inventory import upsert_inventory
from atmfleet.store.migrate import upgrade
from atmfleet.store.writer import Accepted, BatchWriter
from exporters.bulletin.render import PRINT_CSS
from tests.browser import layout
from tests.conftest import create_database, drop_database

pytestmark = pytest.mark.integration

TZ = ZoneInfo("Asia/Shanghai")
DAY = date(2026, 11, 20)
MIDNIGHT = datetime(2026, 11, 20, tzinfo=TZ).astimezone(UTC)


def _device(ident: str, branch: str, kind: str = "atm", placement: str = "off_site") -> Device:
    return Device(
        id=ident, branch=branch, type=kind, placement=placement, vendor="GRG", model="H22N",
        commissioned=date(2025, 1, 1), heartbeat_s=300,
    )  # fmt: skip


INVENTORY = Inventory(
    subbranches=(
        SubBranch(id="S1", name="赤峰", tier="2"),
        SubBranch(id="S2", name="呼伦贝尔", tier="1"),
    ),
    branches=(
        Branch(id="B1", name="红山支行", subbranch="S1"),
        Branch(id="B2", name="海拉尔支行", subbranch="S2"),
    ),
    devices=(
        _device("bt-a", "B1"),  # fault 10:00-11:00 on the day
        _device("bt-b", "B1"),  # in service
        _device("bt-c", "B1", "crs"),  # fault from the day before to the end: down > 24 h
        _device("bt-d", "B2", "crs"),  # in service
        # In the banking hall, 09:00-17:00: fault 12:00-13:00 (7 h of 8).
        _device("bt-e", "B1", "smart_teller", "on_site"),
    ),
)

FAULTS = {
    "bt-a": (600, 660),
    "bt-b": (0, 0),
    "bt-c": (-1500, 24 * 60 + 65),
    "bt-d": (0, 0),
    "bt-e": (720, 780),
}


def heartbeats(device: str, fault_from: int, fault_to: int) -> list[StateMessage]:
    """Every 5 min from 01:00 the day before to 01:00 the day after (local minutes of
    the day); ``fault`` between the minutes given."""
    out = []
    for i, minute in enumerate(range(-23 * 60, 24 * 60 + 65, 5)):
        state = "fault" if fault_from <= minute < fault_to else "in_service"
        ts = MIDNIGHT + timedelta(minutes=minute)
        out.append(StateMessage(v=1, device_id=device, ts=ts, seq=i, state=state, heartbeat_s=300))
    return out


@pytest.fixture(scope="module")
def db() -> Iterator[str]:
    url = create_database()
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            upgrade(conn)
        msgs: list[Accepted] = []
        for device, (a, b) in FAULTS.items():
            for m in heartbeats(device, a, b):
                msgs.append(Accepted(m, m.ts, device_topic(device, "state"), encode(m)))
        at = MIDNIGHT + timedelta(hours=12)
        for device, n in (("bt-a", 5), ("bt-b", 30), ("bt-d", 12)):
            for i in range(n):
                t = TxnMessage(
                    v=1, device_id=device, ts=at + timedelta(minutes=i), seq=1000 + i,
                    txn_id=f"{device}-{i}", type="withdrawal" if i % 4 else "inquiry",
                    amount=Decimal("100"), fee=Decimal("2") if i == 0 else Decimal("0"),
                    result="ok", duration_ms=1000,
                )  # fmt: skip
                msgs.append(Accepted(t, t.ts, device_topic(device, "txn"), encode(t)))
        for branch, fin in (("B1", 40), ("B2", 4)):
            c = CounterMessage(
                v=1, branch_id=branch, date=DAY, financial=fin, non_financial=5, source="core",
                ts=at,
            )  # fmt: skip
            msgs.append(Accepted(c, at, counter_topic(branch), encode(c)))
        with psycopg.connect(url) as conn:
            upsert_inventory(conn, INVENTORY)
            BatchWriter(conn, "test").write(msgs)
        yield url
    finally:
        drop_database(url)


def env(url: str) -> dict[str, str | None]:
    return {"ATMFLEET_DATABASE_URL": url, "ATMFLEET_RULES_FILE": None}


def invoke(url: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env=env(url))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def kpi(url: str, *args: str) -> dict[str, Any]:
    code, out = invoke(url, "kpi", *args, "--json")
    assert code == 0, out
    data: dict[str, Any] = json.loads(out)
    return data


@pytest.fixture(scope="module")
def written(db: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The daily bulletin of DAY in every format and both languages."""
    folder = tmp_path_factory.mktemp("bulletins")
    out: dict[str, Path] = {}
    for lang in ("zh-CN", "en"):
        code, text = invoke(
            db, "bulletin", "daily", "--date", str(DAY), "--format", "all", "--lang", lang,
            "--out", str(folder),
        )  # fmt: skip
        assert code == 0, text
        for line in text.splitlines():
            out[f"{lang}:{Path(line).name.split('.', 2)[-1]}"] = Path(line)
    return out


def xlsx_sheet(path: Path, index: int) -> list[list[Any]]:
    wb = openpyxl.load_workbook(path, read_only=True)
    ws = wb.worksheets[index]
    return [list(r) for r in ws.iter_rows(values_only=True)]


class TestTheDailyBulletinEqualsTheEngine:
    """Every format of the daily bulletin carries the figures `atmfleet kpi` computes."""

    def test_files_are_named_by_kind_day_and_language(self, written: dict[str, Path]) -> None:
        names = sorted(p.name for p in written.values())
        assert names == sorted(
            f"bulletin-daily-2026-11-20.{lang}.{ext}"
            for lang in ("zh-CN", "en")
            for ext in ("xlsx", "csv.zip", "html", "json")
        )

    @pytest.mark.parametrize("lang", ["zh-CN", "en"])
    def test_subbranch_uptime_and_substitution_equal_the_engine(
        self, db: str, written: dict[str, Path], lang: str
    ) -> None:
        up = {
            r["group"]: r
            for r in kpi(db, "uptime", "--date", str(DAY), "--by", "subbranch")["rows"]
        }
        sub = {r["group"]: r for r in kpi(db, "substitution", "--date", str(DAY))["rows"]}
        doc = json.loads(written[f"{lang}:json"].read_text())
        rows = {r["subbranch"]: r for r in doc["tables"]["subbranches"]["rows"]}
        assert set(rows) == {"S1", "S2"}
        for s in ("S1", "S2"):
            assert rows[s]["uptime"] == up[s]["uptime"]  # exact: the same call
            assert rows[s]["substitution"] == sub[s]["rate"]
            assert rows[s]["devices"] == up[s]["devices"]
        # By hand: S1 is 23 h + 24 h + 0 h + 7 h of 24 + 24 + 24 + 8 h (ΣA/ΣS, not the
        # average of the devices' ratios); S2 is up all day.
        assert rows["S1"]["uptime"] == pytest.approx(54 / 80)
        assert rows["S2"]["rank"] == 1 and rows["S1"]["rank"] == 2

        sheet = xlsx_sheet(
            written[f"{lang}:xlsx"], 1 + [t for t in doc["tables"]].index("subbranches")
        )
        header = sheet[1]
        assert header == [c["label"] for c in doc["tables"]["subbranches"]["columns"]]
        xrows = {
            r[1]: dict(
                zip([c["key"] for c in doc["tables"]["subbranches"]["columns"]], r, strict=True)
            )
            for r in sheet[2:]
        }
        for s in ("S1", "S2"):
            assert xrows[s]["uptime"] == pytest.approx(rows[s]["uptime"])
            assert xrows[s]["substitution"] == pytest.approx(rows[s]["substitution"])

        with zipfile.ZipFile(written[f"{lang}:csv.zip"]) as z:
            name = next(n for n in z.namelist() if n.endswith("_subbranches.csv"))
            text = z.read(name).decode("utf-8-sig")
        crows = list(csv.reader(io.StringIO(text)))
        assert crows[0] == header
        by_id = {r[1]: r for r in crows[1:]}
        i = header.index(doc["tables"]["subbranches"]["columns"][5]["label"])
        assert float(by_id["S1"][i]) == pytest.approx(rows["S1"]["uptime"])

    def test_the_labels_are_in_the_language_asked_for(self, written: dict[str, Path]) -> None:
        zh = json.loads(written["zh-CN:json"].read_text())
        en = json.loads(written["en:json"].read_text())
        assert zh["title"] == "自助设备开机率和帐务性交易量日通报"
        assert zh["tables"]["subbranches"]["columns"][5]["label"] == "开机率"
        assert en["tables"]["subbranches"]["columns"][5]["label"] == "Uptime"
        wb = openpyxl.load_workbook(written["zh-CN:xlsx"])
        assert wb.worksheets[0]["A1"].value == "自助设备开机率和帐务性交易量日通报"
        assert wb.worksheets[1].freeze_panes == "A3"
        # Same numbers in both languages.
        for key in zh["tables"]:
            assert [
                [v for v in r.values() if not isinstance(v, str)] for r in zh["tables"][key]["rows"]
            ] == [
                [v for v in r.values() if not isinstance(v, str)] for r in en["tables"][key]["rows"]
            ]

    def test_devices_below_target_list_their_downtime_by_cause(
        self, db: str, written: dict[str, Path]
    ) -> None:
        devices = {
            r["group"]: r
            for r in kpi(db, "uptime", "--date", str(DAY), "--scope", "branch:B1")["rows"]
        }
        doc = json.loads(written["en:json"].read_text())
        rows = {r["device"]: r for r in doc["tables"]["below_target"]["rows"]}
        assert list(rows) == ["bt-c", "bt-e", "bt-a"]  # worst first
        for d, r in rows.items():
            assert r["uptime"] == devices[d]["uptime"]
            assert r["down_h.fault"] == pytest.approx(
                devices[d]["down_ms_by_cause"]["fault"] / 3_600_000
            )
        assert doc["tables"]["below_target"]["below_target"][0] == ["uptime"]

    def test_the_on_site_rate_is_judged_only_where_a_branch_has_on_site_devices(
        self, db: str, written: dict[str, Path]
    ) -> None:
        engine = {
            r["group"]: r
            for r in kpi(db, "substitution", "--date", str(DAY), "--by", "branch")["rows"]
        }
        table = json.loads(written["en:json"].read_text())["tables"]["branches"]
        flagged = {
            r["branch"]: f for r, f in zip(table["rows"], table["below_target"], strict=True)
        }
        rows = {r["branch"]: r for r in table["rows"]}
        assert rows["B1"]["on_site"] == engine["B1"]["on_site_rate"] == 0.0
        assert "on_site" in flagged["B1"]  # bt-e is on site and did no transaction
        # Nothing on site: no data ("–"), not 0 %, and not highlighted.
        assert rows["B2"]["on_site"] is None and engine["B2"]["on_site_rate"] is None
        assert "on_site" not in flagged["B2"]

    def test_a_device_down_since_the_day_before_is_listed_as_down_more_than_24_h(
        self, written: dict[str, Path]
    ) -> None:
        doc = json.loads(written["en:json"].read_text())
        (row,) = doc["tables"]["down_24h"]["rows"]
        assert row["device"] == "bt-c"
        # The look-back is 48 h, but monitoring began at 01:00 the day before (the first
        # stored message): the hour before it is unknown, not down.
        assert row["down_for_h"] == 47.0
        assert row["cause"] == "fault"

    def test_a_branch_whose_only_deposit_device_is_down_is_listed(
        self, written: dict[str, Path]
    ) -> None:
        zh = json.loads(written["zh-CN:json"].read_text())
        (row,) = zh["tables"]["deposit"]["rows"]
        assert (row["branch"], row["reason"], row["installed"], row["working"]) == (
            "B1", "存款设备均不可用", 1, 0,
        )  # fmt: skip

    def test_the_tail_and_the_fleet_summary_equal_the_engine(
        self, db: str, written: dict[str, Path]
    ) -> None:
        engine = kpi(db, "tail", "--date", str(DAY), "--size", "10")["rows"]
        doc = json.loads(written["en:json"].read_text())
        mine = doc["tables"]["tail_uptime"]["rows"]
        assert [(r["subbranch"], r["position"], r["device"]) for r in mine] == [
            (r["group"], r["position"], r["device"]) for r in engine
        ]
        total = kpi(db, "uptime", "--date", str(DAY))["total"]
        assert doc["summary"]["uptime"]["value"] == total["uptime"]
        assert doc["summary"]["devices"]["value"] == 5


def distinct_pixel_bytes(png: bytes) -> int:
    """How many different byte values the PNG's decompressed (filtered) scanlines hold: a
    blank page holds a handful, a page of text, tables and charts many."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(png):
        length = int.from_bytes(png[pos : pos + 4], "big")
        kind = png[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += png[pos + 8 : pos + 8 + length]
        pos += 12 + length
    return len(set(zlib.decompress(idat)))


class TestTheHtmlRendersInChromium:
    def test_a_headless_screenshot_is_not_blank_and_the_dom_holds_the_tables(
        self, written: dict[str, Path], tmp_path: Path
    ) -> None:
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        assert chromium, "Debian's chromium is needed (apt-get install -y chromium)"
        page = written["zh-CN:html"].resolve().as_uri()
        base = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
        ]  # fmt: skip
        shot = tmp_path / "out.png"
        run = subprocess.run(
            [*base, "--enable-logging=stderr", "--v=0", f"--screenshot={shot}",
             "--window-size=1280,2000", page],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert shot.exists(), run.stderr[-2000:]
        assert "Uncaught" not in run.stderr and "ERROR:CONSOLE" not in run.stderr
        assert distinct_pixel_bytes(shot.read_bytes()) > 50  # text, bars, cells: not blank

        dom = subprocess.run(
            [*base, "--dump-dom", page], capture_output=True, text=True, timeout=120, check=True
        ).stdout
        assert dom.count("<section") >= 10 and dom.count("<table") >= 6  # summary, tables
        summary = json.loads(written["zh-CN:json"].read_text())["summary"]
        assert dom.count('class="card"') == len(summary)  # one card per summary figure
        assert "自助设备开机率和帐务性交易量日通报" in dom and "<svg" in dom

    @pytest.mark.parametrize("lang", ["zh-CN", "en"])
    def test_at_1400_px_no_header_or_cell_wraps_and_the_page_is_short(
        self, written: dict[str, Path], tmp_path: Path, lang: str
    ) -> None:
        facts = layout(written[f"{lang}:html"], 1400, tmp_path)
        assert facts["wraps"] == []  # no "排/名", no "第3梯/队"
        assert facts["outside"] == [] and facts["width"] <= facts["view"]
        assert facts["charts"] >= 2
        assert facts["height"] < 4000  # five devices: a short page
        assert re.search(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}$", facts["meta"].strip()), facts["meta"]

    @pytest.mark.parametrize("lang", ["zh-CN", "en"])
    def test_on_an_a4_landscape_page_every_table_fits(
        self, written: dict[str, Path], tmp_path: Path, lang: str
    ) -> None:
        css = PRINT_CSS.replace("@page{size:A4 landscape;margin:10mm}", "")
        facts = layout(written[f"{lang}:html"], 1047, tmp_path, css)
        assert facts["outside"] == [] and facts["wraps"] == []


class TestTheAssessments:
    @pytest.mark.parametrize(("kind", "arg", "value"), [
        ("monthly", "--month", "2026-11"), ("quarterly", "--quarter", "2026-Q4"),
    ])  # fmt: skip
    def test_scores_and_ranks_equal_the_engine(
        self, db: str, tmp_path: Path, kind: str, arg: str, value: str
    ) -> None:
        code, out = invoke(db, "bulletin", kind, arg, value, "--format", "json,xlsx",
                           "--lang", "en", "--out", str(tmp_path))  # fmt: skip
        assert code == 0, out
        doc = json.loads(next(tmp_path.glob("*.json")).read_text())
        assert doc["kind"] == kind
        first, last = doc["first"], doc["last"]
        engine = kpi(db, "assessment", "--from", first, "--to", last)["rows"]
        mine = {r["subbranch"]: r for r in doc["tables"]["assessment"]["rows"]}
        for r in engine:
            assert (mine[r["group"]]["rank"], mine[r["group"]]["score"]) == (r["rank"], r["score"])
            assert mine[r["group"]]["uptime"] == r["uptime"]
        vendors = kpi(db, "vendors", "--from", first, "--to", last)["rows"]
        assert [r["vendor"] for r in doc["tables"]["vendors"]["rows"]] == [
            r["group"] for r in vendors
        ]
        assert {"assessment", "subbranches", "vendors", "network", "deposit", "revenue"} <= set(
            doc["tables"]
        )
        assert len(list(tmp_path.glob("*.xlsx"))) == 1


class TestBadInputLeavesNoFile:
    @pytest.mark.parametrize(("args", "message"), [
        (["--date", "2026-13-45"], "--date '2026-13-45': not a date"),
        (["--date", "yesterday"], "not a date"),
        (["--date", "2099-01-01"], "2099-01-01 is in the future"),
        (["--format", "pdf"], "--format 'pdf': unknown format pdf"),
        (["--lang", "fr"], "--lang 'fr': unknown language"),
    ])  # fmt: skip
    def test_a_clear_message_exit_2_and_an_empty_folder(
        self, db: str, tmp_path: Path, args: list[str], message: str
    ) -> None:
        code, out = invoke(db, "bulletin", "daily", *args, "--out", str(tmp_path))
        assert code == 2, out
        assert message in out and "Traceback" not in out
        assert list(tmp_path.iterdir()) == []

    def test_an_output_path_under_a_file_is_refused(self, db: str, tmp_path: Path) -> None:
        (tmp_path / "plain").write_text("")
        code, out = invoke(
            db, "bulletin", "daily", "--date", str(DAY), "--out", str(tmp_path / "plain" / "x")
        )
        assert code == 2, out
        assert "cannot create the folder" in out and "Traceback" not in out
        assert [p.name for p in tmp_path.iterdir()] == ["plain"]

    @pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
    def test_a_folder_that_is_not_writable_is_refused(self, db: str, tmp_path: Path) -> None:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        try:
            code, out = invoke(db, "bulletin", "daily", "--date", str(DAY), "--out", str(folder))
        finally:
            folder.chmod(0o755)
        assert code == 2, out
        assert "the folder is not writable" in out
        assert list(folder.iterdir()) == []
