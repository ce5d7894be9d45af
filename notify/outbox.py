"""The durable outbox (migration 0013) and the dispatcher that empties it.

Every source (the Alertmanager receiver, the incident-event tail, the bulletins) only
*enqueues* rows, in the same transaction as whatever it acknowledges (the webhook's audit
row, the cursor). :func:`dispatch` then, in one pass:

1. claims the rows that are due (``FOR UPDATE SKIP LOCKED``, leased for ``LEASE_S`` so a
   crashed worker's rows come back), grouped by ``group_key`` (one channel and target);
2. defers a group whose target got a message less than ``group_interval_s`` ago, and every
   group of a channel that reached its rate limit, to when it may go: deferred rows are
   merged with whatever arrives meanwhile, so a burst becomes one message per recipient
   per window and nothing is dropped;
3. sends each remaining group as ONE message; a success marks its rows sent and counts
   one message; a failure counts a retry and sets ``next_attempt_at`` by exponential
   backoff, or after ``max_attempts`` gives the rows up (status ``failed``), logs an error
   and counts them failed. The counters are in ``notify_counters`` (metrics and
   ``atmfleet notify status``).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from atmfleet.errors import AtmfleetError
from notify.channels import LIMITS, Attachment, DeliveryError, Message, Sender, cut
from notify.config import Channel, NotifyConfig, Retry, Target
from notify.messages import Texts

log = logging.getLogger(__name__)

#: Seconds a claimed row is held by one worker before another may take it.
LEASE_S = 300.0
#: Rows claimed in one pass, at most.
BATCH = 1000
#: Counter row for recipient keys that no configuration maps to a channel.
UNROUTED = "(unrouted)"


@dataclass(frozen=True)
class Resolved:
    """A recipient key reached through one channel."""

    channel: str
    addresses: tuple[str, ...] = ()
    mentions: tuple[str, ...] = ()

    def group_key(self) -> str:
        return "|".join(
            (self.channel, ",".join(sorted(self.addresses)), ",".join(sorted(self.mentions)))
        )


def backoff_s(retry: Retry, attempts: int) -> float:
    """Seconds before the next try after ``attempts`` failed ones (1, 2, ...)."""
    return float(min(retry.max_s, retry.base_s * retry.factor ** max(0, attempts - 1)))


def resolve(
    config: NotifyConfig,
    key: str,
    contact: Callable[[str, str], tuple[str | None, str | None]] | None = None,
) -> list[Resolved]:
    """The targets of a recipient key or a channel name. A key in ``recipients`` wins;
    else ``maintainer:<id>`` and ``vendor_manager:<vendor>`` use ``contact(role, id) ->
    (email, phone)`` (the maintainers table) and the ``maintainers`` section; else
    ``<role>:*`` in ``recipients`` is a role's fallback. Empty when nothing maps it."""
    if key in config.channels and key not in config.recipients:
        return [Resolved(key)]
    targets: Sequence[Target] | None = config.recipients.get(key)
    if targets is None and ":" in key:
        role, _, ident = key.partition(":")
        if role in ("maintainer", "vendor_manager") and contact is not None and ident:
            email, phone = contact(role, ident)
            found = []
            if email and config.maintainers.email_channel:
                found.append(Resolved(config.maintainers.email_channel, (email,)))
            if phone and config.maintainers.mention_channel:
                found.append(Resolved(config.maintainers.mention_channel, (), (phone,)))
            if found:
                return found
        targets = config.recipients.get(f"{role}:*")
    if targets is None:
        return []
    return [Resolved(t.channel, t.to, t.mention) for t in targets]


def enqueue(
    conn: psycopg.Connection[Any],
    config: NotifyConfig,
    target: Resolved,
    *,
    source: str,
    title: str,
    body: str,
    recipient: str | None = None,
    html: str | None = None,
    attachments: Sequence[Attachment] = (),
    dedup_key: str | None = None,
) -> int | None:
    """Add one row in the caller's transaction; its id, or None when ``dedup_key`` was
    enqueued before. A row with attachments or HTML is never merged with another, so it
    does not wait ``group_wait_s`` either."""
    channel = config.channels[target.channel]
    group = target.group_key()
    if attachments or html is not None:
        group += "|" + (dedup_key or title)
    row = conn.execute(
        "INSERT INTO notify_outbox (source, channel, group_key, addresses, recipient, title,"
        " body, html, attachments, dedup_key, next_attempt_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
        "         now() + make_interval(secs => %s))"
        " ON CONFLICT (dedup_key) DO NOTHING RETURNING id",
        (
            source,
            target.channel,
            group,
            list(target.addresses) + [f"@{m}" for m in target.mentions],
            recipient,
            title,
            body,
            html,
            Jsonb(
                [
                    {
                        "name": a.name,
                        "content_type": a.content_type,
                        "data": base64.b64encode(a.data).decode("ascii"),
                    }
                    for a in attachments
                ]
            ),
            dedup_key,
            0.0 if attachments or html is not None else channel.group_wait_s,
        ),
    ).fetchone()
    return None if row is None else int(row[0])


def count(conn: psycopg.Connection[Any], channel: str, column: str, n: int = 1) -> None:
    assert column in ("sent", "retried", "failed")
    conn.execute(
        f"INSERT INTO notify_counters (channel, {column}) VALUES (%s, %s)"
        f" ON CONFLICT (channel) DO UPDATE SET {column} = notify_counters.{column} + EXCLUDED.{column}",
        (channel, n),
    )


@dataclass
class Row:
    id: int
    channel: str
    group_key: str
    addresses: list[str]
    title: str
    body: str
    html: str | None
    attachments: list[dict[str, str]]
    attempts: int


@dataclass
class PassResult:
    """What one dispatcher pass did (for logs and tests)."""

    sent: int = 0  # messages
    rows_sent: int = 0
    retried: int = 0
    failed: int = 0  # rows given up
    deferred: int = 0  # groups held back by a window or a rate limit
    errors: list[str] = field(default_factory=list)


def merge(rows: Sequence[Row], t: Texts, limit: int | None = None) -> Message:
    """One message for the rows of one group (oldest first). With ``limit`` (the channel's
    content limit in bytes), each row's body is cut to its share, so that every row's
    title still shows however many are merged."""
    addresses = tuple(a for a in rows[0].addresses if not a.startswith("@"))
    mentions = tuple(a[1:] for a in rows[0].addresses if a.startswith("@"))
    attachments = tuple(
        Attachment(a["name"], a["content_type"], base64.b64decode(a["data"]))
        for r in rows
        for a in r.attachments
    )
    if len(rows) == 1:
        r = rows[0]
        return Message(r.title, r.body, r.html, attachments, addresses, mentions)
    title = t("merged", n=len(rows), first=rows[0].title)
    parts = []
    for r in rows:
        body = r.body
        if limit is not None:
            share = limit // len(rows) - len(r.title.encode("utf-8")) - 16
            body = cut(body, max(share, 0), "…") if share > 8 else ""
        parts.append(f"**{r.title}**\n{body}".rstrip())
    body = "\n\n---\n\n".join(parts)
    return Message(title, body, None, attachments, addresses, mentions, {"count": len(rows)})


def _claim(conn: psycopg.Connection[Any]) -> list[Row]:
    with conn.transaction():
        rows = conn.execute(
            "SELECT id, channel, group_key, addresses, title, body, html, attachments, attempts"
            " FROM notify_outbox WHERE status = 'pending' AND next_attempt_at <= now()"
            " ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
            (BATCH,),
        ).fetchall()
        if rows:
            conn.execute(
                "UPDATE notify_outbox SET next_attempt_at = now() + make_interval(secs => %s)"
                " WHERE id = ANY(%s)",
                (LEASE_S, [r[0] for r in rows]),
            )
    return [Row(*r) for r in rows]


def _release(conn: psycopg.Connection[Any], ids: list[int], at: datetime) -> None:
    conn.execute("UPDATE notify_outbox SET next_attempt_at = %s WHERE id = ANY(%s)", (at, ids))


def _window_start(
    conn: psycopg.Connection[Any], channel: Channel, name: str, group_key: str, now: datetime
) -> datetime | None:
    """When a group may next be sent, or None when it may go now."""
    wait: list[datetime] = []
    if channel.group_interval_s > 0:
        row = conn.execute(
            "SELECT max(at) FROM notify_deliveries WHERE group_key = %s AND at > %s",
            (group_key, now - timedelta(seconds=channel.group_interval_s)),
        ).fetchone()
        if row and row[0] is not None:
            wait.append(row[0] + timedelta(seconds=channel.group_interval_s))
    if channel.rate_limit is not None:
        window = timedelta(seconds=channel.rate_limit.window_s)
        times = conn.execute(
            "SELECT at FROM notify_deliveries WHERE channel = %s AND at > %s ORDER BY at DESC"
            " LIMIT %s",
            (name, now - window, channel.rate_limit.messages),
        ).fetchall()
        if len(times) >= channel.rate_limit.messages:
            wait.append(times[-1][0] + window)
    return max(wait) if wait else None


def dispatch(
    conn: psycopg.Connection[Any],
    config: NotifyConfig,
    senders: Mapping[str, Sender],
) -> PassResult:
    """One pass over the due rows (``conn`` in autocommit mode)."""
    result = PassResult()
    t = Texts(config.lang)
    rows = _claim(conn)
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault(r.group_key, []).append(r)
    for key, group in groups.items():
        name = group[0].channel
        ids = [r.id for r in group]
        channel = config.channels.get(name)
        sender = senders.get(name)
        if channel is None or sender is None:
            error = f"{name}: channel no longer configured (or could not be built)"
            _fail(conn, config.retry, name, group, error, result)
            continue
        now_row = conn.execute("SELECT now()").fetchone()
        assert now_row is not None
        now: datetime = now_row[0]
        until = _window_start(conn, channel, name, key, now)
        if until is not None:
            _release(conn, ids, until)
            result.deferred += 1
            log.info("%s: %d message(s) held until %s (window/rate limit)", name, len(ids), until)
            continue
        try:
            sender.send(merge(group, t, LIMITS.get(sender.kind)))
        except (DeliveryError, AtmfleetError) as exc:
            _fail(conn, config.retry, name, group, str(exc), result)
            continue
        except Exception as exc:  # a bug in a channel must not stop the others
            log.exception("%s: unexpected error while sending", name)
            _fail(conn, config.retry, name, group, f"{type(exc).__name__}", result)
            continue
        with conn.transaction():
            d = conn.execute(
                "INSERT INTO notify_deliveries (channel, group_key, rows) VALUES (%s, %s, %s)"
                " RETURNING id",
                (name, key, len(group)),
            ).fetchone()
            assert d is not None
            conn.execute(
                "UPDATE notify_outbox SET status = 'sent', sent_at = now(), attempts = attempts + 1,"
                " last_attempt_at = now(), delivery_id = %s, attachments = '[]'"  # sent: not kept
                " WHERE id = ANY(%s)",
                (d[0], ids),
            )
            count(conn, name, "sent")
        result.sent += 1
        result.rows_sent += len(group)
    return result


def _fail(
    conn: psycopg.Connection[Any],
    retry: Retry,
    name: str,
    group: Sequence[Row],
    error: str,
    result: PassResult,
) -> None:
    result.errors.append(error)
    attempts = max(r.attempts for r in group) + 1
    with conn.transaction():
        if attempts >= retry.max_attempts:
            conn.execute(
                "UPDATE notify_outbox SET status = 'failed', attempts = attempts + 1,"
                " last_attempt_at = now(), last_error = %s WHERE id = ANY(%s)",
                (error, [r.id for r in group]),
            )
            count(conn, name, "failed", len(group))
            result.failed += len(group)
            log.error(
                "%s: gave up %d message(s) after %d attempts: %s (ids %s)",
                name, len(group), attempts, error, ",".join(str(r.id) for r in group),
            )  # fmt: skip
        else:
            wait = backoff_s(retry, attempts)
            conn.execute(
                "UPDATE notify_outbox SET attempts = attempts + 1, last_attempt_at = now(),"
                " last_error = %s, next_attempt_at = now() + make_interval(secs => %s)"
                " WHERE id = ANY(%s)",
                (error, wait, [r.id for r in group]),
            )
            count(conn, name, "retried")
            result.retried += 1
            log.warning(
                "%s: attempt %d of %d failed, retrying in %.0f s: %s",
                name, attempts, retry.max_attempts, wait, error,
            )  # fmt: skip


def prune(conn: psycopg.Connection[Any], days: int) -> tuple[int, int]:
    """Delete sent rows and delivery records older than ``days`` (the counters stay);
    ``(outbox rows, deliveries)`` deleted. Rows given up are kept until retried."""
    outbox = conn.execute(
        "DELETE FROM notify_outbox WHERE status = 'sent' AND sent_at < now() - make_interval(days => %s)",
        (days,),
    ).rowcount
    deliveries = conn.execute(
        "DELETE FROM notify_deliveries WHERE at < now() - make_interval(days => %s)", (days,)
    ).rowcount
    return outbox, deliveries


def build_senders(config: NotifyConfig) -> tuple[dict[str, Sender], dict[str, str]]:
    """The senders of every channel, and the channels that could not be built (a missing
    secret: the error names the field) — their rows fail and are reported, never lost."""
    from notify.channels import build_sender

    senders: dict[str, Sender] = {}
    broken: dict[str, str] = {}
    for name, channel in config.channels.items():
        try:
            senders[name] = build_sender(name, channel)
        except AtmfleetError as exc:
            broken[name] = str(exc)
            log.error("channel %s cannot be used: %s", name, exc)
    return senders, broken
