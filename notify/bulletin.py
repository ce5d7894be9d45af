"""Scheduled delivery of the bulletins (通报): ``atmfleet notify bulletin daily|monthly|quarterly``.

The figures are the bulletin's own (:func:`exporters.bulletin_cli.compute`, the same
call ``atmfleet bulletin`` and so ``atmfleet kpi`` make), never recomputed here. The
e-mail carries the XLSX as an attachment and the HTML bulletin as its body; the chats get
a summary (the bulletin's summary rows). Monthly and quarterly bulletins go on the first
working day of the month (of the quarter): the notify calendar (weekends, ``holidays``,
``workdays`` for 调休). Each delivery has a dedup key (kind, period, target), so a timer that
runs again sends only what has not gone yet.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import psycopg

from atmfleet.store.audit import Actor, record, require_role
from exporters.bulletin.model import Bulletin
from exporters.bulletin.render import display
from exporters.bulletin_cli import compute, previous_month, previous_quarter, render
from notify.channels import Attachment
from notify.config import Calendar, NotifyConfig
from notify.messages import Texts
from notify.outbox import UNROUTED, count, enqueue, resolve

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
QUARTER_MONTHS = (1, 4, 7, 10)


def first_working_day(year: int, month: int, calendar: Calendar) -> date:
    day = date(year, month, 1)
    while not calendar.is_working_day(day):
        day += timedelta(days=1)
    return day


def due(kind: str, today: date, calendar: Calendar) -> tuple[bool, date]:
    """Whether ``kind`` goes out on ``today``, and the day it goes out this month."""
    if kind == "daily":
        return True, today
    first = first_working_day(today.year, today.month, calendar)
    if kind == "quarterly" and today.month not in QUARTER_MONTHS:
        return False, first
    return today == first, first


def period_of(kind: str, today: date, day: date | None) -> Callable[[date], tuple[date, date]]:
    """The period a run on ``today`` sends: yesterday (or ``day``), last month, last quarter."""
    if kind == "daily":
        d = day if day is not None else today - timedelta(days=1)
        return lambda _today: (d, d)
    if kind == "monthly":
        return lambda _today: previous_month(today)
    return lambda _today: previous_quarter(today)


def period_key(b: Bulletin) -> str:
    if b.kind == "daily":
        return b.first.isoformat()
    if b.kind == "monthly":
        return b.first.strftime("%Y-%m")
    return f"{b.first.year}-Q{(b.first.month - 1) // 3 + 1}"


def summary_text(b: Bulletin, t: Texts) -> str:
    lines = [f"- {label}：{display(value, kind)}" for _key, label, value, kind in b.summary]
    if t.lang != "zh-CN":
        lines = [line.replace("：", ": ") for line in lines]
    lines.append("")
    lines.append(t("bulletin.attached"))
    return "\n".join(lines)


@dataclass
class Enqueued:
    ids: list[int]
    skipped: int  # already enqueued by an earlier run (dedup)
    unrouted: list[str]


def enqueue_bulletin(
    conn: psycopg.Connection[Any],
    config: NotifyConfig,
    b: Bulletin,
    xlsx: bytes,
    html: str,
    actor: Actor,
) -> Enqueued:
    """Enqueue one bulletin for its e-mail and summary recipients, with the audit row, in
    one transaction. The actor must be an operator with fleet scope."""
    delivery = getattr(config.bulletins, b.kind)
    t = Texts(delivery.lang)
    period = period_key(b)
    ids: list[int] = []
    skipped = 0
    unrouted: list[str] = []
    name = f"bulletin-{b.kind}-{period}.{b.lang}.xlsx"
    with conn.transaction():
        user = require_role(conn, actor, "operator")
        if user.scope_kind != "fleet":
            from atmfleet.errors import Forbidden

            raise Forbidden(
                f"user {actor.name!r} has {user.scope_kind} scope; sending the fleet's bulletin "
                "needs fleet scope"
            )
        parts = (
            ("email", delivery.email, t("bulletin.mail", title=b.title, period=b.period)),
            ("summary", delivery.summary, summary_text(b, t)),
        )
        for part, keys, body in parts:
            for key in keys:
                targets = resolve(config, key)
                if not targets:
                    count(conn, UNROUTED, "failed")
                    unrouted.append(key)
                for target in targets:
                    got = enqueue(
                        conn, config, target, source="bulletin",
                        title=t("bulletin.summary", title=b.title, period=b.period),
                        body=body, recipient=key,
                        html=html if part == "email" else None,
                        attachments=[Attachment(name, XLSX, xlsx)] if part == "email" else [],
                        dedup_key=f"bulletin:{b.kind}:{period}:{part}:{key}:{target.group_key()}",
                    )  # fmt: skip
                    if got is None:
                        skipped += 1
                    else:
                        ids.append(got)
        record(
            conn, actor, "notify.bulletin.send", "bulletin", f"{b.kind}:{period}",
            after={"rows": len(ids), "skipped": skipped, "unrouted": unrouted},
        )  # fmt: skip
    return Enqueued(ids, skipped, unrouted)


def build(kind: str, lang: str, today: date, day: date | None) -> tuple[Bulletin, bytes, str]:
    """The bulletin and its XLSX and HTML renderings."""
    b, m = compute(kind, lang, period_of(kind, today, day))
    return b, render(b, "xlsx", m), render(b, "html", m).decode("utf-8")


def wait_rows(
    conn: psycopg.Connection[Any],
    ids: list[int],
    step: Callable[[], object],
    deadline_s: float,
) -> dict[str, list[tuple[int, str, str | None]]]:
    """Run ``step`` (a dispatcher pass) until the rows ``ids`` are sent or given up, or
    ``deadline_s`` passes; ``{status: [(id, channel, last_error)]}``."""
    end = time.monotonic() + deadline_s
    while True:
        step()
        rows = conn.execute(
            "SELECT id, channel, status, last_error, extract(epoch FROM next_attempt_at - now())"
            " FROM notify_outbox WHERE id = ANY(%s) ORDER BY id",
            (ids,),
        ).fetchall()
        pending = [r for r in rows if r[2] == "pending"]
        if not pending or time.monotonic() >= end:
            out: dict[str, list[tuple[int, str, str | None]]] = {}
            for r in rows:
                out.setdefault(r[2], []).append((r[0], r[1], r[3]))
            return out
        wait = min(max(0.05, float(min(r[4] for r in pending))), end - time.monotonic())
        time.sleep(max(0.0, wait))
