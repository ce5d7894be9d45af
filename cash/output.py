"""The plan and the forecast as a person reads them: a terminal table, an XLSX workbook
(one sheet per sub-branch and a summary), JSON. zh-CN by default, English available;
times are the bank's local time."""

from __future__ import annotations

import io
import json
import unicodedata
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import xlsxwriter

from atmfleet.errors import UsageError
from cash.forecast import Forecast
from cash.plan import Plan
from exporters.bulletin.output import write_atomic

LANGUAGES = ("zh-CN", "en")
NO_DATA = "–"

_TEXT: dict[str, dict[str, str]] = {
    "zh-CN": {
        "plan.title": "加钞计划 {date}", "made_at": "生成时间", "scope": "范围",
        "subbranch": "二级分行", "branch": "网点", "device": "设备号", "type": "类型",
        "by": "执行", "by.branch": "网点", "by.cit": "押运公司", "action": "任务",
        "action.replenish": "加钞", "action.extra_visit": "加急", "round": "本轮时间",
        "next_round": "下轮时间", "cash_out": "预计缺钞", "earliest": "最早缺钞",
        "deposit_full": "预计钞箱满", "empty_deposit": "清机", "yes": "是", "no": "否",
        "amounts": "加钞券别(张)", "total": "合计", "value": "金额(元)", "notes": "张数",
        "denomination": "券别(元)", "no_forecast": "无预测设备(无数据)", "reason": "原因",
        "reason.no_history": "历史数据不足", "reason.no_cash_units": "未上报钞箱",
        "summary": "汇总", "devices": "设备数", "none": "本日无需加钞的设备",
        "forecast.title": "缺钞预测", "unit": "钞箱", "count": "张数",
        "latest": "最晚缺钞", "beyond": "预测期外",
    },
    "en": {
        "plan.title": "Replenishment plan {date}", "made_at": "made at", "scope": "scope",
        "subbranch": "sub-branch", "branch": "branch", "device": "device", "type": "type",
        "by": "by", "by.branch": "branch", "by.cit": "CIT company", "action": "task",
        "action.replenish": "replenish", "action.extra_visit": "extra visit",
        "round": "round", "next_round": "next round", "cash_out": "cash-out expected",
        "earliest": "earliest cash-out", "deposit_full": "deposit full expected",
        "empty_deposit": "empty deposit", "yes": "yes", "no": "no",
        "amounts": "notes by denomination", "total": "total", "value": "value (CNY)",
        "notes": "notes", "denomination": "denomination (CNY)",
        "no_forecast": "devices without a forecast (no data)", "reason": "reason",
        "reason.no_history": "not enough history", "reason.no_cash_units": "no cash units reported",
        "summary": "summary", "devices": "devices", "none": "no device needs cash on this day",
        "forecast.title": "Cash-out forecast", "unit": "unit", "count": "notes",
        "latest": "latest cash-out", "beyond": "beyond the horizon",
    },
}  # fmt: skip


def check_lang(lang: str) -> str:
    if lang not in LANGUAGES:
        raise UsageError(f"--lang {lang!r}: allowed: {', '.join(LANGUAGES)}")
    return lang


def t(lang: str, key: str, **kw: Any) -> str:
    return _TEXT[lang][key].format(**kw)


def when(at: datetime | None) -> str:
    return NO_DATA if at is None else at.strftime("%Y-%m-%d %H:%M")


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def table(heads: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max([_width(h)] + [_width(r[i]) for r in rows]) for i, h in enumerate(heads)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v + " " * (w - _width(v)) for v, w in zip(values, widths, strict=True))

    return [line(heads).rstrip(), *(line(r).rstrip() for r in rows)]


def _amounts(amounts: Sequence[Any]) -> str:
    return " ".join(f"¥{a.denomination}×{a.notes}" for a in amounts) or NO_DATA


def plan_rows(plan: Plan, lang: str) -> tuple[list[str], list[list[str]]]:
    heads = [t(lang, k) for k in ("subbranch", "branch", "device", "type", "by", "action",
                                   "round", "next_round", "earliest", "cash_out",
                                   "empty_deposit", "amounts", "value")]  # fmt: skip
    rows = []
    for s in plan.subbranches:
        for d in s.devices:
            rows.append([
                f"{s.name}", d.branch_name, d.device_id, d.type, t(lang, f"by.{d.by}"),
                t(lang, f"action.{d.action}"), when(d.round_at), when(d.next_round_at),
                when(d.cash_out_earliest), when(d.cash_out_at),
                t(lang, "yes" if d.empty_deposit else "no"), _amounts(d.amounts),
                f"{sum(a.value for a in d.amounts):,}",
            ])  # fmt: skip
    return heads, rows


def render_plan(plan: Plan, lang: str = "zh-CN") -> str:
    lines = [t(lang, "plan.title", date=plan.date.isoformat()),
             f"  {t(lang, 'made_at')}: {when(plan.made_at)}  {t(lang, 'scope')}: {plan.scope}"]  # fmt: skip
    heads, rows = plan_rows(plan, lang)
    if rows:
        lines += table(heads, rows)
    else:
        lines.append(t(lang, "none"))
    for s in plan.subbranches:
        totals = " ".join(f"¥{k}×{v} (¥{k * v:,})" for k, v in s.totals().items()) or NO_DATA
        lines.append(f"{t(lang, 'total')} {s.name}: {totals}")
    if plan.no_forecast:
        lines.append(f"{t(lang, 'no_forecast')}: " + ", ".join(
            f"{d} ({t(lang, 'reason.' + r)})" for d, r in plan.no_forecast))  # fmt: skip
    return "\n".join(lines)


def plan_json(plan: Plan) -> str:
    return json.dumps(plan.as_json(), ensure_ascii=False, indent=1)


def plan_xlsx(plan: Plan, lang: str = "zh-CN") -> bytes:
    buf = io.BytesIO()
    wb = xlsxwriter.Workbook(buf, {"in_memory": True})
    bold = wb.add_format({"bold": True})
    money = wb.add_format({"num_format": "#,##0"})
    summary = wb.add_worksheet(t(lang, "summary"))
    summary.write_row(0, 0, [t(lang, "plan.title", date=plan.date.isoformat())], bold)
    summary.write_row(1, 0, [t(lang, "made_at"), when(plan.made_at), t(lang, "scope"), plan.scope])
    summary.write_row(3, 0, [t(lang, "subbranch"), t(lang, "devices"), t(lang, "denomination"),
                             t(lang, "notes"), t(lang, "value")], bold)  # fmt: skip
    row = 4
    for s in plan.subbranches:
        totals = s.totals() or {0: 0}
        for denom, notes in totals.items():
            summary.write_row(row, 0, [s.name, len(s.devices)])
            summary.write_number(row, 2, denom)
            summary.write_number(row, 3, notes)
            summary.write_number(row, 4, denom * notes, money)
            row += 1
    heads, rows = plan_rows(plan, lang)
    for s in plan.subbranches:
        ws = wb.add_worksheet(f"{s.name}"[:31])
        ws.write_row(0, 0, heads, bold)
        mine = [r for r in rows if r[0] == s.name]
        for i, r in enumerate(mine, start=1):
            ws.write_row(i, 0, r)
        ws.set_column(0, len(heads) - 1, 16)
    if plan.no_forecast:
        ws = wb.add_worksheet(t(lang, "no_forecast")[:31])
        ws.write_row(0, 0, [t(lang, "device"), t(lang, "reason")], bold)
        for i, (dev_id, why) in enumerate(plan.no_forecast, start=1):
            ws.write_row(i, 0, [dev_id, t(lang, "reason." + why)])
    wb.close()
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    if not path.parent.exists():
        raise UsageError(f"{path}: the folder {path.parent} does not exist")
    return write_atomic(path, data)


def forecast_rows(fc: Forecast, lang: str, limit: int | None = None) -> list[str]:
    heads = [t(lang, k) for k in ("device", "unit", "denomination", "count", "earliest",
                                   "cash_out", "latest")]  # fmt: skip
    rows: list[tuple[datetime | None, list[str]]] = []
    for d in fc.devices:
        if d.reason is not None:
            rows.append((None, [d.device_id, NO_DATA, NO_DATA, NO_DATA, NO_DATA,
                                t(lang, "reason." + d.reason), NO_DATA]))  # fmt: skip
            continue
        for u in d.units:
            label = t(lang, "beyond") if u.beyond_horizon else when(u.at)
            kind = "" if u.kind == "cash_out" else f" ({t(lang, 'deposit_full')})"
            rows.append((u.at, [d.device_id, u.unit_id + kind, str(u.denomination), str(u.count),
                                when(u.earliest), label, when(u.latest)]))  # fmt: skip
    rows.sort(key=lambda r: (r[0] is None, r[0] or datetime.max.replace(tzinfo=fc.tz), r[1][0]))
    shown = [r for _, r in rows][: limit or None]
    return [t(lang, "forecast.title"), *table(heads, shown)]


def forecast_json(fc: Forecast) -> str:
    def iso(x: datetime | None) -> str | None:
        return None if x is None else x.isoformat()

    return json.dumps(
        {
            "now": datetime.fromtimestamp(fc.now / 1000, fc.tz).isoformat(),
            "horizon_hours": fc.horizon_hours,
            "devices": [
                {
                    "device_id": d.device_id,
                    "reason": d.reason,
                    "cash_out_at": iso(first.at) if (first := d.cash_out()) else None,
                    "units": [
                        {
                            "unit_id": u.unit_id,
                            "kind": u.kind,
                            "denomination": u.denomination,
                            "count": u.count,
                            "at": iso(u.at),
                            "earliest": iso(u.earliest),
                            "latest": iso(u.latest),
                            "beyond_horizon": u.beyond_horizon,
                        }
                        for u in d.units
                    ],
                }
                for d in fc.devices
            ],
        },
        ensure_ascii=False,
        indent=1,
    )
