"""The replenishment plan 加钞计划: which devices need cash in a day's rounds, how much.

:func:`plan_for` is the one entry point (the CLI ``atmfleet cash plan`` and the web console
call it); :func:`build_plan` is its pure core.

Rules (``cash.plan`` in the rules file): each device is served by its branch's round
(``branches``) or its placement's (``rounds``): on-site devices by the branch's staff,
off-site ones and self-service bank rooms by the cash-in-transit company, on given
weekdays at a local time. For a plan date D:

- a device whose round falls on D **needs cash** when the earliest time of its forecast
  cash-out interval is before its following round plus ``safety_margin_hours``; it
  **needs its deposit cassette emptied** (清机) on the same test for deposit-full;
- a device whose round does not fall on D is listed as **extra visit** (加急) when it is
  expected to run out before its next round;
- the amount per denomination fills each unit to its capacity (``capacity`` reported, else
  ``cassette_capacity_notes``) from its expected count at the round, in whole bundles
  of 100 notes (一把) that fit (rounded down: a cassette cannot take more);
- a device with no forecast (no history, no cash units reported) is listed apart as
  "no forecast": no data is never "needs no cash".

Who may: any registered user (viewer and up), limited to the user's org scope; every
plan made is written to the audit log (action ``cash.plan``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import numpy as np
import psycopg

from atmfleet.errors import Forbidden, UsageError
from atmfleet.inventory import Inventory
from atmfleet.store.audit import Actor, User, record, require_role
from cash.forecast import (
    DISPENSING,
    UNUSABLE,
    DeviceCash,
    DeviceForecast,
    Fits,
    Forecast,
    fit_fleet,
    model_means,
    predict,
)
from cash.model import HOUR_MS, hour_axis
from cash.store import Loaded, load
from rules.config import CashRules, Round, Rules
from rules.report import Scope

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
BUNDLE = 100  # notes in a bundle (一把)


@dataclass(frozen=True, slots=True)
class Amount:
    denomination: int
    notes: int

    @property
    def value(self) -> int:
        return self.denomination * self.notes


@dataclass(frozen=True, slots=True)
class PlanDevice:
    device_id: str
    branch: str
    branch_name: str
    subbranch: str
    placement: str
    type: str
    by: str  # branch | cit
    action: str  # replenish | extra_visit
    round_at: datetime | None  # this plan's round (None: extra visit, no round on the day)
    next_round_at: datetime | None
    cash_out_at: datetime | None
    cash_out_earliest: datetime | None
    deposit_full_at: datetime | None
    needs_cash: bool
    empty_deposit: bool
    amounts: tuple[Amount, ...]

    def as_json(self) -> dict[str, Any]:
        def iso(x: datetime | None) -> str | None:
            return None if x is None else x.isoformat()

        return {
            "device_id": self.device_id, "branch": self.branch, "branch_name": self.branch_name,
            "subbranch": self.subbranch, "placement": self.placement, "type": self.type,
            "by": self.by, "action": self.action, "round_at": iso(self.round_at),
            "next_round_at": iso(self.next_round_at), "cash_out_at": iso(self.cash_out_at),
            "cash_out_earliest": iso(self.cash_out_earliest),
            "deposit_full_at": iso(self.deposit_full_at), "needs_cash": self.needs_cash,
            "empty_deposit": self.empty_deposit,
            "amounts": [
                {"denomination": a.denomination, "notes": a.notes, "value": a.value}
                for a in self.amounts
            ],
        }  # fmt: skip


@dataclass
class SubbranchPlan:
    id: str
    name: str
    devices: list[PlanDevice] = field(default_factory=list)

    def totals(self) -> dict[int, int]:
        """Notes per denomination for the whole sub-branch."""
        out: dict[int, int] = {}
        for d in self.devices:
            for a in d.amounts:
                out[a.denomination] = out.get(a.denomination, 0) + a.notes
        return dict(sorted(out.items(), reverse=True))


@dataclass
class Plan:
    date: date
    made_at: datetime  # local
    scope: str
    subbranches: list[SubbranchPlan]
    no_forecast: list[tuple[str, str]]  # (device id, reason)

    def as_json(self) -> dict[str, Any]:
        return {
            "date": self.date.isoformat(),
            "made_at": self.made_at.isoformat(),
            "scope": self.scope,
            "subbranches": [
                {
                    "id": s.id,
                    "name": s.name,
                    "totals": [
                        {"denomination": k, "notes": v, "value": k * v}
                        for k, v in s.totals().items()
                    ],
                    "devices": [d.as_json() for d in s.devices],
                }
                for s in self.subbranches
            ],
            "no_forecast": [{"device_id": d, "reason": r} for d, r in self.no_forecast],
        }

    @property
    def device_count(self) -> int:
        return sum(len(s.devices) for s in self.subbranches)


def round_of(rules: CashRules, branch: str, placement: str) -> Round:
    got = rules.plan.branches.get(branch)
    if got is not None:
        return got
    for p, r in rules.plan.rounds.items():
        if p.value == placement:
            return r
    raise UsageError(f"no replenishment round for placement {placement!r}")  # validated


def round_times(r: Round, after: datetime, tz: Any, count: int = 2) -> list[datetime]:
    """The next ``count`` rounds at or after ``after`` (local times)."""
    hh, mm = (int(x) for x in r.at.split(":"))
    days = {WEEKDAYS.index(d) for d in r.days}
    out: list[datetime] = []
    day = after.astimezone(tz).date()
    while len(out) < count:
        if day.weekday() in days:
            at = datetime.combine(day, time(hh, mm), tz)
            if at >= after:
                out.append(at)
        day += timedelta(days=1)
    return out


def _bundles(notes: float) -> int:
    """Whole bundles that fit in ``notes`` of room."""
    return math.floor(max(notes, 0.0) / BUNDLE + 1e-9) * BUNDLE


def build_plan(
    on: date,
    inventory: Inventory,
    devices: Sequence[DeviceCash],
    forecast: Forecast,
    drawn: dict[str, dict[int, float]],
    rules: CashRules,
    scope: str = "fleet",
) -> Plan:
    """The plan for local day ``on``. ``drawn``: per device, the notes per denomination
    expected to be drawn from now until its round that day (see :func:`expected_drawn`)."""
    tz = forecast.tz
    day_start = datetime.combine(on, time(0, 0), tz)
    margin = timedelta(hours=rules.plan.safety_margin_hours)
    by_id = forecast.by_device()
    subs = {s.id: SubbranchPlan(s.id, s.name) for s in inventory.subbranches}
    no_forecast: list[tuple[str, str]] = []
    for dev in devices:
        d = inventory.device_by_id[dev.device_id]
        branch = inventory.branch_by_id[d.branch]
        f: DeviceForecast | None = by_id.get(dev.device_id)
        if f is None or f.reason is not None:
            no_forecast.append(
                (dev.device_id, (f.reason if f is not None else None) or "no_history")
            )
            continue
        r = round_of(rules, d.branch, d.placement.value)
        first, second = round_times(r, day_start, tz)
        today = first.date() == on
        out = f.cash_out()
        full = f.deposit_full()
        earliest = None if out is None else (out.earliest or out.at)
        full_early = None if full is None else (full.earliest or full.at)
        if today:
            needs_cash = earliest is not None and earliest < second + margin
            empty = full_early is not None and full_early < second + margin
            action, round_at, nxt = "replenish", first, second
        else:
            needs_cash = earliest is not None and earliest < first
            empty = full_early is not None and full_early < first
            action, round_at, nxt = "extra_visit", None, first
        if not (needs_cash or empty):
            continue
        amounts: list[Amount] = []
        if needs_cash:
            caps: dict[int, float] = {}
            counts: dict[int, int] = {}
            for u in dev.units:
                if u.type in DISPENSING and u.status not in UNUSABLE and u.denomination > 0:
                    cap = (
                        u.capacity if u.capacity is not None else rules.plan.cassette_capacity_notes
                    )
                    caps[u.denomination] = caps.get(u.denomination, 0) + cap
                    counts[u.denomination] = counts.get(u.denomination, 0) + u.count
            for denom in sorted(caps, reverse=True):
                left = counts[denom] - drawn.get(dev.device_id, {}).get(denom, 0.0)
                room = caps[denom] - max(left, 0.0)
                notes = _bundles(room)
                if notes > 0:
                    amounts.append(Amount(denom, notes))
        subs[branch.subbranch].devices.append(
            PlanDevice(
                d.id, d.branch, branch.name, branch.subbranch, d.placement.value, d.type.value,
                r.by, action, round_at, nxt, None if out is None else out.at, earliest,
                None if full is None else full.at, needs_cash, empty, tuple(amounts),
            )
        )  # fmt: skip
    made = datetime.fromtimestamp(forecast.now / 1000, UTC).astimezone(tz).replace(microsecond=0)
    chosen = [s for s in subs.values() if s.devices]
    for s in chosen:
        s.devices.sort(key=lambda p: (p.action != "extra_visit", p.branch, p.device_id))
    return Plan(on, made, scope, sorted(chosen, key=lambda s: s.id), sorted(no_forecast))


def expected_drawn(
    devices: Sequence[DeviceCash],
    fits: Fits,
    now: int,
    until: dict[str, datetime],
    rules: CashRules,
    tz: Any,
) -> dict[str, dict[int, float]]:
    """Per device, the notes per dispensing denomination expected to be drawn from when
    its counts were reported until ``until[device]`` (the model's mean; recyclers net of
    recycled deposits)."""
    from cash.forecast import _shares  # the same split as the forecast's

    rows = [i for i, d in enumerate(devices) if d.device_id in until]
    counted = [now if d.units_at is None else min(now, d.units_at) for d in devices]
    start = min((counted[i] for i in rows), default=now) // HOUR_MS * HOUR_MS
    if not rows:
        return {}
    last = max(until[devices[i].device_id] for i in rows)
    n_hours = max(1, math.ceil((last.timestamp() * 1000 - start) / HOUR_MS))
    future = hour_axis(start, n_hours, tz, rules.calendar)
    means = model_means(fits)
    idx = np.asarray(rows, np.int64)
    w_mean, _ = means("w", idx, future)
    d_mean, _ = means("d", idx, future)
    out: dict[str, dict[int, float]] = {}
    for k, i in enumerate(rows):
        dev = devices[i]
        # The share of each hour inside [counted, until): hour j is [start + j, start + j + 1).
        lo = (counted[i] - start) / HOUR_MS
        hi = (until[dev.device_id].timestamp() * 1000 - start) / HOUR_MS
        j = np.arange(n_hours)
        weights = np.clip(np.minimum(j + 1, hi) - np.maximum(j, lo), 0, 1)
        recycler = any(u.type == "recycle" for u in dev.units)
        value = float((w_mean[k] * weights).sum())
        if recycler:
            value -= rules.recycle_share * float((d_mean[k] * weights).sum())
        denoms = sorted(
            {u.denomination for u in dev.units if u.type in DISPENSING and u.denomination > 0}
        )
        if not denoms:
            continue
        shares = _shares(denoms, rules)
        out[dev.device_id] = {dn: max(value, 0.0) * shares[dn] / dn for dn in denoms}
    return out


def own_devices(user: User, inventory: Inventory) -> list[Any]:
    """The devices of the user's org scope (fleet, a sub-branch or a branch)."""
    if user.scope_kind == "fleet":
        return list(inventory.devices)
    branches = inventory.branch_by_id
    if user.scope_kind == "subbranch":
        return [d for d in inventory.devices if branches[d.branch].subbranch == user.scope_id]
    return [d for d in inventory.devices if d.branch == user.scope_id]


def _in_scope(user: User, scope: Scope, inventory: Inventory) -> Scope:
    """The scope asked for, refused when it reaches past the user's own."""
    if user.scope_kind == "fleet":
        return scope
    own = Scope(user.scope_kind, user.scope_id or "")
    if scope.kind == "fleet":
        return own
    asked = {d.id for d in scope.matching(inventory)}
    allowed = {d.id for d in own_devices(user, inventory)}
    if not asked <= allowed:
        raise Forbidden(f"user {user.username!r} may see {own} only; {scope} reaches beyond it")
    return scope


def plan_for(
    conn: psycopg.Connection,
    rules: Rules,
    on: date,
    actor: Actor,
    *,
    scope: str = "fleet",
    now: int | None = None,
    outputs: Sequence[str] = (),
) -> Plan:
    """The plan for ``on`` as ``actor`` may see it (viewer and up, the user's org scope);
    writes the audit row in the caller's transaction (commit it)."""
    user = require_role(conn, actor, "viewer")
    loaded: Loaded = load(conn, rules, now=now)
    today = datetime.fromtimestamp(loaded.now / 1000, UTC).astimezone(rules.tz).date()
    if on < today:
        raise UsageError(
            f"--date {on}: a plan is made before its rounds; give today ({today}) or later"
        )
    chosen_scope = _in_scope(user, Scope.parse(scope), loaded.inventory)
    wanted = {d.id for d in chosen_scope.matching(loaded.inventory)}
    rows = [i for i, d in enumerate(loaded.devices) if d.device_id in wanted]
    plan = _plan(loaded, rows, on, rules.cash, str(chosen_scope), rules)
    record(
        conn, actor, "cash.plan", "cash_plan", on.isoformat(),
        after={"scope": plan.scope, "devices": plan.device_count,
               "no_forecast": len(plan.no_forecast), "outputs": list(outputs)},
        detail=f"replenishment plan for {on} ({plan.scope}) as {user.role}",
    )  # fmt: skip
    return plan


def _plan(
    loaded: Loaded, rows: list[int], on: date, cash: CashRules, scope: str, rules: Rules
) -> Plan:
    tz = rules.tz
    devices = loaded.devices
    fits = fit_fleet(devices, loaded.history, cash)  # the whole fleet: shapes are pooled
    forecast = predict(devices, fits.withdrawn.ok, model_means(fits), loaded.now, cash, tz)
    chosen = [devices[i] for i in rows]
    day_start = datetime.combine(on, time(0, 0), tz)
    until = {}
    for dev in chosen:
        d = loaded.inventory.device_by_id[dev.device_id]
        first = round_times(round_of(cash, d.branch, d.placement.value), day_start, tz, 1)[0]
        until[dev.device_id] = first
    drawn = expected_drawn(devices, fits, loaded.now, until, cash, tz)
    keep = {d.device_id for d in chosen}
    forecast.devices = [f for f in forecast.devices if f.device_id in keep]
    return build_plan(on, loaded.inventory, chosen, forecast, drawn, cash, scope)
