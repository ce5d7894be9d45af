"""``atmfleet bulletin daily|monthly|quarterly``: write the bulletins (通报) to files.

Reads the store through the KPI feed (ATMFLEET_DATABASE_URL) with the rules file
(ATMFLEET_RULES_FILE); writes into ``--out`` (default ATMFLEET_OUTPUT_DIR). Every file is
written atomically; bad input stops the command before anything is read or written.
"""

from __future__ import annotations

import contextlib
import gc
import re
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path

import click

from atmfleet import cli_types
from atmfleet.errors import UsageError
from atmfleet.settings import load_settings
from atmfleet.store.connect import connect
from exporters.bulletin import build
from exporters.bulletin.messages import LANGUAGES, Messages
from exporters.bulletin.model import Bulletin
from exporters.bulletin.output import check_folder, write_atomic
from exporters.bulletin.render import EXTENSIONS, FORMATS, to_csv_zip, to_html, to_json, to_xlsx
from rules.config import load_rules
from rules.feed import Feed

_LANG_ALIASES = {"zh": "zh-CN", "zh-cn": "zh-CN", "cn": "zh-CN", "en": "en", "en-us": "en"}


def parse_formats(text: str) -> list[str]:
    """``xlsx,html`` or ``all``; refuses an unknown name."""
    names = [f.strip().lower() for f in text.split(",") if f.strip()]
    if names == ["all"]:
        return list(FORMATS)
    bad = [f for f in names if f not in FORMATS]
    if bad or not names:
        raise UsageError(
            f"--format {text!r}: unknown format {', '.join(bad) or '(none)'}; "
            f"allowed: {', '.join(FORMATS)} or all (comma-separated)"
        )
    return list(dict.fromkeys(names))


def parse_lang(text: str) -> str:
    lang = _LANG_ALIASES.get(text.strip().lower())
    if lang is None:
        raise UsageError(f"--lang {text!r}: unknown language; allowed: {', '.join(LANGUAGES)}")
    return lang


def parse_day(text: str) -> date:
    return cli_types.parse_day(text, "--date")


def parse_month(text: str) -> tuple[date, date]:
    m = re.fullmatch(r"(\d{4})-(\d{1,2})", text.strip())
    if not m or not 1 <= int(m[2]) <= 12:
        raise UsageError(f"--month {text!r}: not a month; give YYYY-MM")
    first = date(int(m[1]), int(m[2]), 1)
    return first, _month_end(first)


def parse_quarter(text: str) -> tuple[date, date]:
    m = re.fullmatch(r"(\d{4})-?[Qq]([1-4])", text.strip())
    if not m:
        raise UsageError(f"--quarter {text!r}: not a quarter; give YYYY-Qn, n = 1..4")
    first = date(int(m[1]), 3 * int(m[2]) - 2, 1)
    return first, _month_end(date(first.year, first.month + 2, 1))


def _month_end(first: date) -> date:
    nxt = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return nxt - timedelta(days=1)


def previous_month(today: date) -> tuple[date, date]:
    last = today.replace(day=1) - timedelta(days=1)
    return last.replace(day=1), last


def previous_quarter(today: date) -> tuple[date, date]:
    q = (today.month - 1) // 3
    year, q = (today.year - 1, 4) if q == 0 else (today.year, q)
    return parse_quarter(f"{year}-Q{q}")


def file_name(b: Bulletin, fmt: str) -> str:
    period = {
        "daily": b.first.isoformat(),
        "monthly": b.first.strftime("%Y-%m"),
        "quarterly": f"{b.first.year}-Q{(b.first.month - 1) // 3 + 1}",
    }[b.kind]
    return f"bulletin-{b.kind}-{period}.{b.lang}.{EXTENSIONS[fmt]}"


def render(b: Bulletin, fmt: str, m: Messages) -> bytes:
    labels = {k: m(k) for k in ("summary", "period", "generated", "nothing")}
    labels.update(m.prefixed("r."))
    if fmt == "xlsx":
        return to_xlsx(b, m("summary"), m("period"), labels)
    if fmt == "csv":
        return to_csv_zip(b)
    if fmt == "html":
        return to_html(b, labels)
    return to_json(b)


def write(b: Bulletin, formats: list[str], folder: Path, m: Messages) -> list[Path]:
    """Render every format first, then write each file atomically."""
    rendered = [(fmt, render(b, fmt, m)) for fmt in formats]
    return [write_atomic(folder / file_name(b, fmt), data) for fmt, data in rendered]


def compute(
    kind: str, lang: str, period: Callable[[date], tuple[date, date]]
) -> tuple[Bulletin, Messages]:
    """The bulletin of ``kind`` for the period ``period(today)`` picks (a period still in
    progress: up to yesterday), read from the store with the rules file; the same figures
    the files and ``atmfleet kpi`` show (also used by ``atmfleet notify bulletin``)."""
    m = Messages(parse_lang(lang))
    settings = load_settings()
    rules = load_rules(settings.rules_file)
    url = settings.require_database_url()
    with connect(url, application_name="atmfleet-bulletin") as conn:
        # A second connection for the work that overlaps (rules.feed.Feed, ``spare``).
        feed = Feed(conn, rules, spare=lambda: connect(url, application_name="atmfleet-bulletin"))
        try:
            b, m = _compute(feed, kind, period, m)
        finally:
            feed.close()
    return b, m


def _compute(
    feed: Feed, kind: str, period: Callable[[date], tuple[date, date]], m: Messages
) -> tuple[Bulletin, Messages]:
    """:func:`compute` on ``feed``."""
    rules = feed.rules
    horizon = feed.now_ms()
    today = build.local_today(horizon, rules)
    first, last = period(today)
    if kind != "daily" and last >= today:
        last = today - timedelta(days=1)  # a period in progress: up to yesterday
        if last < first:
            raise UsageError(
                f"the {kind} period from {first} has no complete day yet "
                f"(today is {today} in the rules' time zone {rules.tz})"
            )
    if last > today:
        raise UsageError(
            f"{last} is in the future (today is {today} in the rules' time zone {rules.tz})"
        )
    inventory = feed.inventory()
    generated = build.now_text(horizon, rules)
    if kind == "daily":
        b = build.daily_bulletin(feed, inventory, last, horizon, m, generated)
    else:
        b = build.assessment(feed, inventory, first, last, horizon, kind, m, generated)
    return b, m


def _run(
    kind: str,
    fmt: str,
    lang: str,
    out: Path | None,
    period: Callable[[date], tuple[date, date]],
) -> None:
    formats = parse_formats(fmt)
    parse_lang(lang)
    settings = load_settings()
    folder = check_folder(out if out is not None else settings.output_dir)
    with without_cycle_collector():
        b, m = compute(kind, lang, period)
        paths = write(b, formats, folder, m)
    for path in paths:
        click.echo(str(path))


@contextlib.contextmanager
def without_cycle_collector() -> Iterator[None]:
    """Python's cycle collector paused for one bulletin: a fleet's figures are millions of
    small objects (no cycles among them, freed by their reference counts), and each pass
    of the collector walks them all (at 100,000 devices it took more time than writing
    the workbook). Collected once at the end."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
        gc.collect()


_FORMAT = click.option(
    "--format", "fmt", default="xlsx", show_default=True,
    help=f"Comma-separated: {', '.join(FORMATS)}, or all.",
)  # fmt: skip
_LANG = click.option(
    "--lang", default="zh-CN", show_default=True, help="zh-CN (Chinese) or en (English)."
)
_OUT = click.option(
    "--out", type=click.Path(path_type=Path, file_okay=False), default=None,
    help="Folder to write into (default: ATMFLEET_OUTPUT_DIR).",
)  # fmt: skip


@click.group("bulletin")
def bulletin() -> None:
    """The bulletins (通报): daily uptime and transactions, monthly and quarterly assessments."""


@bulletin.command("daily")
@click.option("--date", "on", default=None, help="Local day YYYY-MM-DD (default: yesterday).")
@_FORMAT
@_LANG
@_OUT
def daily_cmd(on: str | None, fmt: str, lang: str, out: Path | None) -> None:
    """自助设备开机率和帐务性交易量日通报."""
    day = parse_day(on) if on is not None else None

    def period(today: date) -> tuple[date, date]:
        d = day if day is not None else today - timedelta(days=1)
        return d, d

    _run("daily", fmt, lang, out, period)


@bulletin.command("monthly")
@click.option("--month", default=None, help="YYYY-MM (default: last month).")
@_FORMAT
@_LANG
@_OUT
def monthly_cmd(month: str | None, fmt: str, lang: str, out: Path | None) -> None:
    """自助业务经营管理考核评价月通报: scores, ranks, vendors, network, revenue."""
    chosen = parse_month(month) if month is not None else None
    _run("monthly", fmt, lang, out, lambda today: chosen or previous_month(today))


@bulletin.command("quarterly")
@click.option("--quarter", default=None, help="YYYY-Qn (default: last quarter).")
@_FORMAT
@_LANG
@_OUT
def quarterly_cmd(quarter: str | None, fmt: str, lang: str, out: Path | None) -> None:
    """自助业务经营管理考核评价季通报."""
    chosen = parse_quarter(quarter) if quarter is not None else None
    _run("quarterly", fmt, lang, out, lambda today: chosen or previous_quarter(today))
