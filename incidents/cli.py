"""``atmfleet incidents``: the incident work orders (故障工单) from the command line.

Every subcommand acts as ``ATMFLEET_USER`` (else the login name), a user of the ``users``
table: ``list``/``show`` need the viewer role, the actions the operator role, and a user
scoped to a sub-branch or branch sees and acts on that part of the fleet only. Actions go
through :mod:`incidents.service` (the same functions the web console calls) and name the
version the command read, so two people acting at once cannot both win. Times are read
and shown in the rules' time zone (Asia/Shanghai by default); ``--json`` gives ISO 8601
with the local offset. ``run`` is the engine (docs/incidents.md).
"""

from __future__ import annotations

import json
import logging
import re
import signal
import time as clock
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import date, datetime, time, timedelta
from typing import Any

import click
import psycopg

from atmfleet.errors import ConfigError, Forbidden, UsageError
from atmfleet.settings import load_settings
from atmfleet.store.audit import Actor, User, cli_actor, require_role
from atmfleet.store.connect import connect
from atmfleet.store.migrate import require_current
from incidents import service
from incidents.messages import LANGUAGES, words
from incidents.model import Event, Incident, State, events_of, load
from rules.config import Rules, load_rules

log = logging.getLogger(__name__)

_LOCAL = re.compile(r"(?:(\d{4}-\d{2}-\d{2})[ T])?(\d{1,2}):(\d{2})")
_RELATIVE = re.compile(r"\+(\d+(?:\.\d+)?)\s*([hm])")


def parse_time(text: str, rules: Rules, option: str, now: datetime) -> datetime:
    """``HH:MM`` (today, local), ``YYYY-MM-DD HH:MM`` (local), ``+2h`` / ``+90m`` (from
    now) or ISO 8601 with an offset."""
    text = text.strip()
    rel = _RELATIVE.fullmatch(text)
    if rel is not None:
        amount = float(rel.group(1))
        return now + (timedelta(hours=amount) if rel.group(2) == "h" else timedelta(minutes=amount))
    m = _LOCAL.fullmatch(text)
    if m is not None:
        try:
            day = date.fromisoformat(m.group(1)) if m.group(1) else now.astimezone(rules.tz).date()
            return datetime.combine(day, time(int(m.group(2)), int(m.group(3))), tzinfo=rules.tz)
        except ValueError as exc:
            raise UsageError(f"{option} {text!r}: {exc}") from None
    try:
        got = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"{option} {text!r}: give local time as 'HH:MM', 'YYYY-MM-DD HH:MM'"
            f" ({rules.timezone}) or '+2h' / '+30m'"
        ) from None
    return got if got.tzinfo is not None else got.replace(tzinfo=rules.tz)


def local(at: datetime | None, rules: Rules) -> str | None:
    return None if at is None else at.astimezone(rules.tz).isoformat(timespec="seconds")


def short(at: datetime | None, rules: Rules) -> str:
    return "–" if at is None else at.astimezone(rules.tz).strftime("%m-%d %H:%M")


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, width: int) -> str:
    return text + " " * max(0, width - _width(text))


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(_width(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(_pad(c, w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    return "\n".join(lines)


_TIMES = (
    "started_at", "opened_at", "acknowledged_at", "dispatched_at", "eta", "on_site_at",
    "restored_at", "closed_at", "cycle_at", "suspended_at", "last_down_at", "updated_at",
)  # fmt: skip


def incident_json(incident: Incident, rules: Rules, sla: str | None = None) -> dict[str, Any]:
    out = incident.snapshot()
    for key in _TIMES:
        out[key] = local(out[key], rules)
    out["suspended"] = incident.suspended
    out["allowed"] = [a.value for a in incident.allowed()]
    if sla is not None:
        out["sla_status"] = sla
    return out


def event_json(event: Event, rules: Rules) -> dict[str, Any]:
    return {
        "id": event.id, "incident_id": event.incident_id, "incident_ids": event.incident_ids,
        "at": local(event.at, rules), "kind": event.kind, "actor": event.actor,
        "from_state": event.from_state, "to_state": event.to_state, "detail": event.detail,
        "recipients": event.recipients,
    }  # fmt: skip


def _state_text(incident: Incident, w: dict[str, str]) -> str:
    text = w[f"state.{incident.state}"]
    return f"{text}({w['suspended']})" if incident.suspended else text


@contextmanager
def _session() -> Iterator[tuple[psycopg.Connection[Any], Rules, Actor]]:
    settings = load_settings()
    rules = load_rules(settings.rules_file)
    with connect(settings.require_database_url(), application_name="atmfleet-incidents") as conn:
        require_current(conn)
        try:
            yield conn, rules, cli_actor()
        except psycopg.errors.InsufficientPrivilege as exc:
            first = (str(exc).strip().splitlines() or ["permission denied"])[0]
            raise Forbidden(
                f"the database login may not do this ({first}): acting on incidents needs the"
                " store's writer login (docs/security.md)"
            ) from None


def _viewer(conn: psycopg.Connection[Any], actor: Actor) -> User:
    return require_role(conn, actor, "viewer")


def _visible(conn: psycopg.Connection[Any], actor: Actor, incident_id: int) -> Incident:
    user = _viewer(conn, actor)
    incident = load(conn, incident_id)
    if incident is None or not service.covers(user, incident):
        # Out of scope reads the same as absent: a scope does not learn other scopes' ids.
        raise UsageError(f"no incident {incident_id}")
    return incident


_json = click.option("--json", "as_json", is_flag=True, help="JSON (times ISO 8601, local).")
_lang = click.option(
    "--lang", type=click.Choice(LANGUAGES), default="zh-CN", show_default=True,
    help="Language of the table.",
)  # fmt: skip


@click.group("incidents")
def incidents() -> None:
    """Incident work orders (故障工单): list, act, and run the engine (docs/incidents.md)."""


@incidents.command("list")
@click.option(
    "--state", "states", multiple=True, type=click.Choice([s.value for s in State]),
    help="Only these states (repeatable).",
)  # fmt: skip
@click.option("--all", "everything", is_flag=True, help="Closed ones too.")
@click.option("--device", help="Only this device.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=200, show_default=True)
@_json
@_lang
def list_command(
    states: tuple[str, ...], everything: bool, device: str | None, limit: int, as_json: bool,
    lang: str,
) -> None:  # fmt: skip
    """Incidents not closed yet (newest first), within the user's scope."""
    w = words(lang)
    with _session() as (conn, rules, actor):
        user = _viewer(conn, actor)
        chosen: list[str] | None = list(states) if states else None
        if everything and chosen is None:
            chosen = ["open", "acknowledged", "dispatched", "on_site", "restored", "closed"]
        found = service.list_incidents(
            conn, states=chosen, device_id=device, user=user, limit=limit
        )
        sla = service.sla_statuses(conn, found)
        if as_json:
            click.echo(
                json.dumps(
                    [incident_json(i, rules, sla[i.id]) for i in found],
                    ensure_ascii=False,
                    indent=2,
                )
            )
            return
        if not found:
            click.echo(w["none"])
            return
        header = [w[k] for k in ("h.id", "h.device", "h.branch", "h.vendor", "h.class",
                                 "h.state", "h.sla", "h.started", "h.eta")]  # fmt: skip
        rows = [
            [str(i.id), i.device_id, i.branch_id, i.vendor, w[f"class.{i.cls}"],
             _state_text(i, w), w[f"sla.{sla[i.id]}"], short(i.started_at, rules),
             short(i.eta, rules)]
            for i in found
        ]  # fmt: skip
        click.echo(table(header, rows))


@incidents.command("show")
@click.argument("incident_id", type=int)
@_json
@_lang
def show_command(incident_id: int, as_json: bool, lang: str) -> None:
    """One incident with its history and SLA marks."""
    w = words(lang)
    with _session() as (conn, rules, actor):
        incident = _visible(conn, actor, incident_id)
        history = events_of(conn, incident_id)
        marks = service.sla_marks(conn, incident_id)
        sla = service.sla_statuses(conn, [incident])[incident_id]
        if as_json:
            out = incident_json(incident, rules, sla)
            out["events"] = [event_json(e, rules) for e in history]
            out["sla_marks"] = [
                {**m, "due_at": local(m["due_at"], rules), "at": local(m["at"], rules)}
                for m in marks
            ]
            click.echo(json.dumps(out, ensure_ascii=False, indent=2))
            return
        lines = [
            f"{w['h.id']} {incident.id}  {incident.device_id}  {incident.branch_id}"
            f"  {incident.vendor} {incident.model}",
            f"{w['h.state']}: {_state_text(incident, w)}  {w['h.class']}: "
            f"{w['class.' + incident.cls]} ({incident.cause}"
            f"{', ' + incident.component if incident.component else ''})  {w['h.sla']}: "
            f"{w['sla.' + sla]} ({incident.contract or '–'})",
            f"{w['h.started']}: {short(incident.started_at, rules)}  {w['h.opened']}: "
            f"{short(incident.opened_at, rules)}  {w['h.eta']}: {short(incident.eta, rules)}"
            f"  {w['h.maintainer']}: {incident.maintainer_id or '–'}",
        ]
        if incident.repeat_of:
            lines.append(f"{w['h.repeat_of']} {incident.repeat_of}")
        lines.append(f"{w['h.allowed']}: {', '.join(a.value for a in incident.allowed()) or '–'}")
        lines.append("")
        rows = [
            [short(e.at, rules), e.kind, e.actor, " ".join(e.recipients),
             _detail_text(e.detail)]
            for e in history
        ]  # fmt: skip
        lines.append(table([w["h.at"], w["h.event"], w["h.actor"], "→", w["h.detail"]], rows))
        click.echo("\n".join(lines))


def _detail_text(detail: dict[str, Any]) -> str:
    if detail.get("notification"):
        return f"{detail.get('count')} incident(s)"
    parts = [f"{k}={v}" for k, v in detail.items() if v not in (None, "") and k != "items"]
    return ", ".join(parts)[:80]


def _act(
    incident_id: int,
    version: int | None,
    as_json: bool,
    call: Callable[[psycopg.Connection[Any], Rules, Actor, datetime, int], Incident],
) -> None:
    with _session() as (conn, rules, actor):
        incident = _visible(conn, actor, incident_id)
        now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
        after = call(conn, rules, actor, now, incident.version if version is None else version)
        conn.commit()
        if as_json:
            click.echo(json.dumps(incident_json(after, rules), ensure_ascii=False, indent=2))
        else:
            w = words("zh-CN")
            click.echo(
                f"incident {after.id}: {_state_text(after, w)} (version {after.version});"
                f" allowed: {', '.join(a.value for a in after.allowed()) or '–'}"
            )


def _action_options(fn: Callable[..., None]) -> Callable[..., None]:
    fn = _json(fn)
    fn = click.option(
        "--version", type=int,
        help="The version you saw (default: the one read now); a newer one is a conflict.",
    )(fn)  # fmt: skip
    return click.argument("incident_id", type=int)(fn)


@incidents.command("ack")
@_action_options
@click.option("--remarks", default=None)
def ack_command(incident_id: int, version: int | None, as_json: bool, remarks: str | None) -> None:
    """受理: take the incident on."""
    _act(incident_id, version, as_json, lambda c, r, a, now, v: service.ack(
        c, incident_id, a, expected_version=v, remarks=remarks))  # fmt: skip


@incidents.command("dispatch")
@_action_options
@click.option("--eta", required=True, help="When the technician will be there: HH:MM, 'YYYY-MM-DD HH:MM' or +2h.")  # fmt: skip
@click.option("--maintainer", default=None, help="Maintainer id (default: the device's).")
@click.option("--remarks", default=None)
def dispatch_command(
    incident_id: int, version: int | None, as_json: bool, eta: str, maintainer: str | None,
    remarks: str | None,
) -> None:  # fmt: skip
    """派单: notify the maintainer and record their ETA."""
    _act(incident_id, version, as_json, lambda c, r, a, now, v: service.dispatch(
        c, incident_id, a, eta=parse_time(eta, r, "--eta", now), expected_version=v,
        maintainer_id=maintainer, remarks=remarks))  # fmt: skip


@incidents.command("arrive")
@_action_options
@click.option("--at", "at_text", default=None, help="When the technician arrived (default: now).")
def arrive_command(
    incident_id: int, version: int | None, as_json: bool, at_text: str | None
) -> None:
    """到场: the technician is on site (recorded by hand)."""
    _act(incident_id, version, as_json, lambda c, r, a, now, v: service.arrive(
        c, incident_id, a, expected_version=v,
        at=parse_time(at_text, r, "--at", now) if at_text else None))  # fmt: skip


@incidents.command("suspend")
@_action_options
@click.option("--reason", required=True, help="Why, e.g. waiting for parts (等待备件).")
def suspend_command(incident_id: int, version: int | None, as_json: bool, reason: str) -> None:
    """挂起: pause the SLA clocks (as the contract says)."""
    _act(incident_id, version, as_json, lambda c, r, a, now, v: service.suspend(
        c, incident_id, a, reason=reason, expected_version=v))  # fmt: skip


@incidents.command("resume")
@_action_options
@click.option("--remarks", default=None)
def resume_command(
    incident_id: int, version: int | None, as_json: bool, remarks: str | None
) -> None:
    """End a suspension: the SLA clocks run again."""
    _act(incident_id, version, as_json, lambda c, r, a, now, v: service.resume(
        c, incident_id, a, expected_version=v, remarks=remarks))  # fmt: skip


@incidents.command("close")
@_action_options
@click.option("--cause", required=True, help="What it was (故障原因).")
@click.option("--remarks", default="", help="Remarks (处理说明).")
def close_command(
    incident_id: int, version: int | None, as_json: bool, cause: str, remarks: str
) -> None:
    """关闭: close a restored incident with its cause and remarks."""
    _act(incident_id, version, as_json, lambda c, r, a, now, v: service.close(
        c, incident_id, a, cause=cause, remarks=remarks, expected_version=v))  # fmt: skip


@incidents.command("reopen")
@_action_options
@click.option("--reason", required=True)
def reopen_command(incident_id: int, version: int | None, as_json: bool, reason: str) -> None:
    """Open a restored or closed incident again (not fixed after all)."""
    _act(incident_id, version, as_json, lambda c, r, a, now, v: service.reopen(
        c, incident_id, a, expected_version=v, reason=reason))  # fmt: skip


@incidents.command("run")
@click.option("--once", is_flag=True, help="One pass, then exit.")
@click.option("--name", default="default", show_default=True, help="The engine's cursor name.")
@_json
def run_command(once: bool, name: str, as_json: bool) -> None:
    """The incident engine: follows the store, opens/restores incidents, SLA escalations.

    Runs as the store's writer (ATMFLEET_DATABASE_URL); acts as `system` in the history
    and the audit log. Stop it with SIGTERM or Ctrl-C (the pass in flight is finished or
    rolled back, never half-written).
    """
    from incidents.engine import Engine

    settings = load_settings()
    rules = load_rules(settings.rules_file)
    url = settings.require_database_url()

    def report(stats: Any) -> None:
        if as_json:
            click.echo(json.dumps({k: v for k, v in vars(stats).items() if k != "started"}))
        elif once or stats.opened or stats.restored or stats.marks or stats.errors:
            click.echo(stats.line())

    stopping = {"now": False}
    if not once:

        def stop(signum: int, frame: Any) -> None:
            stopping["now"] = True

        signal.signal(signal.SIGTERM, stop)
    connected_once = False
    backoff = rules.incidents.poll_s
    with suppress(KeyboardInterrupt):
        while not stopping["now"]:
            try:
                with connect(url, application_name="atmfleet-incidents") as conn:
                    require_current(conn)
                    connected_once = True
                    backoff = rules.incidents.poll_s
                    engine = Engine(conn, rules, name=name)
                    if once:
                        report(engine.run_once())
                        return
                    engine.run(stop=lambda: stopping["now"], on_pass=report)
                    return
            except psycopg.errors.InsufficientPrivilege as exc:
                first = (str(exc).strip().splitlines() or ["permission denied"])[0]
                raise Forbidden(
                    f"the database login may not run the engine ({first}): use the store's"
                    " writer login (docs/security.md)"
                ) from None
            except (psycopg.OperationalError, ConfigError) as exc:
                # The database went away (restart, failover): reconnect with capped backoff;
                # the new engine resumes from its stored cursor. A first connection that
                # fails is a configuration problem: said once, exit 2.
                if not connected_once or once:
                    raise ConfigError(str(exc).strip().splitlines()[0]) from None
                log.warning("incident engine: database lost (%s); reconnecting", exc)
                clock.sleep(min(backoff, 30.0))
                backoff *= 2
