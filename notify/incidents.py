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
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

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


def render(event: dict[str, Any], tz: ZoneInfo, t: Texts) -> tuple[str, str]:
    """``(title, body)`` of one incident event, times in ``tz``."""
    kind = str(event["kind"])
    label = t(f"ev.{kind}") if f"ev.{kind}" in _known(t) else t("ev.state")
    where = " ".join(
        str(event[k]) for k in ("subbranch_id", "branch_id", "device_id") if event.get(k)
    )
    title = f"[{label}] {t('incident', id=event['incident_id'])} {where}".rstrip()
    zone = t.local_label(tz.key)
    lines = [f"- {t('at')}：{event['at'].astimezone(tz):%Y-%m-%d %H:%M:%S}（{zone}）"]
    if event.get("from_state") or event.get("to_state"):
        lines.append(
            f"- {t('state')}：{event.get('from_state') or '–'} → {event.get('to_state') or '–'}"
        )
    for key, field in (("class", "class"), ("vendor", "vendor")):
        if event.get(field):
            lines.append(f"- {t(key)}：{event[field]}")
    detail = event.get("detail") or {}
    if isinstance(detail, dict):
        for k, v in sorted(detail.items()):
            if k.lower() in {"secret", "token", "password", "key"}:
                continue
            lines.append(f"- {k}：{v}")
    if t.lang != "zh-CN":
        lines = [line.replace("：", ": ").replace("（", " (").replace("）", ")") for line in lines]
    return title, "\n".join(lines)


def _known(t: Texts) -> set[str]:
    from notify.messages import TEXTS

    return set(TEXTS[t.lang])


def tail(conn: psycopg.Connection[Any], config: NotifyConfig, tz: ZoneInfo) -> int:
    """Enqueue the events after the cursor; returns how many events were read. Does
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
                " WHERE e.id > %s ORDER BY e.id LIMIT %s",
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
