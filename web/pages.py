"""The console's pages (server-rendered HTML). Each page says who may use it: every page
needs a login (any role) and shows only the caller's scope; every form that changes
something needs the role named at its route and the session's CSRF token, and the
service it calls writes the audit row."""

from __future__ import annotations

import csv
import io
import json
from datetime import date, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from atmfleet.errors import UsageError
from atmfleet.store.audit import Actor, record
from web import ops
from web.app import LANG_COOKIE, SESSION_COOKIE, console_of
from web.auth import (
    close_session,
    login_blocked,
    login_failed,
    login_succeeded,
    open_session,
)
from web.fleet import STATES
from web.i18n import LANGUAGES
from web.kpi import KPI_KINDS, kpi_report
from web.ops import NotFound
from web.scope import report_scope

router = APIRouter(include_in_schema=False)
FormStr = Annotated[str, Form()]


def _safe_next(target: str | None) -> str:
    """Only a path of this site (no //host, no scheme)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/wall"
    return target


def _back(request: Request, default: str) -> RedirectResponse:
    return RedirectResponse(_safe_next(request.headers.get("x-back") or default), 303)


# --------------------------------------------------------------------------- login


@router.get("/login")
def login_form(request: Request, next: str = "/wall") -> Response:
    return console_of(request).page(request, "login.html", next=_safe_next(next), error=None)


@router.post("/login")
def login(
    request: Request, username: FormStr = "", password: FormStr = "", next: FormStr = "/wall"
) -> Response:
    c = console_of(request)
    ip = request.client.host if request.client else "?"
    username = username.strip()[:64]
    s = c.settings
    with c.conn() as conn:
        if login_blocked(conn, username, ip, s.login_max_failures, s.login_window_s):
            return c.page(request, "login.html", 429, next=_safe_next(next), error="login.limited")
        who = c.authenticator.authenticate(conn, username, password)
        if who is None:
            login_failed(conn, username, ip)
            conn.commit()
            return c.page(request, "login.html", 401, next=_safe_next(next), error="login.bad")
        login_succeeded(conn, username, ip)
        record(conn, Actor(who, "web"), "session.login", "user", who, detail=f"from {ip}")
        value, _csrf = open_session(conn, who, s.session_hours, ip,
                                    request.headers.get("user-agent"))  # fmt: skip
        conn.commit()
    out = RedirectResponse(_safe_next(next), 303)
    out.set_cookie(
        SESSION_COOKIE, value, max_age=int(s.session_hours * 3600), httponly=True,
        secure=s.cookie_secure, samesite="strict", path="/",
    )  # fmt: skip
    return out


@router.post("/logout")
def logout(request: Request, csrf: FormStr = "") -> Response:
    c = console_of(request)
    who = c.writer(request, csrf, "viewer")
    with c.conn() as conn:
        if who.session:
            close_session(conn, who.session)
            record(conn, who.actor, "session.logout", "user", who.user.username)
    out = RedirectResponse("/login", 303)
    out.delete_cookie(SESSION_COOKIE, path="/")
    return out


@router.get("/lang")
def switch_language(request: Request, to: str = "zh-CN", next: str = "/wall") -> Response:
    out = RedirectResponse(_safe_next(next), 303)
    lang = to if to in LANGUAGES else "zh-CN"
    out.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, samesite="lax", path="/",
                   secure=console_of(request).settings.cookie_secure)  # fmt: skip
    return out


@router.get("/")
def home() -> Response:
    return RedirectResponse("/wall", 303)


# ---------------------------------------------------------------------------- wall


def wall_args(request: Request) -> dict[str, Any]:
    q = request.query_params
    try:
        page = int(q.get("page") or 1)
    except ValueError:
        page = 1
    return {
        "subbranch": q.get("subbranch") or None, "branch": q.get("branch") or None,
        "type_": q.get("type") or None, "vendor": q.get("vendor") or None,
        "state": q.get("state") or None, "page": page,
    }  # fmt: skip


@router.get("/wall")
def wall(request: Request) -> Response:
    c = console_of(request)
    who = c.principal(request)
    args = wall_args(request)
    fleet = c.fleet.fresh()
    data = fleet.wall(who.user, page_size=c.settings.page_size, **args)
    subs, branches = fleet.choices(who.user, args["subbranch"])
    return c.page(
        request, "wall.html", data=data, args=args, subs=subs, branches=branches,
        inv=fleet.inventory, query=request.url.query,
        state_names=json.dumps({s: c.page_text(request, "state." + s) for s in STATES},
                               ensure_ascii=False),
    )  # fmt: skip


# -------------------------------------------------------------------------- device


@router.get("/devices/{device_id}")
def device(request: Request, device_id: str) -> Response:
    c = console_of(request)
    v = c.device_view(request, device_id)
    return c.page(
        request,
        "device.html",
        d=v["device"],
        state=v["state"],
        figures=v["figures"],
        sample=v["latest"],
        incidents=v["incidents"],
        stops=v["stops"],
        commands=v["commands"],
        forecast=v["forecast"],
        can_send=c.publisher is not None,
        last_seen=v["last_seen"],
        tz=c.rules.tz,
        inv=c.fleet.inventory,
        chart=json.dumps(v["figures"]["days"]),
    )


# ----------------------------------------------------------------------- incidents


@router.get("/incidents")
def incidents(request: Request, page: int = 1, closed: int = 0, state: str = "") -> Response:
    c = console_of(request)
    who = c.principal(request)
    if not ops.incidents_available():
        return c.page(request, "unavailable.html", key="inc.unavailable")
    with c.conn() as conn:
        board = ops.incidents_board(conn, c.rules, who.user, bool(closed), page, c.settings.page_size,
                                    state or None)  # fmt: skip
    return c.page(request, "incidents.html", board=board, closed=closed, state=state,
                  tz=c.rules.tz)  # fmt: skip


@router.get("/incidents/{incident_id}")
def incident(request: Request, incident_id: int) -> Response:
    c = console_of(request)
    who = c.principal(request)
    with c.conn() as conn:
        inc = ops.incident_detail(conn, c.rules, who.user, incident_id)
    return c.page(request, "incident.html", inc=inc, tz=c.rules.tz)


@router.post("/incidents/{incident_id}/{action}")
async def incident_act(request: Request, incident_id: int, action: str) -> Response:
    form = dict((await request.form()).items())
    values = {k: str(v) for k, v in form.items()}
    return await _run(request, lambda: _incident_act(request, incident_id, action, values))


def _incident_act(
    request: Request, incident_id: int, action: str, values: dict[str, str]
) -> Response:
    c = console_of(request)
    who = c.writer(request, values.get("csrf"), "viewer")
    with c.conn() as conn:
        ops.incident_action(conn, who, c.rules, incident_id, action, values)
    return RedirectResponse(_safe_next(values.get("back") or f"/incidents/{incident_id}"), 303)


async def _run(request: Request, fn: Any) -> Response:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn)


# --------------------------------------------------------------------------- stops


@router.get("/stops")
def stops(request: Request, status: str = "") -> Response:
    c = console_of(request)
    who = c.principal(request)
    if not ops.stops_available():
        return c.page(request, "unavailable.html", key="stop.unavailable")
    with c.conn() as conn:
        found = ops.stops_list(conn, who, status or None)
    return c.page(request, "stops.html", stops=found, status=status, tz=c.rules.tz)


@router.post("/stops")
async def stop_add(request: Request) -> Response:
    values = {k: str(v) for k, v in (await request.form()).items()}

    def run() -> Response:
        c = console_of(request)
        who = c.writer(request, values.get("csrf"), "viewer")
        with c.conn() as conn:
            ops.stop_add(conn, who, c.rules, values)
        return RedirectResponse("/stops", 303)

    return await _run(request, run)


@router.post("/stops/{stop_id}/{action}")
async def stop_act(request: Request, stop_id: int, action: str) -> Response:
    values = {k: str(v) for k, v in (await request.form()).items()}

    def run() -> Response:
        c = console_of(request)
        who = c.writer(request, values.get("csrf"), "viewer")
        with c.conn() as conn:
            ops.stop_act(conn, who, c.rules, stop_id, action, values)
        return RedirectResponse("/stops", 303)

    return await _run(request, run)


# ----------------------------------------------------------------------- bulletins


@router.get("/bulletins")
def bulletins(request: Request) -> Response:
    c = console_of(request)
    who = c.principal(request)
    with c.conn() as conn:
        found = ops.bulletins_list(conn, who.user, c.bulletins)
    return c.page(request, "bulletins.html", found=found, today=date.today().isoformat())


@router.post("/bulletins")
async def bulletin_generate(request: Request) -> Response:
    values = {k: str(v) for k, v in (await request.form()).items()}

    def run() -> Response:
        c = console_of(request)
        who = c.writer(request, values.get("csrf"), "viewer")
        with c.conn() as conn:
            ops.bulletin_generate(conn, who, c.rules, c.bulletins, values.get("kind", "daily"),
                                  values.get("period", ""), values.get("lang", "zh-CN"))  # fmt: skip
        return RedirectResponse("/bulletins", 303)

    return await _run(request, run)


@router.get("/bulletins/{scope}/{name}")
def bulletin_file(request: Request, scope: str, name: str) -> Response:
    c = console_of(request)
    who = c.principal(request)
    with c.conn() as conn:
        path = ops.bulletin_path(conn, who.user, c.bulletins, scope, name)
    if name.endswith(".html"):
        # The bulletin's own page (inline styles, no script): shown in a sandbox.
        return FileResponse(path, media_type="text/html; charset=utf-8", headers={
            "Content-Security-Policy": "sandbox; default-src 'none'; style-src 'unsafe-inline';"
            " img-src data:", "X-Content-Type-Options": "nosniff"})  # fmt: skip
    return FileResponse(path, filename=name)


# ----------------------------------------------------------------------------- KPI


@router.get("/kpi")
def kpi(
    request: Request, kind: str = "uptime", scope: str = "", first: str = "", last: str = "",
) -> Response:  # fmt: skip
    c = console_of(request)
    who = c.principal(request)
    scope = scope or report_scope(who.user)
    report = None
    error = None
    if kind not in KPI_KINDS:
        kind = "uptime"
    try:
        f = date.fromisoformat(first) if first else None
        t = date.fromisoformat(last) if last else None
    except ValueError:
        raise UsageError("from/to: give dates as YYYY-MM-DD") from None
    with c.conn() as conn:
        report = kpi_report(conn, c.rules, who.user, kind, scope, f, t)
    rows = report.rows
    value_key = {"uptime": "uptime", "substitution": "rate", "low-yield": "share"}[kind]
    target = {
        "uptime": report.extra.get("total", {}).get("target"),
        "substitution": report.extra.get("target"),
        "low-yield": report.extra.get("max_share"),
    }[kind]
    chart = json.dumps({
        "groups": [r["group"] for r in rows],
        "values": [r.get(value_key) for r in rows],
        "targets": [r.get("target", target) if kind == "uptime" else target for r in rows],
        "target": target,
    })  # fmt: skip
    return c.page(request, "kpi.html", kind=kind, scope=scope, first=first, last=last,
                  report=report, value_key=value_key, chart=chart, error=error,
                  by=report.extra.get("by") or _by_of(report),
                  kinds=KPI_KINDS)  # fmt: skip


def _by_of(report: Any) -> str:
    """What a report is broken down by (the title says it for those without ``by``)."""
    title = str(report.title)
    return title.rsplit("by ", 1)[-1] if "by " in title else ""


# --------------------------------------------------------------------------- audit


@router.get("/audit")
def audit(request: Request, actor: str = "", action: str = "") -> Response:
    c = console_of(request)
    who = c.principal(request)
    with c.conn() as conn:
        rows = ops.audit_rows(conn, who, 500, actor or None, action or None)
    return c.page(request, "audit.html", rows=rows, actor=actor, action=action,
                  csv_url="/audit.csv?" + request.url.query)  # fmt: skip


@router.get("/audit.csv")
def audit_csv(request: Request, actor: str = "", action: str = "") -> Response:
    c = console_of(request)
    who = c.principal(request)
    with c.conn() as conn:
        rows = ops.audit_rows(conn, who, 100_000, actor or None, action or None)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(ops.AUDIT_COLUMNS)
    for r in rows:
        w.writerow([json.dumps(r[k], ensure_ascii=False) if isinstance(r[k], dict | list)
                    else ("" if r[k] is None else r[k]) for k in ops.AUDIT_COLUMNS])  # fmt: skip
    return Response("\ufeff" + buf.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": "attachment; filename=audit.csv"})  # fmt: skip


# ------------------------------------------------------------------------ commands


@router.post("/devices/{device_id}/commands")
async def command_send(request: Request, device_id: str) -> Response:
    """Send a command (operator, inside the scope, CSRF): a disruptive one (restart, out of
    service) first shows a confirmation page whose form repeats it with confirm=1."""
    values = {k: str(v) for k, v in (await request.form()).items()}

    def run() -> Response:
        from web import commands as cmds

        c = console_of(request)
        who = c.writer(request, values.get("csrf"), "viewer")
        c.device_view_check(request, device_id)
        kind = values.get("kind", "")
        params = cmds.journal_params(values, c.rules.tz) if kind == "journal" else {}
        if kind in cmds.DISRUPTIVE_KINDS and values.get("confirm") != "1":
            who.require("operator")
            return c.page(request, "command_confirm.html", device_id=device_id, kind=kind)
        with c.conn() as conn:
            cmd = cmds.send(conn, who, c.rules, c.publisher, device_id, kind, params,
                            values.get("confirm") == "1")  # fmt: skip
        return RedirectResponse(f"/commands/{cmd.id}", 303)

    return await _run(request, run)


@router.get("/commands")
def commands_list(request: Request, state: str = "", device: str = "") -> Response:
    from web import commands as cmds

    c = console_of(request)
    who = c.principal(request)
    with c.conn() as conn:
        found = cmds.listing(conn, who, device_id=device or None, state=state or None,
                             limit=c.settings.page_size)  # fmt: skip
    return c.page(request, "commands.html", found=found, state=state, device=device,
                  tz=c.rules.tz, states=_COMMAND_STATES)  # fmt: skip


_COMMAND_STATES = ("queued", "sent", "accepted", "done", "failed", "rejected", "expired")


@router.get("/commands/{command_id}")
def command_page(request: Request, command_id: str) -> Response:
    from web import commands as cmds

    c = console_of(request)
    who = c.principal(request)
    with c.conn() as conn:
        cmd = cmds.show(conn, who, command_id)
    return c.page(request, "command.html", cmd=cmd, tz=c.rules.tz,
                  final=cmd.state in cmds.FINAL_STATES,
                  poll_ms=int(c.settings.command_poll_s * 1000))  # fmt: skip


@router.get("/commands/{command_id}/journal")
def command_journal(request: Request, command_id: str) -> Response:
    from web import commands as cmds

    c = console_of(request)
    who = c.principal(request)
    with c.conn() as conn:
        return cmds.journal_response(conn, who, command_id)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------- cash


def _plan_day(request: Request, value: str) -> date:
    c = console_of(request)
    today = datetime.now(c.rules.tz).date()
    if not value:
        return today
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise UsageError("date: give a day as YYYY-MM-DD") from None
    if day > today + timedelta(days=c.settings.cash_plan_days_ahead):
        raise UsageError(f"date: at most {c.settings.cash_plan_days_ahead} days ahead")
    return day


@router.get("/cash/plan")
def cash_plan(request: Request, date: str = "") -> Response:
    from web import cash

    c = console_of(request)
    who = c.principal(request)
    day = _plan_day(request, date)
    with c.conn() as conn:
        plan = cash.plan(conn, c.rules, who, day)
    return c.page(request, "cash_plan.html", plan=plan, day=day.isoformat(), tz=c.rules.tz)


@router.get("/cash/plan.{fmt}")
def cash_plan_file(request: Request, fmt: str, date: str = "", lang: str = "") -> Response:
    from web import cash

    if fmt not in ("xlsx", "json"):
        raise NotFound(f"no plan format {fmt!r}")
    c = console_of(request)
    who = c.principal(request)
    day = _plan_day(request, date)
    with c.conn() as conn:
        plan = cash.plan(conn, c.rules, who, day)
    data, media, name = cash.plan_file(plan, fmt, lang if lang in LANGUAGES else c.lang(request))
    return Response(data, media_type=media,
                    headers={"Content-Disposition": f"attachment; filename={name}"})  # fmt: skip


__all__ = ["quote", "router"]
