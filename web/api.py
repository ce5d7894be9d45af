"""The JSON API (``/api/...``), described by the OpenAPI document at ``/api/openapi.json``.

The same auth as the pages: ``Authorization: Bearer <token>`` (an integration; tokens from
``atmfleet users token``) or a console session (then every write needs the session's
``X-CSRF-Token`` header). The same scope rules: an object outside the caller's scope is
404, a scope the caller names but may not use 403. Writes need the role named in their
description and are audited by the service they call.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Path, Query, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field

from web import ops
from web.app import console_of
from web.kpi import kpi_report
from web.scope import report_scope


class Problem(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "Bad request (the message says what)"},
    401: {"model": Problem, "description": "Not authenticated"},
    403: {"model": Problem, "description": "Role, scope or CSRF token insufficient"},
    404: {"model": Problem, "description": "Not found, or outside the caller's scope"},
    409: {"model": Problem, "description": "Changed by someone else first"},
}

router = APIRouter(prefix="/api", responses=ERRORS)

Obj = dict[str, Any]
Csrf = Annotated[str | None, Header(alias="X-CSRF-Token")]


class Me(BaseModel):
    username: str
    display_name: str
    role: Literal["viewer", "operator", "admin"]
    scope_kind: Literal["fleet", "subbranch", "branch"]
    scope_id: str | None
    via: Literal["session", "token"]


class Tile(BaseModel):
    id: str
    name: str
    total: int
    counts: dict[str, int]
    worst: str


class WallDevice(BaseModel):
    id: str
    branch: str
    subbranch: str
    type: str
    vendor: str
    model: str
    state: str


class Wall(BaseModel):
    level: Literal["fleet", "subbranch", "branch"]
    total: int
    counts: dict[str, int]
    tiles: list[Tile]
    devices: list[WallDevice]
    device_total: int
    page: int
    pages: int
    as_of: str | None


class Action(BaseModel):
    expected_version: int | None = Field(None, ge=1, le=2**31 - 1)
    eta: str | None = Field(None, description="Local date-time, e.g. 2026-12-01T15:00")
    maintainer_id: str | None = None
    reason: str | None = None
    cause: str | None = None
    remarks: str | None = None


class StopIn(BaseModel):
    device_id: str | None = None
    branch_id: str | None = None
    starts_at: str = Field(description="Local date-time, e.g. 2026-12-02T09:00")
    ends_at: str
    reason: str
    remarks: str = ""


class StopAction(BaseModel):
    expected_version: int | None = Field(None, ge=1, le=2**31 - 1)
    remarks: str = ""


class BulletinIn(BaseModel):
    kind: Literal["daily", "monthly", "quarterly"] = "daily"
    period: str = Field("", description="YYYY-MM-DD, YYYY-MM or YYYY-Qn; empty: the last")
    lang: Literal["zh-CN", "en"] = "zh-CN"


Id = Annotated[str, Query(max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
OptId = Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


@router.get("/me", response_model=Me, summary="Who the caller is (any role)")
def me(request: Request) -> Me:
    who = console_of(request).principal(request)
    u = who.user
    return Me(username=u.username, display_name=u.display_name, role=u.role,
              scope_kind=u.scope_kind, scope_id=u.scope_id, via=who.via)  # fmt: skip


@router.get("/wall", response_model=Wall, summary="The fleet wall at one level (any role)")
def wall(
    request: Request,
    subbranch: OptId = None,
    branch: OptId = None,
    type: OptId = None,
    vendor: Annotated[str | None, Query(max_length=64)] = None,
    state: OptId = None,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
) -> Any:
    c = console_of(request)
    who = c.principal(request)
    return c.fleet.fresh().wall(who.user, subbranch, branch, type, vendor, state, page,
                                c.settings.page_size)  # fmt: skip


@router.get("/devices/{device_id}", response_model=Obj, summary="A device (any role)")
def device(request: Request, device_id: str) -> Obj:
    v = console_of(request).device_view(request, device_id)
    d = v.pop("device")
    return {"id": d.id, "branch": d.branch, "subbranch": d.subbranch, "type": d.type,
            "vendor": d.vendor, "model": d.model, "placement": d.placement, **v}  # fmt: skip


@router.get("/incidents", response_model=Obj, summary="The incidents board (any role)")
def incidents(
    request: Request,
    include_closed: bool = False,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    state: Annotated[
        Literal["open", "acknowledged", "dispatched", "on_site", "restored", "closed"] | None,
        Query(),
    ] = None,
) -> Obj:
    c = console_of(request)
    who = c.principal(request)
    with c.conn() as conn:
        return ops.incidents_board(conn, c.rules, who.user, include_closed, page, c.settings.page_size,
                                   state)  # fmt: skip


@router.get("/incidents/{incident_id}", response_model=Obj,
            summary="An incident and its history (any role)")  # fmt: skip
def incident(request: Request, incident_id: Annotated[int, Path(ge=1, le=2**62)]) -> Obj:
    c = console_of(request)
    who = c.principal(request)
    with c.conn() as conn:
        return ops.incident_detail(conn, c.rules, who.user, incident_id)


@router.post("/incidents/{incident_id}/{action}", response_model=Obj,
             summary="Act on an incident (operator)")  # fmt: skip
def incident_act(
    request: Request,
    incident_id: Annotated[int, Path(ge=1, le=2**62)],
    action: Literal["ack", "dispatch", "arrive", "suspend", "resume", "restore", "close",
                    "reopen"],
    body: Annotated[Action, Body()] = Action(),  # noqa: B008
    x_csrf_token: Csrf = None,
) -> Obj:  # fmt: skip
    c = console_of(request)
    who = c.writer(request, x_csrf_token, "viewer")
    with c.conn() as conn:
        return ops.incident_action(conn, who, c.rules, incident_id, action,
                                   body.model_dump())  # fmt: skip


@router.get("/stops", response_model=list[Obj], summary="Planned stops (any role)")
def stops(
    request: Request,
    status: Annotated[Literal["requested", "approved", "rejected", "cancelled"] | None,
                      Query()] = None,
    device_id: OptId = None,
) -> list[Obj]:  # fmt: skip
    c = console_of(request)
    who = c.principal(request)
    with c.conn() as conn:
        return ops.stops_list(conn, who, status, device_id)


@router.post("/stops", response_model=Obj, status_code=201,
             summary="Register a planned stop (operator)")  # fmt: skip
def stop_add(request: Request, body: StopIn, x_csrf_token: Csrf = None) -> Obj:
    c = console_of(request)
    who = c.writer(request, x_csrf_token, "viewer")
    with c.conn() as conn:
        return ops.stop_add(conn, who, c.rules, body.model_dump())


@router.post("/stops/{stop_id}/{action}", response_model=Obj,
             summary="Approve or reject (admin), or cancel (operator) a planned stop")  # fmt: skip
def stop_act(
    request: Request,
    stop_id: Annotated[int, Path(ge=1, le=2**62)],
    action: Literal["approve", "reject", "cancel"],
    body: Annotated[StopAction, Body()] = StopAction(),  # noqa: B008
    x_csrf_token: Csrf = None,
) -> Obj:
    c = console_of(request)
    who = c.writer(request, x_csrf_token, "viewer")
    with c.conn() as conn:
        return ops.stop_act(conn, who, c.rules, stop_id, action, body.model_dump())


@router.get("/bulletins", response_model=list[Obj],
            summary="The bulletin archive of the caller's scope (any role)")  # fmt: skip
def bulletins(request: Request) -> list[Obj]:
    c = console_of(request)
    who = c.principal(request)
    with c.conn() as conn:
        return ops.bulletins_list(conn, who.user, c.bulletins)


@router.post("/bulletins", response_model=list[str], status_code=201,
             summary="Generate a bulletin for the caller's scope (operator)")  # fmt: skip
def bulletin_generate(request: Request, body: BulletinIn, x_csrf_token: Csrf = None) -> list[str]:
    c = console_of(request)
    who = c.writer(request, x_csrf_token, "viewer")
    with c.conn() as conn:
        return ops.bulletin_generate(conn, who, c.rules, c.bulletins, body.kind, body.period,
                                     body.lang)  # fmt: skip


@router.get("/bulletins/{scope}/{name}", summary="Download a bulletin file (any role)",
            response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}}}})  # fmt: skip
def bulletin_file(request: Request, scope: str, name: str) -> FileResponse:
    c = console_of(request)
    who = c.principal(request)
    with c.conn() as conn:
        path = ops.bulletin_path(conn, who.user, c.bulletins, scope, name)
    return FileResponse(path, filename=name)


@router.get("/kpi/{kind}", response_model=Obj,
            summary="Uptime, substitution or low-yield (any role; within the caller's scope)")  # fmt: skip
def kpi(
    request: Request,
    kind: Literal["uptime", "substitution", "low-yield"],
    scope: Annotated[str | None, Query(max_length=80)] = None,
    first: Annotated[date | None, Query(alias="from")] = None,
    last: Annotated[date | None, Query(alias="to")] = None,
) -> Obj:
    c = console_of(request)
    who = c.principal(request)
    with c.conn() as conn:
        report = kpi_report(conn, c.rules, who.user, kind, scope or report_scope(who.user),
                            first, last)  # fmt: skip
    import json

    from rules.report import to_json

    return json.loads(to_json(report))  # type: ignore[no-any-return]


@router.get("/audit", response_model=list[Obj], summary="The audit log, newest first (admin)")
def audit(
    request: Request,
    actor: Annotated[str | None, Query(max_length=64)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 200,
) -> list[Obj]:
    c = console_of(request)
    who = c.principal(request)
    with c.conn() as conn:
        return ops.audit_rows(conn, who, limit, actor, action)


# ------------------------------------------------------------------------ commands

CommandId = Annotated[str, Path(max_length=40, pattern=r"^[0-9]{14}-[0-9a-f]{8}$")]
DeviceId = Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


class CommandIn(BaseModel):
    kind: Literal["refresh", "restart", "out_of_service", "in_service", "journal"]
    confirm: bool = Field(False, description="Required for restart and out_of_service")
    since: str | None = Field(None, max_length=40,
                              description="journal: local date-time, e.g. 2026-12-01T09:00")  # fmt: skip
    until: str | None = Field(None, max_length=40)
    what: Literal["journal", "logs"] = "journal"
    expires_s: int | None = Field(None, ge=5, le=86_400)


class CommandEvent(BaseModel):
    at: str | None
    state: str
    source: str
    detail: dict[str, Any] | None


class CommandOut(BaseModel):
    id: str
    device_id: str
    kind: str
    params: dict[str, Any]
    state: Literal["queued", "sent", "accepted", "done", "failed", "rejected", "expired"]
    final: bool
    requested_by: str
    surface: str
    created_at: str | None
    expires_at: str | None
    updated_at: str | None
    finished_at: str | None
    reason: str | None
    result: dict[str, Any] | None
    history: list[CommandEvent]
    journal_bytes: int | None


@router.get("/commands", response_model=list[CommandOut],
            summary="The latest commands of the caller's scope, newest first (any role)")  # fmt: skip
def commands_list(
    request: Request,
    device_id: OptId = None,
    state: Annotated[
        Literal["queued", "sent", "accepted", "done", "failed", "rejected", "expired"] | None,
        Query(),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[Obj]:
    from web import commands as cmds

    c = console_of(request)
    who = c.principal(request)
    with c.conn() as conn:
        return [cmds.as_dict(x) for x in cmds.listing(conn, who, device_id, state, limit)]


@router.get("/commands/{command_id}", response_model=CommandOut,
            summary="A command and its state history (any role, within the scope)")  # fmt: skip
def command(request: Request, command_id: CommandId) -> Obj:
    from web import commands as cmds

    c = console_of(request)
    who = c.principal(request)
    with c.conn() as conn:
        return cmds.as_dict(cmds.show(conn, who, command_id))


@router.post("/devices/{device_id}/commands", response_model=CommandOut, status_code=201,
             summary="Send a command to a device (operator, within the scope; restart and "
             "out_of_service need confirm)")  # fmt: skip
def command_send(
    request: Request, device_id: DeviceId, body: CommandIn, x_csrf_token: Csrf = None
) -> Obj:
    from web import commands as cmds

    c = console_of(request)
    who = c.writer(request, x_csrf_token, "viewer")
    c.device_view_check(request, device_id)
    params = (cmds.journal_params(body.model_dump(exclude_none=True), c.rules.tz)
              if body.kind == "journal" else {})  # fmt: skip
    with c.conn() as conn:
        cmd = cmds.send(conn, who, c.rules, c.publisher, device_id, body.kind, params,
                        body.confirm, body.expires_s)  # fmt: skip
    return cmds.as_dict(cmd)


@router.get("/commands/{command_id}/journal", summary="Download a command's journal (operator)",
            response_class=Response,
            responses={200: {"content": {"application/octet-stream": {}}}})  # fmt: skip
def command_journal(request: Request, command_id: CommandId) -> Response:
    from web import commands as cmds

    c = console_of(request)
    who = c.principal(request)
    with c.conn() as conn:
        return cmds.journal_response(conn, who, command_id)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------- cash


@router.get("/cash/plan", response_model=Obj,
            summary="The replenishment plan 加钞计划 of a day for the caller's scope (any role)")  # fmt: skip
def cash_plan(request: Request, day: Annotated[date | None, Query(alias="date")] = None) -> Obj:
    from web import cash
    from web.pages import _plan_day

    c = console_of(request)
    who = c.principal(request)
    chosen = _plan_day(request, day.isoformat() if day else "")
    with c.conn() as conn:
        return cash.plan(conn, c.rules, who, chosen).as_json()
