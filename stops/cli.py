"""``atmfleet stops``: the planned-stop register (计划停机登记) from the command line.

Every subcommand acts as ``ATMFLEET_USER`` (else the login name), a user of the ``users``
table, through :mod:`stops.service` (who may do what is said there and in docs/stops.md).
Times a person types or reads are in the rules' time zone (Asia/Shanghai by default):
``--from 2026-12-03 09:00``; a date alone is local midnight, and for ``--to`` the end of
that day. ``--json`` prints the stops with ISO 8601 times carrying the local offset.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, time, timedelta
from typing import Any

import click
import psycopg

from atmfleet.errors import Forbidden, UsageError
from atmfleet.settings import load_settings
from atmfleet.store.audit import Actor, cli_actor
from atmfleet.store.connect import connect
from atmfleet.store.migrate import require_current
from rules.config import Rules, load_rules
from stops import service
from stops.service import STATUSES, Stop

_LOCAL = re.compile(r"(\d{4}-\d{2}-\d{2})(?:[ T](\d{1,2}):(\d{2}))?")


def parse_local(text: str, rules: Rules, option: str, end: bool = False) -> datetime:
    """``YYYY-MM-DD[ HH:MM]`` in the rules' time zone, or ISO 8601 with an offset. A date
    alone is local midnight; with ``end`` (``--to``) the midnight after it."""
    text = text.strip()
    m = _LOCAL.fullmatch(text)
    if m is not None:
        try:
            day = date.fromisoformat(m.group(1))
            at = time(int(m.group(2)), int(m.group(3))) if m.group(2) else time(0)
        except ValueError as exc:
            raise UsageError(f"{option} {text!r}: {exc}") from None
        if end and m.group(2) is None:
            day += timedelta(days=1)
        return datetime.combine(day, at, tzinfo=rules.tz)
    try:
        got = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"{option} {text!r}: give local time as 'YYYY-MM-DD HH:MM' ({rules.timezone}) or a date"
        ) from None
    if got.tzinfo is None:
        got = got.replace(tzinfo=rules.tz)
    return got


def _local(at: datetime | None, rules: Rules) -> str | None:
    return None if at is None else at.astimezone(rules.tz).isoformat(timespec="seconds")


def as_json(stop: Stop, rules: Rules) -> dict[str, Any]:
    out = stop.snapshot()
    out["target"] = stop.target
    for k in ("starts_at", "ends_at", "approved_at", "rejected_at", "cancelled_at"):
        out[k] = _local(out[k], rules)
    out["created_at"] = _local(stop.created_at, rules)
    return out


def _short(at: datetime, rules: Rules) -> str:
    return at.astimezone(rules.tz).strftime("%Y-%m-%d %H:%M")


def _width(text: str) -> int:
    """Terminal columns of ``text`` (CJK characters take two)."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def render(stops: list[Stop], rules: Rules) -> str:
    if not stops:
        return "(no planned stops)"
    heads = ["id", "target", "from", "to", "status", "reason", "requester", "approver"]
    rows = [
        [str(s.id), s.target, _short(s.starts_at, rules), _short(s.ends_at, rules),
         s.status + (" (retro)" if s.retroactive else ""), s.reason, s.requester,
         s.approver or "–"]
        for s in stops
    ]  # fmt: skip
    widths = [max(_width(h), *(_width(r[i]) for r in rows)) for i, h in enumerate(heads)]

    def line(values: list[str]) -> str:
        return "  ".join(v + " " * (w - _width(v)) for v, w in zip(values, widths, strict=True))

    out = [line(heads), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]
    out.append(f"times in {rules.timezone}")
    return "\n".join(x.rstrip() for x in out)


@contextmanager
def opened() -> Iterator[tuple[psycopg.Connection[Any], Rules, Actor]]:
    settings = load_settings()
    rules = load_rules(settings.rules_file)
    with connect(settings.require_database_url(), application_name="atmfleet-stops") as conn:
        require_current(conn)
        conn.commit()
        try:
            yield conn, rules, cli_actor()
        except psycopg.errors.InsufficientPrivilege as exc:
            raise Forbidden(
                "this database login may not change the register "
                f"({str(exc).strip().splitlines()[0]}); use the writer or owner login"
            ) from None


def emit(stops: list[Stop], rules: Rules, as_json_: bool, one: bool = False) -> None:
    if as_json_:
        data: Any = as_json(stops[0], rules) if one else [as_json(s, rules) for s in stops]
        click.echo(json.dumps(data, ensure_ascii=False, indent=1))
    else:
        click.echo(render(stops, rules))


_json_opt = click.option("--json", "as_json_", is_flag=True, help="JSON instead of a table.")
_version_opt = click.option(
    "--expected-version", type=int, default=None,
    help="Refuse (conflict) if the stop has changed since this version.",
)  # fmt: skip


@click.group("stops")
def stops() -> None:
    """The planned-stop register (计划停机登记): approved stops are planned maintenance,
    left out of 开机率's scheduled time (docs/stops.md)."""


@stops.command("add")
@click.option("--device", "device_id", help="One device (give --device or --branch).")
@click.option("--branch", "branch_id", help="Every device of a branch.")
@click.option("--from", "starts", required=True, help="Start, local time 'YYYY-MM-DD HH:MM'.")
@click.option("--to", "ends", required=True, help="End, local time (a date: its end).")
@click.option("--reason", required=True, help="What for (装修, 迁移, 系统升级...).")
@click.option("--remarks", default="", help="Anything else.")
@_json_opt
def add_cmd(
    device_id: str | None, branch_id: str | None, starts: str, ends: str, reason: str,
    remarks: str, as_json_: bool,
) -> None:  # fmt: skip
    """Register a stop (requested until another user approves it)."""
    with opened() as (conn, rules, actor):
        stop = service.add(
            conn, actor, rules=rules, device_id=device_id, branch_id=branch_id,
            starts_at=parse_local(starts, rules, "--from"),
            ends_at=parse_local(ends, rules, "--to", end=True), reason=reason, remarks=remarks,
        )  # fmt: skip
        emit([stop], rules, as_json_, one=True)


@stops.command("list")
@click.option("--status", type=click.Choice(STATUSES), help="Only stops in this status.")
@click.option("--device", "device_id", help="Stops of this device (its branch's included).")
@click.option("--branch", "branch_id", help="Stops of this branch and of its devices.")
@click.option("--from", "starts", help="Only stops ending after this local time.")
@click.option("--to", "ends", help="Only stops starting before this local time.")
@_json_opt
def list_cmd(
    status: str | None, device_id: str | None, branch_id: str | None, starts: str | None,
    ends: str | None, as_json_: bool,
) -> None:  # fmt: skip
    """Stops within your organisational scope, newest start first."""
    with opened() as (conn, rules, actor):
        got = service.list_stops(
            conn, actor, status=status, device_id=device_id, branch_id=branch_id,
            lo=parse_local(starts, rules, "--from") if starts else None,
            hi=parse_local(ends, rules, "--to", end=True) if ends else None,
        )  # fmt: skip
        emit(got, rules, as_json_)


@stops.command("show")
@click.argument("stop_id", type=int)
@_json_opt
def show_cmd(stop_id: int, as_json_: bool) -> None:
    """One stop."""
    with opened() as (conn, rules, actor):
        emit([service.get(conn, stop_id, actor)], rules, as_json_, one=True)


@stops.command("approve")
@click.argument("stop_id", type=int)
@_version_opt
@_json_opt
def approve_cmd(stop_id: int, expected_version: int | None, as_json_: bool) -> None:
    """Approve a requested stop (not your own): its time becomes planned maintenance."""
    with opened() as (conn, rules, actor):
        stop = service.approve(conn, stop_id, actor, rules=rules, expected_version=expected_version)
        emit([stop], rules, as_json_, one=True)


@stops.command("reject")
@click.argument("stop_id", type=int)
@click.option("--remarks", default="", help="Why.")
@_version_opt
@_json_opt
def reject_cmd(stop_id: int, remarks: str, expected_version: int | None, as_json_: bool) -> None:
    """Refuse a requested stop."""
    with opened() as (conn, rules, actor):
        stop = service.reject(
            conn, stop_id, actor, rules=rules, remarks=remarks, expected_version=expected_version
        )
        emit([stop], rules, as_json_, one=True)


@stops.command("cancel")
@click.argument("stop_id", type=int)
@click.option("--remarks", default="", help="Why.")
@_version_opt
@_json_opt
def cancel_cmd(stop_id: int, remarks: str, expected_version: int | None, as_json_: bool) -> None:
    """Cancel a requested or approved stop (its time counts as the device reported it)."""
    with opened() as (conn, rules, actor):
        stop = service.cancel(
            conn, stop_id, actor, remarks=remarks, expected_version=expected_version
        )
        emit([stop], rules, as_json_, one=True)


@stops.command("edit")
@click.argument("stop_id", type=int)
@click.option("--from", "starts", help="New start, local time.")
@click.option("--to", "ends", help="New end, local time (a date: its end).")
@click.option("--reason", default=None, help="New reason.")
@_version_opt
@_json_opt
def edit_cmd(
    stop_id: int, starts: str | None, ends: str | None, reason: str | None,
    expected_version: int | None, as_json_: bool,
) -> None:  # fmt: skip
    """Change a requested stop (an approved one: cancel it and add a new one)."""
    with opened() as (conn, rules, actor):
        stop = service.edit(
            conn, stop_id, actor, rules=rules,
            starts_at=parse_local(starts, rules, "--from") if starts else None,
            ends_at=parse_local(ends, rules, "--to", end=True) if ends else None,
            reason=reason, expected_version=expected_version,
        )  # fmt: skip
        emit([stop], rules, as_json_, one=True)
