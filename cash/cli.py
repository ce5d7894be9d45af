"""``atmfleet cash``: cash-out forecasts and the replenishment plan (docs/cash.md).

Both read the store (ATMFLEET_DATABASE_URL) with the rules file; the acting user
(ATMFLEET_USER, else the login name) must be registered (viewer and up) and sees only
the org scope it has. ``plan`` writes one audit row per plan made.
"""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import click

from atmfleet.cli_types import Day
from atmfleet.settings import load_settings
from atmfleet.store.audit import cli_actor, require_role
from atmfleet.store.connect import connect
from atmfleet.store.migrate import require_current
from cash.forecast import forecast
from cash.output import (
    check_lang,
    forecast_json,
    forecast_rows,
    plan_json,
    plan_xlsx,
    render_plan,
    write,
)
from cash.plan import _in_scope, plan_for
from cash.store import load
from rules.config import load_rules
from rules.report import Scope


@click.group("cash")
def cash() -> None:
    """Cash-out forecasts and the replenishment plan 加钞计划."""


@cash.command("forecast")
@click.option("--scope", default="fleet", show_default=True,
              help="fleet, subbranch:ID, branch:ID, device:ID, ...")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="JSON (local times, ISO 8601).")
@click.option(
    "--limit", type=int, default=50, show_default=True, help="Rows in the table (0: all)."
)
@click.option("--lang", default="zh-CN", show_default=True, help="zh-CN or en.")
def forecast_cmd(scope: str, as_json: bool, limit: int, lang: str) -> None:
    """Expected cash-out (and deposit-full) time per device and cash unit, soonest first."""
    check_lang(lang)
    settings = load_settings()
    rules = load_rules(settings.rules_file)
    with connect(settings.require_database_url(), application_name="atmfleet-cash") as conn:
        require_current(conn)
        user = require_role(conn, cli_actor(), "viewer")
        loaded = load(conn, rules)
        chosen = _in_scope(user, Scope.parse(scope), loaded.inventory)
        wanted = {d.id for d in chosen.matching(loaded.inventory)}
        fc = forecast(loaded.devices, loaded.history, loaded.now, rules.cash, rules.tz)
        fc.devices = [d for d in fc.devices if d.device_id in wanted]
    click.echo(forecast_json(fc) if as_json else "\n".join(forecast_rows(fc, lang, limit)))


@cash.command("plan")
@click.option("--date", "on", type=Day(), required=True, help="Local day of the rounds.")
@click.option("--scope", default="fleet", show_default=True,
              help="fleet, subbranch:ID, branch:ID, ... (within the user's own scope).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
@click.option(
    "--xlsx", "xlsx_path", type=click.Path(path_type=Path), help="Write an XLSX workbook."
)
@click.option(
    "--json-file", "json_path", type=click.Path(path_type=Path), help="Write JSON to a file."
)
@click.option("--lang", default="zh-CN", show_default=True, help="zh-CN or en.")
def plan_cmd(on: date | datetime, scope: str, as_json: bool, xlsx_path: Path | None,
             json_path: Path | None, lang: str) -> None:  # fmt: skip
    """加钞计划: per sub-branch, the devices that need cash in the day's rounds, and how much."""
    check_lang(lang)
    day = on.date() if isinstance(on, datetime) else on
    settings = load_settings()
    rules = load_rules(settings.rules_file)
    outputs = [str(p) for p in (xlsx_path, json_path) if p is not None]
    with connect(settings.require_database_url(), application_name="atmfleet-cash") as conn:
        require_current(conn)
        plan = plan_for(conn, rules, day, cli_actor(), scope=scope, outputs=outputs)
        if xlsx_path is not None:
            write(xlsx_path, plan_xlsx(plan, lang))
        if json_path is not None:
            write(json_path, plan_json(plan).encode())
        conn.commit()  # the audit row, once the files are written
    click.echo(plan_json(plan) if as_json else render_plan(plan, lang))
