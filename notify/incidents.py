"""Incident events (``incident_events``, written by the incident engine) -> the outbox.

The notifier tails the table by id with its own durable cursor (``notify_cursors`` row
``incident_events``): one transaction reads the next events, enqueues one row per
recipient target and moves the cursor, so an event is notified once even across restarts.
Each event's ``recipients`` are resolved recipient keys ``<role>:<id>``; ``maintainer:<id>``
is looked up in the ``maintainers`` table (e-mail, phone). A key that nothing maps is
logged and counted (``(unrouted)`` in ``atmfleet notify status``), never silently dropped.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from atmfleet.store.audit import SECRET_KEYS
from notify.config import NotifyConfig
from notify.messages import Texts
from notify.outbox import UNROUTED, count, enqueue, resolve

log = logging.getLogger(__name__)

CURSOR = "incident_events"
BATCH = 500
#: Incidents listed in an aggregated event's message, at most.
MEMBERS_SHOWN = 30


def _exists(conn: psycopg.Connection[Any], table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    return bool(row and row[0])


def _local(value: object, tz: ZoneInfo) -> str | None:
    """A stored time (datetime or ISO text) as local ``YYYY-MM-DD HH:MM:SS``."""
    when: datetime
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            return value
    elif isinstance(value, datetime):
        when = value
    else:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")


def _item_line(item: dict[str, Any], tz: ZoneInfo, t: Texts, zone: str) -> str:
    """One incident of an aggregated notification (the engine's ``detail.items``)."""
    parts = [f"#{item.get('incident_id')}"]
    parts += [str(item[k]) for k in ("subbranch_id", "branch_id", "device_id") if item.get(k)]
    line = "- " + " ".join(parts)
    extra = []
    if item.get("class"):
        extra.append(f"{t('class')}：{t('cls.' + str(item['class']))}")
    if item.get("vendor"):
        extra.append(f"{t('vendor')}：{item['vendor']}")
    if started := _local(item.get("started_at"), tz):
        extra.append(f"{t('starts')}：{started}")
    if item.get("deadline"):
        due = _local(item.get("due_at"), tz)
        level = f" L{item['level']}" if item.get("level") else ""
        extra.append(f"{t('dl.' + str(item['deadline']))}{level}：{due or '–'}")
    if extra:
        line += "（" + "，".join(extra) + f"，{zone}）"
    return line


def render(event: dict[str, Any], tz: ZoneInfo, t: Texts) -> tuple[str, str]:
    """``(title, body)`` of one incident event, times in ``tz``. An engine notification
    (``detail.items``: one entry per incident, all for this recipient) lists each
    incident, at most ``MEMBERS_SHOWN``."""
    kind = str(event["kind"])
    label = t(f"ev.{kind}") if f"ev.{kind}" in _known(t) else t("ev.state")
    zone = t.local_label(tz.key)
    raw = event.get("detail")
    detail: dict[str, Any] = raw if isinstance(raw, dict) else {}
    items = detail.get("items") if isinstance(detail.get("items"), list) else None
    if items is None and event.get("members"):
        items = [{"incident_id": m["id"], **m} for m in event["members"]]
    ids = event.get("incident_ids") or []
    if items is not None and (len(items) > 1 or event.get("incident_id") is None):
        title = f"[{label}] {t('incidents', n=max(len(ids), len(items)))}"
    else:
        one = items[0] if items else event
        where = " ".join(
            str(one[k]) for k in ("subbranch_id", "branch_id", "device_id") if one.get(k)
        )
        ident = event.get("incident_id") or one.get("incident_id")
        title = f"[{label}] {t('incident', id=ident)} {where}".rstrip()
    lines = [f"- {t('at')}：{_local(event['at'], tz)}（{zone}）"]
    if event.get("from_state") or event.get("to_state"):
        lines.append(
            f"- {t('state')}：{t('st.' + str(event.get('from_state')))} → "
            f"{t('st.' + str(event.get('to_state')))}"
        )
    if items is not None:
        lines += [_item_line(i, tz, t, zone) for i in items[:MEMBERS_SHOWN] if isinstance(i, dict)]
        if len(items) > MEMBERS_SHOWN:
            lines.append(f"- {t('more', n=len(items) - MEMBERS_SHOWN)}")
    else:
        for key in ("class", "vendor"):
            if event.get(key):
                value = t("cls." + str(event[key])) if key == "class" else event[key]
                lines.append(f"- {t(key)}：{value}")
        for k, v in sorted(detail.items()):
            if k.lower() in SECRET_KEYS or k in ("notification", "count"):
                continue
            lines.append(f"- {k}：{_local(v, tz) if k.endswith('_at') else v}")
    if t.lang != "zh-CN":
        lines = [
            line.replace("：", ": ").replace("（", " (").replace("）", ")").replace("，", ", ")
            for line in lines
        ]
    return title, "\n".join(lines)


def _known(t: Texts) -> set[str]:
    from notify.messages import TEXTS

    return set(TEXTS[t.lang])


def tail(conn: psycopg.Connection[Any], config: NotifyConfig, tz: ZoneInfo) -> int:
    """Enqueue the events after the cursor that name recipients (the engine's notification
    rows; index incident_events_notify); returns how many were read. Does
    nothing (0) while the incident engine's tables are absent."""
    if not _exists(conn, "incident_events"):
        return 0
    t = Texts(config.lang)
    with conn.transaction():
        cur = conn.execute(
            "SELECT position FROM notify_cursors WHERE name = %s FOR UPDATE", (CURSOR,)
        ).fetchone()
        if cur is None:
            conn.execute(
                "INSERT INTO notify_cursors (name, position) VALUES (%s, 0)"
                " ON CONFLICT (name) DO NOTHING",
                (CURSOR,),
            )
            position = 0
        else:
            position = int(cur[0])
        with conn.cursor(row_factory=psycopg.rows.dict_row) as c:
            events = c.execute(
                "SELECT e.id, e.incident_id, e.at, e.kind, e.from_state, e.to_state, e.detail,"
                " e.recipients, e.incident_ids, i.device_id, i.branch_id, i.subbranch_id, i.vendor,"
                " i.class AS class FROM incident_events e"
                " LEFT JOIN incidents i ON i.id = e.incident_id"
                " WHERE e.id > %s AND e.recipients <> '{}' ORDER BY e.id LIMIT %s",
                (position, BATCH),
            ).fetchall()
        has_maintainers = _exists(conn, "maintainers")

        def contact(role: str, ident: str) -> tuple[str | None, str | None]:
            if not has_maintainers:
                return None, None
            if role == "maintainer":
                sql = "SELECT email, phone FROM maintainers WHERE id = %s"
            else:  # vendor_manager: the vendor's manager, its catch-all region first
                sql = (
                    "SELECT manager_email, manager_phone FROM maintainers WHERE vendor = %s"
                    " AND (manager_email IS NOT NULL OR manager_phone IS NOT NULL)"
                    " ORDER BY region <> '*', region LIMIT 1"
                )
            row = conn.execute(sql, (ident,)).fetchone()
            return (row[0], row[1]) if row else (None, None)

        for ev in events:
            if ev.get("incident_id") is None and ev.get("incident_ids"):
                with conn.cursor(row_factory=psycopg.rows.dict_row) as c:
                    ev["members"] = c.execute(
                        "SELECT id, subbranch_id, branch_id, device_id FROM incidents"
                        " WHERE id = ANY(%s) ORDER BY subbranch_id, branch_id, device_id LIMIT %s",
                        (ev["incident_ids"], MEMBERS_SHOWN + 1),
                    ).fetchall()
            title, body = render(ev, tz, t)
            for key in ev.get("recipients") or []:
                targets = resolve(config, key, contact)
                if not targets:
                    log.warning("incident event %s: recipient %s maps to no channel", ev["id"], key)
                    count(conn, UNROUTED, "failed")
                    continue
                for target in targets:
                    enqueue(
                        conn, config, target, source="incident", title=title, body=body,
                        recipient=key,
                        dedup_key=f"incident_event:{ev['id']}:{key}:{target.group_key()}",
                    )  # fmt: skip
        if events:
            conn.execute(
                "UPDATE notify_cursors SET position = %s, updated_at = now() WHERE name = %s",
                (events[-1]["id"], CURSOR),
            )
    return len(events)
