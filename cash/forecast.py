"""From devices' cash units and their history to expected times, per cash unit.

Pure: plain values in (:class:`DeviceCash`, :class:`History`), plain values out
(:class:`UnitForecast`, :class:`DeviceForecast`); the SQL that feeds it is
:mod:`cash.store`, the arithmetic :mod:`cash.model`.

A device runs out (缺钞) when any denomination it dispenses runs out: units of one
denomination are drawn together, the denominations in the shares of the rules'
``dispense_mix``. A cash recycler's dispensing units are refilled by a share
(``recycle_share``) of its deposits, and its deposit cassette takes the rest. A deposit cassette fills at ``deposit_full_share`` of
its capacity with deposits of ``deposit_note_value`` per note.

No data is a value: a device monitored for fewer than ``min_history_days`` days, or
reporting no cash units, gets no time (``None``, with the reason), never a made-up one.
A time beyond the horizon is ``None`` with ``beyond_horizon`` set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import numpy as np

from cash.model import (
    F32,
    HOUR_MS,
    Fit,
    Hours,
    Params,
    crossings,
    cumulative_variance,
    fit,
    hour_axis,
    z_of,
)
from rules.config import CashRules

DISPENSING = frozenset({"dispense", "recycle"})
DEPOSIT = frozenset({"deposit"})
UNUSABLE = frozenset({"inop", "missing"})


@dataclass(frozen=True, slots=True)
class Unit:
    """A cash unit as its device reports it (protocol §5, ``cash_units[]``)."""

    id: str
    type: str
    denomination: int
    count: int
    capacity: int | None
    status: str

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Unit:
        cap = data.get("capacity")
        return cls(
            str(data["id"]),
            str(data["type"]),
            int(data.get("denomination") or 0),  # type: ignore[call-overload]
            int(data.get("count") or 0),  # type: ignore[call-overload]
            None if cap is None else int(cap),  # type: ignore[call-overload]
            str(data.get("status") or "ok"),
        )


@dataclass(frozen=True, slots=True)
class DeviceCash:
    """A device's cash units now, and what the forecast needs to know of it."""

    device_id: str
    group: str  # devices of one group share a shape and calendar factors (placement/type)
    units: tuple[Unit, ...]
    units_at: int | None  # ms: when the units were reported (None: never)


@dataclass
class History:
    """Per device (rows in the order of the devices) and hour of ``hours``: the value
    withdrawn, the value deposited, and the weight of the hour (0..1, 0 = unknown)."""

    hours: Hours
    withdrawn: F32
    deposited: F32
    weight: F32


@dataclass(frozen=True, slots=True)
class UnitForecast:
    device_id: str
    unit_id: str
    kind: str  # cash_out | deposit_full
    denomination: int
    count: int
    capacity: int | None
    at: datetime | None  # local time; None: no data or beyond the horizon
    earliest: datetime | None
    latest: datetime | None
    beyond_horizon: bool
    reason: str | None  # why there is no time: no_history, no_cash_units, None


@dataclass(frozen=True, slots=True)
class DeviceForecast:
    device_id: str
    units: tuple[UnitForecast, ...]
    reason: str | None = None

    def first(self, kind: str) -> UnitForecast | None:
        """The unit of ``kind`` expected first (None: no such unit or no time)."""
        timed = [u for u in self.units if u.kind == kind and u.at is not None]
        if timed:
            return min(timed, key=lambda u: u.at or datetime.max.replace(tzinfo=UTC))
        return None

    def cash_out(self) -> UnitForecast | None:
        return self.first("cash_out")

    def deposit_full(self) -> UnitForecast | None:
        return self.first("deposit_full")


@dataclass
class Forecast:
    """The forecast of a fleet at ``now`` (ms), local times in ``tz``."""

    now: int
    tz: ZoneInfo
    horizon_hours: int
    devices: list[DeviceForecast] = field(default_factory=list)

    def by_device(self) -> dict[str, DeviceForecast]:
        return {d.device_id: d for d in self.devices}


def _shares(denoms: Sequence[int], rules: CashRules) -> dict[int, float]:
    return dict(_shares_of(tuple(denoms), tuple(sorted(rules.dispense_mix.items()))))


@lru_cache(maxsize=256)
def _shares_of(
    denoms: tuple[int, ...], mix_items: tuple[tuple[int, float], ...]
) -> tuple[tuple[int, float], ...]:
    mix = dict(mix_items)
    raw = {d: mix.get(d, 0.0) for d in denoms}
    total = sum(raw.values())
    if total <= 0:  # none of its denominations is in the mix: equal value shares
        return tuple((d, 1.0 / len(denoms)) for d in denoms)
    return tuple((d, v / total) for d, v in raw.items())


@dataclass
class _Target:
    device: int  # row
    unit_ids: list[str]
    kind: str
    denomination: int
    count: int
    capacity: int | None
    need_value: float  # amount of the drain series at which it is reached
    net: bool  # recycler: withdrawals minus recycled deposits


def targets_of(dev: DeviceCash, row: int, rules: CashRules) -> list[_Target]:
    """What can run out (or fill up) in one device, with the amount that does it."""
    out: list[_Target] = []
    usable = [u for u in dev.units if u.status not in UNUSABLE]
    dispensing = [u for u in usable if u.type in DISPENSING and u.denomination > 0]
    recycler = any(u.type == "recycle" for u in dispensing)
    by_denom: dict[int, list[Unit]] = {}
    for u in dispensing:
        by_denom.setdefault(u.denomination, []).append(u)
    shares = _shares(sorted(by_denom), rules) if by_denom else {}
    for denom, units in sorted(by_denom.items()):
        count = sum(u.count for u in units)
        need_notes = count - rules.out_below_notes * len(units) + 1
        share = shares[denom]
        need = max(need_notes, 0) * denom / share if share > 0 else float("inf")
        caps = [u.capacity for u in units]
        cap = None if any(c is None for c in caps) else sum(c or 0 for c in caps)
        out.append(
            _Target(row, [u.id for u in units], "cash_out", denom, count, cap, need, recycler)
        )
    for u in usable:
        if u.type not in DEPOSIT:
            continue
        cap = u.capacity if u.capacity is not None else rules.plan.cassette_capacity_notes
        room = max(cap * rules.deposit_full_share - u.count, 0.0) * rules.deposit_note_value
        # A recycler's cassette takes only the deposits it does not recycle.
        kept = 1.0 - rules.recycle_share if recycler else 1.0
        need = room / kept if kept > 0 else float("inf")
        out.append(
            _Target(row, [u.id], "deposit_full", u.denomination, u.count, u.capacity, need, False)
        )
    return out


@dataclass(frozen=True)
class Fits:
    """The fitted model of a fleet: withdrawals and deposits, devices in row order."""

    withdrawn: Fit
    deposited: Fit


def fit_fleet(devices: Sequence[DeviceCash], history: History, rules: CashRules) -> Fits:
    params = Params.from_rules(rules)
    names = sorted({d.group for d in devices})
    index = {g: i for i, g in enumerate(names)}
    group = np.asarray([index[d.group] for d in devices], np.int64)
    withdrawn = fit(history.withdrawn, history.weight, history.hours, group, params)
    # Deposits only for the devices that take them (a fleet is mostly ATMs).
    takes = np.asarray(
        [any(u.type in DEPOSIT or u.type == "recycle" for u in d.units) for d in devices], bool
    )
    rows = np.flatnonzero(takes)
    n = len(devices)
    rate = np.zeros((n, withdrawn.rate.shape[1]), np.float32)
    phi, cv2 = np.zeros(n), np.zeros(n)
    factor = withdrawn.factor.copy()
    if len(rows):
        sub = fit(history.deposited[rows], history.weight[rows], history.hours, group[rows], params)
        rate[rows], phi[rows], cv2[rows] = sub.rate, sub.phi, sub.level_cv2
        factor[: sub.factor.shape[0]] = sub.factor
    deposited = Fit(rate, factor, group, phi, cv2, withdrawn.ok)
    return Fits(withdrawn, deposited)


#: (kind "w" or "d", rows, future hours) -> (mean, cumulative variance) [rows, hours]
Means = Callable[[str, np.ndarray, Hours], tuple[F32, F32]]


def model_means(fits: Fits) -> Means:
    def means(kind: str, rows: np.ndarray, future: Hours) -> tuple[F32, F32]:
        f = fits.withdrawn if kind == "w" else fits.deposited
        sub = Fit(f.rate[rows], f.factor, f.group[rows], f.phi[rows], f.level_cv2[rows], f.ok[rows])
        mean = sub.mean(future)
        return mean, cumulative_variance(sub, mean)

    return means


def forecast(
    devices: Sequence[DeviceCash],
    history: History,
    now: int,
    rules: CashRules,
    tz: ZoneInfo,
) -> Forecast:
    """The expected times for every device, from its history up to ``now`` (ms)."""
    if not devices:
        return Forecast(now, tz, rules.horizon_days * 24)
    fits = fit_fleet(devices, history, rules)
    return predict(devices, fits.withdrawn.ok, model_means(fits), now, rules, tz)


def predict(
    devices: Sequence[DeviceCash],
    ok: np.ndarray,
    means: Means,
    now: int,
    rules: CashRules,
    tz: ZoneInfo,
) -> Forecast:
    """Times from ``now`` for the devices whose row in ``ok`` is true, the amounts per
    future hour given by ``means`` (the model's, or a baseline's)."""
    horizon = rules.horizon_days * 24
    targets: list[_Target] = []
    for row, dev in enumerate(devices):
        if ok[row] and dev.units:
            targets.extend(targets_of(dev, row, rules))
    # Counts are as of their report: the drain is counted from then, not from now.
    since = [now if d.units_at is None else min(now, d.units_at) for d in devices]
    first = min((since[t.device] for t in targets), default=now)
    start = first // HOUR_MS * HOUR_MS
    n_hours = -(-(now + horizon * HOUR_MS - start) // HOUR_MS)
    future = hour_axis(start, n_hours, tz, rules.calendar)
    out = Forecast(now, tz, horizon)

    def series(kind: str, rows: np.ndarray) -> tuple[F32, F32]:
        return means(kind, rows, future)

    z = z_of(rules.interval)
    n_t = len(targets)
    res_at, res_lo, res_hi = np.full(n_t, np.nan), np.full(n_t, np.nan), np.full(n_t, np.nan)
    kinds: dict[tuple[str, bool], list[int]] = {}
    for i, t in enumerate(targets):
        kinds.setdefault((t.kind, t.net), []).append(i)
    for (kind, net), chosen in kinds.items():
        dev_rows = np.asarray([targets[i].device for i in chosen], np.int64)
        rows, idx = np.unique(dev_rows, return_inverse=True)
        if kind == "deposit_full":
            mean, var = series("d", rows)
        else:
            mean, var = series("w", rows)
            if net:
                d_mean, d_var = series("d", rows)
                r = np.float32(rules.recycle_share)
                mean = mean - r * d_mean
                var = var + r * r * d_var
        need = np.asarray([targets[i].need_value for i in chosen], np.float64)
        offsets = np.asarray(
            [(since[targets[i].device] - start) / HOUR_MS for i in chosen], np.float64
        )
        c = crossings(mean, var, idx.astype(np.int64), need, z, offsets)
        sel = np.asarray(chosen, np.int64)
        res_at[sel], res_lo[sel], res_hi[sel] = c.at, c.earliest, c.latest

    def stamps(hours_ahead: np.ndarray) -> list[datetime | None]:
        at_s = np.maximum(now, start + np.round(np.nan_to_num(hours_ahead) * HOUR_MS)) // 1000
        nan = np.isnan(hours_ahead)
        return [
            None if missing else datetime.fromtimestamp(int(x), tz)
            for x, missing in zip(at_s.tolist(), nan.tolist(), strict=True)
        ]

    t_at, t_lo, t_hi = stamps(res_at), stamps(res_lo), stamps(res_hi)
    beyond = np.isnan(res_at).tolist()
    by_row: dict[int, list[UnitForecast]] = {}
    for i, t in enumerate(targets):
        dev = devices[t.device]
        for uid in t.unit_ids:
            by_row.setdefault(t.device, []).append(
                UnitForecast(
                    dev.device_id, uid, t.kind, t.denomination, t.count, t.capacity,
                    t_at[i], t_lo[i], t_hi[i], beyond[i], None,
                )
            )  # fmt: skip
    for row, dev in enumerate(devices):
        if not dev.units:
            out.devices.append(DeviceForecast(dev.device_id, (), "no_cash_units"))
        elif not ok[row]:
            out.devices.append(DeviceForecast(dev.device_id, (), "no_history"))
        else:
            out.devices.append(DeviceForecast(dev.device_id, tuple(by_row.get(row, ()))))
    return out


def local_iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def ahead(at: datetime | None, now: int) -> timedelta | None:
    if at is None:
        return None
    return at - datetime.fromtimestamp(now / 1000, UTC)
