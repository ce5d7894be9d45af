"""What the console does, shared by its pages and its JSON API: every read restricted to
the caller's org scope here (the data layer), every write through the owning part's
service (incidents/service.py, stops/service.py), which checks role and scope again and
writes the audit row in the same transaction.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from atmfleet.errors import Forbidden, UsageError
from atmfleet.store.audit import User
from rules.config import Rules
from web.auth import Principal
from web.scope import sees, where

Conn = psycopg.Connection[Any]


class NotFound(UsageError):
    """The object does not exist, or is outside the caller's scope (404 either way)."""


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


# ------------------------------------------------------------------------ incidents


def incidents_available() -> bool:
    try:
        import incidents.service  # noqa: F401
    except ImportError:
        return False
    return True


def _incident_dict(inc: Any, now: datetime | None = None) -> dict[str, Any]:
    out = {k: _plain(v) for k, v in inc.snapshot().items()}
    out["allowed"] = [a.value for a in inc.allowed()]
    out["suspended"] = inc.suspended
    return out


def incidents_board(
    conn: Conn, rules: Rules, user: User, include_closed: bool = False, page: int = 1, page_size: int = 200,
    state: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The board: open incidents in the user's scope (oldest first: they are closest to
    their SLA), paged, with counts by state and each one's SLA deadlines."""
    from incidents.model import SELECT_COLUMNS, from_row

    cond, params = where(user, "subbranch_id", "branch_id")
    filters = [cond]
    if not include_closed:
        filters.append("state <> 'closed'")
    if state:
        filters.append("state = %s")
        params = [*params, state]
    text = " AND ".join(filters)
    counts = dict(
        conn.execute(
            f"SELECT state, count(*) FROM incidents WHERE {text} GROUP BY state", params
        ).fetchall()
    )
    total = sum(counts.values())
    pages = max(1, -(-total // page_size))
    page = min(max(page, 1), pages)
    rows = conn.execute(
        f"SELECT {SELECT_COLUMNS} FROM incidents WHERE {text}"
        " ORDER BY (state = 'closed'), opened_at, id LIMIT %s OFFSET %s",
        [*params, page_size, (page - 1) * page_size],
    ).fetchall()
    found = [from_row(r) for r in rows]
    due = sla_due(conn, rules, found)
    items = []
    for inc in found:
        d = _incident_dict(inc)
        d["sla"] = due.get(inc.id)
        items.append(d)
    now = conn.execute("SELECT now()").fetchone()
    return {
        "counts": counts, "total": total, "page": page, "pages": pages, "items": items,
        "now": _plain(now[0]) if now else None,
    }  # fmt: skip


def sla_due(conn: Conn, rules: Rules, found: list[Any]) -> dict[int, dict[str, Any] | None]:
    """Each incident's next running SLA deadline — the breach of its response clock
    (dispatch -> on site) or repair clock (open -> restored) that falls due first — by the
    incidents part's own clock arithmetic (incidents.sla.due_at: the contract's calendar
    or service hours, suspensions paused); None when no clock runs or no contract applies.
    """
    from incidents.sla import due_at, pauses_from
    from rules.timeline import from_ms, ms
    from rules.uptime import WindowSpans, scheduled_spans

    if not found:
        return {}
    ids = [i.id for i in found]
    history: dict[int, list[tuple[str, int]]] = {}
    for incident_id, kind, at in conn.execute(
        "SELECT incident_id, kind, at FROM incident_events WHERE incident_id = ANY(%s)"
        " AND kind IN ('suspended', 'resumed') ORDER BY id",
        (ids,),
    ):
        history.setdefault(incident_id, []).append((kind, ms(at)))
    devices = _devices(conn, sorted({i.device_id for i in found}))
    windows = WindowSpans(rules.tz)

    def local_date(value: int) -> date:
        return from_ms(value).astimezone(rules.tz).date()

    out: dict[int, dict[str, Any] | None] = {}
    for inc in found:
        contract = rules.sla.by_name(inc.contract)
        out[inc.id] = None
        if contract is None or inc.state in ("restored", "closed"):
            continue
        device = devices.get(inc.device_id)
        day_spans: Any = None
        if contract.clock == "service" and device is not None:

            def spans_of(day: date, device: Any = device) -> list[tuple[int, int]]:
                return scheduled_spans(device, day, rules, windows)

            day_spans = spans_of

        since = ms(inc.cycle_at)
        pauses = pauses_from(history.get(inc.id, []), since) if contract.suspension_pauses else []
        running = []
        if inc.dispatched_at and not inc.on_site_at and contract.response_hours:
            running.append(("response", ms(inc.dispatched_at), contract.response_hours))
        if contract.repair_hours:
            repair_start = (
                inc.started_at if contract.repair_from == "started" and inc.cycle == 0
                else inc.cycle_at
            )  # fmt: skip
            running.append(("repair", ms(repair_start), contract.repair_hours))
        best: tuple[int, str] | None = None
        for name, begin, hours in running:
            due = due_at(begin, hours * 3600, pauses, day_spans,
                         local_date if day_spans else None)  # fmt: skip
            if due is not None and (best is None or due < best[0]):
                best = (due, name)
        if best is not None:
            out[inc.id] = {"deadline": best[1], "due_at": from_ms(best[0]).isoformat(),
                           "contract": contract.name}  # fmt: skip
    return out


def _devices(conn: Conn, ids: list[str]) -> dict[str, Any]:
    from atmfleet.inventory import Device, DeviceType, Placement

    rows = conn.execute(
        "SELECT id, branch, type, placement, vendor, model, commissioned, decommissioned,"
        " service_window, deposit_capable, heartbeat_s FROM devices WHERE id = ANY(%s)",
        (ids,),
    ).fetchall()
    return {
        r[0]: Device.model_construct(
            id=r[0],
            branch=r[1],
            type=DeviceType(r[2]),
            placement=Placement(r[3]),
            vendor=r[4],
            model=r[5],
            commissioned=r[6],
            decommissioned=r[7],
            service_window=r[8],
            deposit_capable=r[9],
            heartbeat_s=r[10],
        )
        for r in rows
    }


def incident_detail(conn: Conn, rules: Rules, user: User, incident_id: int) -> dict[str, Any]:
    from incidents.model import events_of, load

    inc = load(conn, incident_id)
    if inc is None or not sees(user, inc.subbranch_id, inc.branch_id):
        raise NotFound(f"no incident {incident_id}")
    d = _incident_dict(inc)
    d["sla"] = sla_due(conn, rules, [inc]).get(inc.id)
    d["events"] = [
        {"id": e.id, "at": _plain(e.at), "kind": e.kind, "actor": e.actor,
         "from_state": e.from_state, "to_state": e.to_state, "detail": e.detail}
        for e in events_of(conn, incident_id)
    ]  # fmt: skip
    return d


def _when(text: str | None, rules: Rules, field: str) -> datetime | None:
    """A local date-time (the bank's time zone) from a form or API field."""
    if text is None or not text.strip():
        return None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"{field}: {text!r} is not a date-time (YYYY-MM-DDTHH:MM)") from None
    return value if value.tzinfo else value.replace(tzinfo=rules.tz)


def incident_action(
    conn: Conn, who: Principal, rules: Rules, incident_id: int, action: str,
    values: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """One action of the incidents service (ack, dispatch, arrive, suspend, resume,
    restore, close, reopen) on an incident the caller can see, as an operator."""
    from incidents.model import Action, load
    from incidents.service import ACTIONS

    inc = load(conn, incident_id)
    if inc is None or not sees(who.user, inc.subbranch_id, inc.branch_id):
        raise NotFound(f"no incident {incident_id}")
    who.require("operator")
    try:
        act = Action(action)
    except ValueError:
        raise UsageError(
            f"action {action!r}: allowed: {', '.join(a.value for a in Action)}"
        ) from None
    version = values.get("expected_version")
    kwargs: dict[str, Any] = {
        "expected_version": int(version) if version not in (None, "") else None
    }
    remarks = (values.get("remarks") or "").strip() or None
    if act is Action.DISPATCH:
        eta = _when(values.get("eta"), rules, "eta")
        contract = rules.sla.by_name(inc.contract)
        if eta is None and contract is not None and contract.response_hours:
            # No ETA given: the contract's response deadline (dispatch -> on site).
            now = conn.execute("SELECT now()").fetchone()
            assert now is not None
            eta = now[0] + timedelta(hours=contract.response_hours)
        if eta is None:
            raise UsageError("dispatch needs an ETA (eta: the local time the technician arrives)")
        kwargs.update(eta=eta, maintainer_id=(values.get("maintainer_id") or None),
                      remarks=remarks)  # fmt: skip
    elif act is Action.SUSPEND:
        kwargs["reason"] = values.get("reason") or ""
    elif act is Action.CLOSE:
        kwargs.update(cause=values.get("cause") or "", remarks=remarks or "")
    elif act is Action.REOPEN:
        kwargs["reason"] = values.get("reason") or ""
    elif act in (Action.ACK, Action.RESUME):
        kwargs["remarks"] = remarks
    with conn.transaction():
        run: Any = ACTIONS[act]
        done = run(conn, incident_id, who.actor, **kwargs)
    return _incident_dict(done)


def device_incidents(conn: Conn, user: User, device_id: str) -> list[dict[str, Any]]:
    if not incidents_available():
        return []
    from incidents.service import list_incidents

    found = list_incidents(conn, states=None, device_id=device_id, user=user, limit=20)
    return [_incident_dict(i) for i in found]


# --------------------------------------------------------------------------- stops


def stops_available() -> bool:
    try:
        import stops.service  # noqa: F401
    except ImportError:
        return False
    return True


def _stop_dict(s: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return {k: _plain(v) for k, v in asdict(s).items()}


def stops_list(
    conn: Conn, who: Principal, status: str | None = None, device_id: str | None = None
) -> list[dict[str, Any]]:
    """Planned stops in the caller's scope (the service filters by the actor's scope)."""
    from stops.service import list_stops

    found = list_stops(conn, who.actor, status=status or None, device_id=device_id)
    return [_stop_dict(s) for s in found]


def stop_add(conn: Conn, who: Principal, rules: Rules, values: dict[str, Any]) -> dict[str, Any]:
    from stops.service import add

    who.require("operator")
    device_id = (values.get("device_id") or "").strip() or None
    branch_id = (values.get("branch_id") or "").strip() or None
    starts = _when(values.get("starts_at"), rules, "starts_at")
    ends = _when(values.get("ends_at"), rules, "ends_at")
    if starts is None or ends is None:
        raise UsageError("starts_at and ends_at are required")
    if device_id and branch_id:
        raise UsageError("give a device or a branch, not both")
    if device_id:
        row = conn.execute(
            "SELECT b.subbranch, b.id FROM devices d JOIN branches b ON b.id = d.branch"
            " WHERE d.id = %s",
            (device_id,),
        ).fetchone()
    elif branch_id:
        row = conn.execute(
            "SELECT subbranch, id FROM branches WHERE id = %s", (branch_id,)
        ).fetchone()
    else:
        raise UsageError("give a device or a branch")
    if row is None or not sees(who.user, row[0], row[1]):
        raise NotFound(f"no device or branch {device_id or branch_id} in your scope")
    with conn.transaction():
        stop = add(
            conn, who.actor, rules=rules, starts_at=starts, ends_at=ends,
            reason=values.get("reason") or "", device_id=device_id, branch_id=branch_id,
            remarks=values.get("remarks") or "",
        )  # fmt: skip
    return _stop_dict(stop)


def stop_act(
    conn: Conn, who: Principal, rules: Rules, stop_id: int, action: str, values: dict[str, Any]
) -> dict[str, Any]:
    from stops import service

    try:
        service.get(conn, stop_id, who.actor)
    except (UsageError, Forbidden):
        raise NotFound(f"no planned stop {stop_id}") from None
    version = values.get("expected_version")
    expected = int(version) if version not in (None, "") else None
    remarks = values.get("remarks") or ""
    with conn.transaction():
        if action == "approve":
            who.require("admin")
            s = service.approve(conn, stop_id, who.actor, rules=rules, expected_version=expected)
        elif action == "reject":
            who.require("admin")
            s = service.reject(conn, stop_id, who.actor, rules=rules, remarks=remarks,
                               expected_version=expected)  # fmt: skip
        elif action == "cancel":
            who.require("operator")
            s = service.cancel(conn, stop_id, who.actor, remarks=remarks,
                               expected_version=expected)  # fmt: skip
        else:
            raise UsageError(f"action {action!r}: allowed: approve, reject, cancel")
    return _stop_dict(s)


def device_stops(conn: Conn, who: Principal, device_id: str) -> list[dict[str, Any]]:
    if not stops_available():
        return []
    return stops_list(conn, who, device_id=device_id)


# ------------------------------------------------------------------------- devices


def latest_sample(conn: Conn, device_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT ts, state, components, cash_units, faults FROM state_samples"
        " WHERE device_id = %s ORDER BY ts DESC LIMIT 1",
        (device_id,),
    ).fetchone()
    if row is None:
        return None
    return {"ts": _plain(row[0]), "state": row[1], "components": row[2],
            "cash_units": row[3], "faults": list(row[4])}  # fmt: skip


# ------------------------------------------------------------------------ bulletins

_FILE = re.compile(r"^bulletin-(daily|monthly|quarterly)-[0-9]{4}(-[0-9]{2}){0,2}(-Q[1-4])?"
                   r"\.(zh-CN|en)\.(xlsx|html|json|csv\.zip|zip)$")  # fmt: skip
_SCOPE_DIR = re.compile(r"^(fleet|subbranch-[A-Za-z0-9_.-]+|branch-[A-Za-z0-9_.-]+)$")


def scope_dir(user: User) -> str:
    return "fleet" if user.scope_kind == "fleet" else f"{user.scope_kind}-{user.scope_id}"


def _dir_visible(conn: Conn, user: User, name: str) -> bool:
    if not _SCOPE_DIR.match(name):
        return False
    if user.scope_kind == "fleet":
        return True
    kind, _, value = name.partition("-")
    if kind == "subbranch":
        return sees(user, value, None)
    row = conn.execute("SELECT subbranch FROM branches WHERE id = %s", (value,)).fetchone()
    return row is not None and sees(user, row[0], value)


def bulletins_list(conn: Conn, user: User, root: Path) -> list[dict[str, Any]]:
    """The archive: every bulletin file of a scope the user can see, newest first,
    grouped by bulletin (one entry per kind, period, language and scope)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    if not root.is_dir():
        return []
    for folder in sorted(root.iterdir()):
        if not folder.is_dir() or not _dir_visible(conn, user, folder.name):
            continue
        for f in folder.iterdir():
            m = _FILE.match(f.name)
            if not m:
                continue
            stem = f.name.split(".")[0]
            lang = m[4]
            entry = out.setdefault(
                (folder.name, stem + "." + lang),
                {"scope": folder.name, "kind": m[1], "period": stem.split("-", 2)[2],
                 "lang": lang, "files": {}},
            )  # fmt: skip
            entry["files"][m[5]] = f.name
    return sorted(out.values(), key=lambda e: (e["period"], e["scope"]), reverse=True)


def bulletin_path(conn: Conn, user: User, root: Path, scope: str, name: str) -> Path:
    if not _dir_visible(conn, user, scope) or not _FILE.match(name):
        raise NotFound(f"no bulletin {scope}/{name}")
    path = root / scope / name
    if not path.is_file():
        raise NotFound(f"no bulletin {scope}/{name}")
    return path


def bulletin_generate(
    conn: Conn, who: Principal, rules: Rules, root: Path, kind: str, period: str, lang: str
) -> list[str]:
    """Generate a bulletin for the caller's scope (operators and admins): a daily one for
    any scope; the monthly and quarterly assessments rank the sub-branches, so they are
    the whole fleet's and need a fleet-wide user."""
    from atmfleet.store.audit import record
    from exporters.bulletin import build
    from exporters.bulletin.messages import Messages
    from exporters.bulletin_cli import parse_day, parse_month, parse_quarter, write
    from rules.feed import Feed
    from rules.report import Context, Scope

    who.require("operator")
    user = who.user
    if kind not in ("daily", "monthly", "quarterly"):
        raise UsageError(f"kind {kind!r}: allowed: daily, monthly, quarterly")
    if kind != "daily" and user.scope_kind != "fleet":
        raise Forbidden(f"the {kind} assessment ranks every sub-branch: it needs a fleet user")
    m = Messages("en" if lang == "en" else "zh-CN")
    feed = Feed(conn, rules)
    horizon = feed.now_ms()
    today = build.local_today(horizon, rules)
    if kind == "daily":
        day = parse_day(period) if period else today - timedelta(days=1)
        first = last = day
    elif kind == "monthly":
        first, last = parse_month(period)
    else:
        first, last = parse_quarter(period)
    if kind != "daily" and last >= today:
        last = today - timedelta(days=1)
    if last > today or last < first:
        raise UsageError(f"{period}: no complete day of it yet (today is {today})")
    inventory = feed.inventory()
    generated = build.now_text(horizon, rules)
    if kind == "daily":
        if user.scope_kind == "fleet":
            b = build.daily_bulletin(feed, inventory, last, horizon, m, generated)
        else:
            ctx = Context.make(
                feed, inventory, Scope(user.scope_kind, user.scope_id or ""), last, last, horizon
            )
            b = build.daily(ctx, m, generated, 0)
    else:
        b = build.assessment(feed, inventory, first, last, horizon, kind, m, generated)
    folder = root / scope_dir(user)
    folder.mkdir(parents=True, exist_ok=True)
    paths = write(b, ["html", "xlsx", "csv", "json"], folder, m)
    record(conn, who.actor, "bulletin.generate", "bulletin", f"{scope_dir(user)}/{kind}/{period}",
           after={"kind": kind, "first": first, "last": last, "lang": m.lang,
                  "files": [p.name for p in paths]})  # fmt: skip
    conn.commit()
    return [p.name for p in paths]


# ---------------------------------------------------------------------------- audit


AUDIT_COLUMNS = ("id", "at", "actor", "surface", "action", "object_type", "object_id",
                 "before", "after", "detail")  # fmt: skip


def audit_rows(
    conn: Conn, who: Principal, limit: int = 200, actor: str | None = None,
    action: str | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    who.require("admin")
    filters, params = ["TRUE"], []
    if actor:
        filters.append("actor = %s")
        params.append(actor)
    if action:
        filters.append("action LIKE %s")
        params.append(action.replace("%", "") + "%")
    rows = conn.execute(
        f"SELECT {', '.join(AUDIT_COLUMNS)} FROM audit_log WHERE {' AND '.join(filters)}"
        " ORDER BY id DESC LIMIT %s",
        [*params, limit],
    ).fetchall()
    return [{k: _plain(v) for k, v in zip(AUDIT_COLUMNS, r, strict=True)} for r in rows]
