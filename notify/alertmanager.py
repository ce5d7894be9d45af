"""Alertmanager's webhook payload (version 4) as a message a person reads: zh-CN by
default, every time in the bank's local time (Asia/Shanghai), never UTC.

Pure: :func:`render` takes the decoded JSON and returns the title and body.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from notify.messages import Texts

#: Alertmanager's "no end time yet".
_ZERO = "0001-01-01T00:00:00Z"


def local_time(text: str | None, tz: ZoneInfo) -> str | None:
    """An RFC 3339 time from Alertmanager (UTC, nanoseconds) as ``YYYY-MM-DD HH:MM:SS``
    in ``tz``; None when absent or Alertmanager's zero time."""
    if not text or text.startswith("0001-01-01"):
        return None
    head, _, rest = text.partition(".")
    zone = ""
    if rest:  # drop the fraction (Go writes up to 9 digits; Python parses 6)
        digits = len(rest) - len(rest.lstrip("0123456789"))
        zone = rest[digits:]
    else:
        head, zone = text[:19], text[19:]
    parsed = datetime.fromisoformat(head + (zone.replace("Z", "+00:00") or "+00:00"))
    return parsed.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")


def _where(labels: dict[str, str], t: Texts) -> str:
    parts = []
    for key in ("device", "branch", "subbranch"):
        if labels.get(key):
            parts.append(f"{t(key)} {labels[key]}")
    return "，".join(parts) if t.lang == "zh-CN" else ", ".join(parts)


def render(payload: dict[str, Any], tz: ZoneInfo, t: Texts) -> tuple[str, str]:
    """``(title, body)`` of one Alertmanager notification (one alert group)."""
    status = str(payload.get("status", "firing"))
    alerts = [a for a in payload.get("alerts", []) if isinstance(a, dict)]
    common = payload.get("commonLabels") or {}
    name = common.get("alertname") or (alerts[0]["labels"].get("alertname") if alerts else "")
    where = _where(common, t)
    head = t("resolved") if status == "resolved" else t("firing")
    title = f"[{head}] {name}" + (f" {where}" if where else "")
    if len(alerts) > 1:
        title += (
            f"（{t('alerts', n=len(alerts))}）"
            if t.lang == "zh-CN"
            else f" ({t('alerts', n=len(alerts))})"
        )
    zone = t.local_label(tz.key)
    lines = []
    for a in alerts:
        labels = a.get("labels") or {}
        ann = a.get("annotations") or {}
        sev = labels.get("severity")
        text = ann.get("summary") or labels.get("alertname", "")
        first = f"- **{text}**"
        place = _where({k: v for k, v in labels.items() if common.get(k) != v}, t)
        if place:
            first += f"（{place}）" if t.lang == "zh-CN" else f" ({place})"
        lines.append(first)
        if sev:
            lines.append(f"  {t('severity')}：{t('sev.' + sev)}")
        starts = local_time(a.get("startsAt"), tz)
        if starts:
            lines.append(f"  {t('starts')}：{starts}（{zone}）")
        if a.get("status") == "resolved":
            ends = local_time(a.get("endsAt"), tz)
            if ends:
                lines.append(f"  {t('ends')}：{ends}（{zone}）")
        if ann.get("description"):
            lines.append(f"  {ann['description']}")
    if t.lang != "zh-CN":
        lines = [line.replace("：", ": ").replace("（", " (").replace("）", ")") for line in lines]
    return title, "\n".join(lines)
