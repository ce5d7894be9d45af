"""The forecasting model, on plain arrays: vectorised over devices with numpy.

Per device, the expected value drawn (or deposited) in an hour ``t`` of the future is::

    level[d] x shape[d, how(t)] x factor[group(d), kind(t)]

- ``how(t)`` is the local hour of the week (0 = Monday 00:00-01:00, 167 = Sunday 23:00);
  ``shape`` is the device's own hour-of-week profile, shrunk toward its group's
  (placement and type) by ``profile_shrink`` weeks of evidence: four weeks of one
  device's history hold about four customers' worth of noise per hour, the group's
  shape does not.
- ``level`` is the recent trend: an exponentially weighted mean of the device's normal
  days (the weight of a day halves every ``level_half_life_days``), corrected for which
  hours were observed.
- ``kind(t)`` is the calendar (:mod:`cash.calendar`): pay days, the days before a
  holiday, holidays. ``factor`` is the group's own ratio of what was drawn on such days
  to what the normal model expected, once the history holds such a day; until then the
  rules file's prior.
- Hours in which a device did not serve (fault, cash-out, offline, ...) carry weight 0:
  their zero withdrawals are not demand. Hours outside the service window do serve as
  evidence (nothing can be drawn then).

The spread is from the device's own daily residuals (over-dispersion ``phi`` in value
units, and the uncertainty of its level), giving a normal interval on the cumulative
amount; a cash-out time interval is where the cumulative amount's interval crosses what
is left in the unit.

Why hand-written rather than a library: statsmodels' seasonal models fit one series at a
time; measured on 28-day hourly series, Holt-Winters with a 168-hour season takes ~110 ms
of CPU and MSTL ~100 ms per series, about three hours for 100,000 devices against a
budget of 30 s; and they know nothing of the weight of an hour a device was down or of a
bank's pay days. The model here is a few vectorised passes over all devices at once
(numpy), and its backtest (bench/cash_backtest.py) is what it is judged by.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from statistics import NormalDist
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from cash.calendar import HOLIDAY, NORMAL, PAY_DAY, PRE_HOLIDAY, day_kind
from rules.config import CashCalendar, CashRules

HOUR_MS = 3_600_000
WEEK_HOURS = 168
KINDS = 4

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
B = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Hours:
    """An axis of consecutive UTC hours from ``start_ms``: each hour's local hour of the
    week, calendar kind and local day number (days since 1970-01-01, local)."""

    start_ms: int
    how: I64
    kind: I64
    day: I64

    @property
    def n(self) -> int:
        return len(self.how)


def hour_axis(start_ms: int, n: int, tz: ZoneInfo, cal: CashCalendar) -> Hours:
    """``n`` hours from ``start_ms`` (a whole UTC hour)."""
    if start_ms % HOUR_MS:
        raise ValueError("the hour axis starts on a whole hour")
    how = np.empty(n, np.int64)
    kind = np.empty(n, np.int64)
    day = np.empty(n, np.int64)
    kinds: dict[object, int] = {}
    epoch = datetime(1970, 1, 1).date()
    start = datetime.fromtimestamp(start_ms / 1000, UTC)
    for i in range(n):
        local = (start + timedelta(hours=i)).astimezone(tz)
        d = local.date()
        how[i] = local.weekday() * 24 + local.hour
        k = kinds.get(d)
        if k is None:
            k = kinds[d] = day_kind(d, cal)
        kind[i] = k
        day[i] = (d - epoch).days
    return Hours(start_ms, how, kind, day)


@dataclass(frozen=True)
class Params:
    half_life_days: float
    shrink_weeks: float
    min_history_days: float
    priors: tuple[float, float, float, float]  # by kind: normal (1), pay, pre-holiday, holiday

    @classmethod
    def from_rules(cls, rules: CashRules) -> Params:
        c = rules.calendar
        return cls(
            rules.level_half_life_days,
            rules.profile_shrink,
            rules.min_history_days,
            (1.0, c.pay_day_factor, c.pre_holiday_factor, c.holiday_factor),
        )


@dataclass(frozen=True)
class Fit:
    """A fitted model for ``n`` devices."""

    rate: F32  # [n, 168] expected value per hour of the week on a normal day
    factor: F64  # [groups, 4] calendar factors (kind 0 = 1)
    group: I64  # [n]
    phi: F64  # [n] over-dispersion of hourly amounts (value units)
    level_cv2: F64  # [n] squared relative uncertainty of the level
    ok: B  # [n] enough history for a forecast

    def mean(self, hours: Hours) -> F32:
        """[n, hours] expected amount per future hour."""
        out = self.rate[:, hours.how]
        special = hours.kind != NORMAL  # normal hours have factor 1
        if special.any():
            f = self.factor.astype(np.float32)[self.group][:, hours.kind[special]]
            out[:, special] *= f
        return out


def _onehot(how: I64) -> F32:
    m = np.zeros((len(how), WEEK_HOURS), np.float32)
    m[np.arange(len(how)), how] = 1.0
    return m


def _periodic(index: I64, period: int) -> int | None:
    """The offset if ``index`` is ``(offset + t) % period`` for every t (a zone without
    daylight saving time), else None."""
    off = int(index[0]) if len(index) else 0
    return off if np.array_equal(index, (off + np.arange(len(index))) % period) else None


def _fold(x: F32, offset: int, period: int) -> F32:
    """Sums of ``x`` [n, h] by ``(offset + t) % period``: a reshape, not a product."""
    n, h = x.shape
    pad = (-(offset + h)) % period
    padded = np.zeros((n, offset + h + pad), np.float32)
    padded[:, offset : offset + h] = x
    out: F32 = padded.reshape(n, -1, period).sum(axis=1, dtype=np.float32)
    return out


def fit(y: F32, w: F32, hours: Hours, group: I64, params: Params, chunk: int = 8192) -> Fit:
    """Fit on ``y`` [n, hours] (amount per hour) with weights ``w`` [n, hours] in 0..1
    (the share of the hour the device was observed serving or closed; 0 = unknown).

    Three passes over the devices in chunks of ``chunk`` rows (memory stays at a few
    chunk-sized arrays whatever the fleet): hour-of-week sums; levels and the calendar
    factors' sums; daily residuals."""
    n, h = y.shape
    if w.shape != y.shape or hours.n != h or group.shape != (n,):
        raise ValueError("y, w, hours and group do not agree in shape")
    groups = int(group.max()) + 1 if n else 1
    normal = (hours.kind == NORMAL).astype(np.float32)
    how_off = _periodic(hours.how, WEEK_HOURS)
    onehot = _onehot(hours.how) if how_off is None else None

    def by_how(x: F32) -> F32:
        return x @ onehot if onehot is not None else _fold(x, how_off or 0, WEEK_HOURS)

    spans = [slice(a, min(a + chunk, n)) for a in range(0, n, chunk)]

    def rows(part: slice) -> tuple[F32, F32]:
        yy = y[part].astype(np.float32, copy=False)
        ww = w[part].astype(np.float32, copy=False)
        return yy * ww, ww  # an hour counts as much as it was observed

    # Pass 1: the shape, from undecayed sums per hour of the week on normal days.
    num = np.empty((n, WEEK_HOURS), np.float32)
    den = np.empty((n, WEEK_HOURS), np.float32)
    for part in spans:
        yw, ww = rows(part)
        num[part] = by_how(yw * normal)
        den[part] = by_how(ww * normal)
    member = (group[:, None] == np.arange(groups)[None, :]).astype(np.float64)  # [n, groups]
    g_num = member.T @ num.astype(np.float64)
    g_den = member.T @ den.astype(np.float64)
    g_rate = np.divide(g_num, g_den, out=np.zeros_like(g_num), where=g_den > 0)
    # An hour of the week never seen on a normal day (both Fridays of a short history a
    # pay day and a holiday) takes the group's mean of that hour of the day instead.
    hod_num = g_num.reshape(groups, 7, 24).sum(axis=1)
    hod_den = g_den.reshape(groups, 7, 24).sum(axis=1)
    hod_rate = np.divide(hod_num, hod_den, out=np.zeros_like(hod_num), where=hod_den > 0)
    g_rate = np.where(g_den > 0, g_rate, np.tile(hod_rate, (1, 7)))
    g_mean = g_rate.mean(axis=1, keepdims=True)
    g_shape = np.divide(g_rate, g_mean, out=np.ones_like(g_rate), where=g_mean > 0)
    shape_g = g_shape[group].astype(np.float32)  # [n, 168]
    # The device's level against its group's shape, then its own shape shrunk toward it.
    base = (den * shape_g).sum(axis=1)
    level_u = np.divide(num.sum(axis=1), base, out=np.zeros(n, np.float32), where=base > 0)
    k = np.float32(params.shrink_weeks)
    rate_u = (num + k * level_u[:, None] * shape_g) / np.maximum(den + k, np.float32(1e-9))
    shape = np.divide(rate_u, level_u[:, None], out=shape_g, where=level_u[:, None] > 0)
    del num, den, rate_u
    # Pass 2: the recent level (decayed normal days, observed hours, against the device's
    # shape), then what was drawn and expected on each kind of calendar day.
    age_days = (h - 1 - np.arange(h)) / 24.0
    decay = (0.5 ** (age_days / params.half_life_days)).astype(np.float32) * normal
    rate = np.empty((n, WEEK_HOURS), np.float32)
    special = [(kind, hours.kind == kind) for kind in (PAY_DAY, PRE_HOLIDAY, HOLIDAY)]
    special = [(kind, sel) for kind, sel in special if sel.any()]
    got = np.zeros((len(special), groups))
    exp = np.zeros((len(special), groups))
    for part in spans:
        yw, ww = rows(part)
        s_t = shape[part][:, hours.how]
        e_den = (ww * s_t * decay).sum(axis=1)
        e_num = (yw * decay).sum(axis=1)
        level = np.divide(e_num, e_den, out=np.zeros(len(e_num), np.float32), where=e_den > 0)
        rate[part] = shape[part] * level[:, None]
        if not special:
            continue
        fitted = s_t * level[:, None] * ww
        for i, (_kind, sel) in enumerate(special):
            got[i] += np.bincount(group[part], yw[:, sel].sum(axis=1), minlength=groups)
            exp[i] += np.bincount(group[part], fitted[:, sel].sum(axis=1), minlength=groups)
    factor = np.tile(np.asarray(params.priors, np.float64), (groups, 1))
    for i, (kind, _sel) in enumerate(special):
        has = exp[i] > 0
        factor[has, kind] = got[i][has] / exp[i][has]
    special_cols = hours.kind != NORMAL
    # Pass 3: the spread, from daily residuals of observed, fitted amounts.
    days, day_idx = np.unique(hours.day, return_inverse=True)
    day_off = int(hours.how[0] % 24) if how_off is not None else None
    day_onehot = None
    if day_off is None:
        day_onehot = np.zeros((h, len(days)), np.float32)
        day_onehot[np.arange(h), day_idx] = 1.0

    def by_day(x: F32) -> F32:
        if day_onehot is not None:
            return x @ day_onehot
        n_, h_ = x.shape
        pad = (-(day_off + h_)) % 24
        padded = np.zeros((n_, day_off + h_ + pad), np.float32)
        padded[:, day_off : day_off + h_] = x
        out: F32 = padded.reshape(n_, -1, 24).sum(axis=2, dtype=np.float32)
        return out

    resid2 = np.zeros(n)
    f_sum = np.zeros(n)
    observed = np.zeros(n)
    for part in spans:
        yw, ww = rows(part)
        fitted = rate[part][:, hours.how] * ww
        if special_cols.any():
            f = factor.astype(np.float32)[group[part]][:, hours.kind[special_cols]]
            fitted[:, special_cols] *= f
        a_day = by_day(yw)
        f_day = by_day(fitted)
        full = by_day(ww) >= 12  # days observed at least half
        resid2[part] = np.where(full, (a_day - f_day) ** 2, 0.0).sum(axis=1)
        f_sum[part] = np.where(full, f_day, 0.0).sum(axis=1)
        observed[part] = ww.sum(axis=1) / 24.0
    phi = np.divide(resid2, f_sum, out=np.zeros(n), where=f_sum > 0)
    # A device without residual evidence borrows its group's median dispersion.
    for g in range(groups):
        members = group == g
        known = members & (f_sum > 0)
        if known.any():
            phi[members & (f_sum <= 0)] = float(np.median(phi[known]))
    level_cv2 = np.divide(phi, f_sum, out=np.zeros(n), where=f_sum > 0)
    ok = observed >= params.min_history_days
    return Fit(rate, factor, group, phi, level_cv2, ok)


def seasonal_naive(y: F32, n_future: int) -> F32:
    """The baseline: every future hour = the same hour one week before (repeated weekly)."""
    _n, h = y.shape
    if h < WEEK_HOURS:
        raise ValueError("the seasonal-naive baseline needs a week of history")
    last_week = y[:, h - WEEK_HOURS :]
    reps = -(-n_future // WEEK_HOURS)
    return np.tile(last_week, (1, reps))[:, :n_future].astype(np.float32)


def z_of(interval: float) -> float:
    return NormalDist().inv_cdf(0.5 + interval / 2)


def first_crossing(cum: F32, need: F64) -> F64:
    """Fractional hour index at which each row of ``cum`` (cumulative amounts at the end
    of each hour) first reaches ``need``; 0 if ``need`` <= 0; NaN if never in range."""
    n, h = cum.shape
    out = np.full(n, np.nan)
    if h == 0 or n == 0:
        return out
    reach = cum >= need[:, None].astype(np.float32)
    idx = reach.argmax(axis=1)
    has = reach[np.arange(n), idx]
    rows = np.arange(n)
    prev = np.where(idx > 0, cum[rows, np.maximum(idx - 1, 0)], 0.0).astype(np.float64)
    cur = cum[rows, idx].astype(np.float64)
    step = cur - prev
    frac = np.divide(need - prev, step, out=np.ones(n), where=step > 0)
    out[has] = (idx + np.clip(frac, 0.0, 1.0))[has]
    out[need <= 0] = 0.0
    return out


@dataclass(frozen=True)
class Crossing:
    """Fractional future hours until the amount is reached: central and interval."""

    at: F64
    earliest: F64
    latest: F64


def _at(cum: F32, step: F32, x: F64) -> F64:
    """The cumulative amount at fractional hour ``x`` of each row (``cum`` at the end of
    each hour, ``step`` each hour's own amount)."""
    rows = np.arange(len(x))
    k = np.clip(np.floor(x).astype(np.int64), 0, cum.shape[1] - 1)
    prev = np.where(k > 0, cum[rows, np.maximum(k - 1, 0)], 0.0)
    return (prev + (x - k) * step[rows, k]).astype(np.float64)


def _between(v: F32, x: F64) -> F64:
    """Linear interpolation of each row of ``v`` (values at the end of each hour, 0 at
    the start of the axis) at fractional hour ``x``."""
    rows = np.arange(len(x))
    k = np.clip(np.floor(x).astype(np.int64), 0, v.shape[1] - 1)
    prev = np.where(k > 0, v[rows, np.maximum(k - 1, 0)], 0.0)
    return (prev + (x - k) * (v[rows, k] - prev)).astype(np.float64)


def crossings(
    mean: F32,
    var: F32,
    rows: I64,
    need: F64,
    z: float,
    offsets: F64 | None = None,
    chunk: int = 8192,
) -> Crossing:
    """For each target ``i``: when the cumulative ``mean[rows[i]]``, counted from the
    fractional hour ``offsets[i]`` (when its count was taken; default 0), reaches
    ``need[i]``, and when its ``z``-interval does (earliest: upper bound, latest: lower
    bound). Hours are from the start of the axis."""
    m = len(rows)
    at, lo, hi = np.full(m, np.nan), np.full(m, np.nan), np.full(m, np.nan)
    off = np.zeros(m) if offsets is None else offsets
    for a in range(0, m, chunk):
        r = rows[a : a + chunk]
        step = mean[r]
        cum = np.cumsum(step, axis=1, dtype=np.float32)
        v = np.maximum(var[r], 0)
        o = off[a : a + chunk]
        base = _at(cum, step, o)
        v0 = _between(v, o)
        sd = np.sqrt(np.maximum(v - v0[:, None].astype(np.float32), 0)).astype(np.float32)
        nd = need[a : a + chunk] + base
        zs = np.float32(z) * sd
        at[a : a + chunk] = np.maximum(first_crossing(cum, nd), o)
        lo[a : a + chunk] = np.maximum(first_crossing(cum + zs, nd), o)
        hi[a : a + chunk] = np.maximum(first_crossing(np.maximum(cum - zs, 0), nd), o)
    return Crossing(at, lo, hi)


def cumulative_variance(fit_: Fit, mean: F32) -> F32:
    """[n, hours] variance of the cumulative amount up to each future hour."""
    cum = np.cumsum(mean, axis=1, dtype=np.float32)
    phi = fit_.phi.astype(np.float32)[:, None]
    cv2 = fit_.level_cv2.astype(np.float32)[:, None]
    return phi * cum + cv2 * cum * cum


def params_for(rules: CashRules) -> Params:
    return Params.from_rules(rules)


__all__ = [
    "HOUR_MS",
    "KINDS",
    "WEEK_HOURS",
    "Crossing",
    "Fit",
    "Hours",
    "Params",
    "crossings",
    "cumulative_variance",
    "first_crossing",
    "fit",
    "hour_axis",
    "params_for",
    "seasonal_naive",
    "z_of",
]
