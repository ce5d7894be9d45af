"""Backtest of the cash-out forecast against the simulator's ledger.

    python bench/cash_backtest.py [--devices 1000] [--days 30] [--seed 7]

Simulates a fleet of cash-dispensing devices (ATMs and cash recyclers, the simulator's
default behaviour: weekly rhythm, pay days, holidays, replenishment rounds) for
``history_days`` + ``--days`` local days, records it with the simulator's ledger, then
for every evaluated day compares two forecasts, each made from what was known at the
time:

- **forecast**: ``cash.model`` (level x hour-of-week shape x calendar), refitted at local
  midnight from the ledger's previous ``history_days`` days;
- **baseline**: seasonal naive, every hour = the same hour one week before (refreshed
  up to the hour of the forecast: fresher than the model's data).

Two figures, side by side:

1. **MAPE of the daily withdrawals per device**: forecast at local midnight of the
   day's withdrawn amount vs the amount withdrawn, over the device-days the device was
   observed serving (or closed by schedule) at least 90 % of the day with something
   withdrawn; WAPE (sum |error| / sum actual) next to it.
2. **Share of real cash-outs predicted at least 12 h ahead**: for every cash-out in the
   evaluated days (the device's ``cash_out`` event), the forecast made 12 h before it
   from the counts then; a hit when it put the cash-out within ``--tolerance-h`` (6 h)
   of when it happened. (An alarm that always says "soon" does not score.)

Prints the table; exit code 1 if the forecast does not beat the baseline by 20 %.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

# Run as a script, this file's folder is first on sys.path, and bench/cash.py would hide
# the ``cash`` package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import numpy as np  # noqa: E402

from atmfleet.inventory import CASH_DISPENSING_TYPES, Inventory  # noqa: E402
from cash.forecast import DeviceCash, History, Unit, fit_fleet, model_means, predict  # noqa: E402
from cash.model import HOUR_MS, WEEK_HOURS, Hours, hour_axis, seasonal_naive  # noqa: E402
from cash.store import EVIDENCE_STATES, coverage, group_of  # noqa: E402
from rules.config import Rules, load_rules  # noqa: E402
from simulator.config import SimConfig, make_config  # noqa: E402
from simulator.engine import generate  # noqa: E402
from simulator.fleet import generate_inventory  # noqa: E402
from simulator.ledger import Ledger  # noqa: E402


@dataclass
class Observed:
    """What the ledger recorded, per cash device (rows) and hour from ``lo``."""

    inventory: Inventory
    ids: list[str]
    lo: int
    hours: int
    withdrawn: np.ndarray
    deposited: np.ndarray
    weight: np.ndarray
    templates: list[tuple[Unit, ...]]
    #: per row: times (ms) of state messages and the unit counts they reported
    counts_at: list[list[int]] = field(default_factory=list)
    counts: list[list[tuple[int, ...]]] = field(default_factory=list)
    cash_outs: list[tuple[int, int]] = field(default_factory=list)  # (row, ms)
    replenished: list[list[int]] = field(default_factory=list)  # per row: ms
    seconds: float = 0.0


def cash_fleet(devices: int, seed: int, commissioned_before: date) -> Inventory:
    """The first ``devices`` cash-dispensing devices (by id) of a generated fleet."""
    inv = generate_inventory(max(10, devices * 2), seed)
    chosen = sorted(
        (d for d in inv.devices if d.type in CASH_DISPENSING_TYPES and d.commissioned < commissioned_before),
        key=lambda d: d.id,
    )[:devices]  # fmt: skip
    return Inventory.model_construct(
        subbranches=inv.subbranches, branches=inv.branches, devices=tuple(chosen)
    )


def observe(
    inv: Inventory, config: SimConfig, seed: int, start: datetime, end: datetime
) -> Observed:
    t0 = time.perf_counter()
    ids = [d.id for d in inv.devices]
    row = {d: i for i, d in enumerate(ids)}
    lo = int(start.timestamp() * 1000)
    hi = int(end.timestamp() * 1000)
    n_hours = (hi - lo) // HOUR_MS
    w_amt = np.zeros((len(ids), n_hours), np.float32)
    d_amt = np.zeros((len(ids), n_hours), np.float32)
    obs = Observed(inv, ids, lo, n_hours, w_amt, d_amt, np.zeros(0), [()] * len(ids))
    obs.counts_at = [[] for _ in ids]
    obs.counts = [[] for _ in ids]
    obs.replenished = [[] for _ in ids]
    ledger = Ledger(inv, config, seed, heartbeat_s=3600)
    for e in generate(inv, config, seed, start, end, heartbeat_s=3600):
        ledger.record(e)
        r = row.get(e.device_id)
        if r is None:
            continue
        if e.kind == "txn":
            if e.result == "ok" and e.detail in ("withdrawal", "deposit"):
                amount = float(json.loads(e.payload)["amount"])
                col = (e.ts - lo) // HOUR_MS
                (w_amt if e.detail == "withdrawal" else d_amt)[r, col] += amount
        elif e.kind == "state":
            units = json.loads(e.payload).get("cash_units")
            if units:
                if not obs.templates[r]:
                    obs.templates[r] = tuple(Unit.from_json(u) for u in units)
                obs.counts_at[r].append(e.ts)
                obs.counts[r].append(tuple(int(u["count"]) for u in units))
        elif e.kind == "event" and e.detail == "cash_out":
            obs.cash_outs.append((r, e.ts))
        elif e.kind == "event" and e.detail == "replenished":
            obs.replenished[r].append(e.ts)
    ledger.finish(hi)
    rows_, a_, b_ = [], [], []
    for iv in ledger.intervals:
        if iv.state in EVIDENCE_STATES and iv.device_id in row:
            rows_.append(row[iv.device_id])
            a_.append((iv.start - lo) / HOUR_MS)
            b_.append((iv.end - lo) / HOUR_MS)
    obs.weight = coverage(
        np.asarray(rows_, np.int64), np.asarray(a_), np.asarray(b_), len(ids), n_hours
    ).astype(np.float32)
    obs.seconds = time.perf_counter() - t0
    return obs


@dataclass
class Scores:
    device_days: int = 0
    abs_pct: float = 0.0
    abs_err: float = 0.0
    actual: float = 0.0
    cash_outs: dict[float, int] = field(default_factory=dict)  # by lead (h)
    hits: dict[float, int] = field(default_factory=dict)
    covered: dict[float, int] = field(default_factory=dict)
    errors: dict[float, list[float]] = field(default_factory=dict)  # forecast - real (h)

    @property
    def mape(self) -> float | None:
        return self.abs_pct / self.device_days if self.device_days else None

    @property
    def wape(self) -> float | None:
        return self.abs_err / self.actual if self.actual else None

    def hit_share(self, lead: float) -> float | None:
        n = self.cash_outs.get(lead, 0)
        return self.hits.get(lead, 0) / n if n else None

    def covered_share(self, lead: float) -> float | None:
        n = self.cash_outs.get(lead, 0)
        return self.covered.get(lead, 0) / n if n else None


def _devices_at(obs: Observed, rows: list[int], at: int) -> list[DeviceCash]:
    out = []
    inv = obs.inventory
    for r in rows:
        d = inv.device_by_id[obs.ids[r]]
        i = bisect_right(obs.counts_at[r], at) - 1
        units: tuple[Unit, ...] = ()
        reported = obs.counts_at[r][i] if i >= 0 else None
        if i >= 0 and obs.templates[r]:
            units = tuple(
                Unit(u.id, u.type, u.denomination, c, u.capacity, "ok")
                for u, c in zip(obs.templates[r], obs.counts[r][i], strict=True)
            )
        out.append(DeviceCash(d.id, group_of(d.placement.value, d.type.value), units, reported))
    return out


def naive_means(
    obs: Observed, col: int
) -> Callable[[str, np.ndarray, Hours], tuple[np.ndarray, np.ndarray]]:
    """Seasonal naive: each hour of the axis = the same hour one week before, or as many
    weeks before as it takes to be an hour known at ``col`` (absolute column of the
    arrays: the hour of the forecast)."""

    def means(kind: str, rows: np.ndarray, future: Hours) -> tuple[np.ndarray, np.ndarray]:
        src = obs.withdrawn if kind == "w" else obs.deposited
        t = (future.start_ms - obs.lo) // HOUR_MS + np.arange(future.n)
        weeks = np.maximum(1, -(-(t - col + 1) // WEEK_HOURS))
        mean = src[np.asarray(rows)[:, None], (t - weeks * WEEK_HOURS)[None, :]]
        return mean.astype(np.float32), np.zeros((len(rows), future.n), np.float32)

    return means


def _rows_of(means, r: int):  # type: ignore[no-untyped-def]
    def one(kind: str, rows: np.ndarray, fut: Hours):  # type: ignore[no-untyped-def]
        return means(kind, np.asarray([r]), fut)

    return one


LEADS = (12.0, 24.0, 48.0)


def backtest(
    obs: Observed, rules: Rules, first_day: date, days: int, tolerance_share: float = 0.25,
    leads: tuple[float, ...] = LEADS,
) -> tuple[Scores, Scores]:  # fmt: skip
    tz = rules.tz
    cash = rules.cash
    hist_h = cash.history_days * 24
    model, base = Scores(), Scores()
    n = len(obs.ids)
    events = sorted(obs.cash_outs, key=lambda x: x[1])
    all_rows = list(range(n))
    for k in range(days):
        day = first_day + timedelta(days=k)
        t0 = int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp() * 1000)
        c0 = (t0 - obs.lo) // HOUR_MS
        if c0 - hist_h < 0 or c0 + 24 > obs.hours:
            raise SystemExit(f"{day}: outside the simulated span")
        hours = hour_axis(t0 - hist_h * HOUR_MS, hist_h, tz, cash.calendar)
        sl = slice(c0 - hist_h, c0)
        history = History(hours, obs.withdrawn[:, sl], obs.deposited[:, sl], obs.weight[:, sl])
        devices = _devices_at(obs, all_rows, t0)
        fits = fit_fleet(devices, history, cash)
        ok = fits.withdrawn.ok
        # 1. Daily withdrawals.
        future = hour_axis(t0, 24, tz, cash.calendar)
        predicted = fits.withdrawn.mean(future).sum(axis=1)
        naive = seasonal_naive(obs.withdrawn[:, c0 - WEEK_HOURS : c0], 24).sum(axis=1)
        actual = obs.withdrawn[:, c0 : c0 + 24].sum(axis=1)
        served = obs.weight[:, c0 : c0 + 24].sum(axis=1) >= 0.9 * 24
        sel = ok & served & (actual > 0)
        for s, p in ((model, predicted), (base, naive)):
            err = np.abs(p[sel] - actual[sel])
            s.device_days += int(sel.sum())
            s.abs_pct += float((err / actual[sel]).sum())
            s.abs_err += float(err.sum())
            s.actual += float(actual[sel].sum())
        # 2. Cash-outs whose forecast ``lead`` hours ahead was made during this day, from
        # the counts then (unless a replenishment came in between: not foreseeable).
        for lead_h in leads:
            lead = int(lead_h * HOUR_MS)
            tolerance = tolerance_share * lead_h * 3600
            for r, t in events:
                issue = t - lead
                if not (t0 <= issue < t0 + 24 * HOUR_MS and ok[r]):
                    continue
                reloads = obs.replenished[r]
                if bisect_right(reloads, t) != bisect_right(reloads, issue):
                    continue
                dev = _devices_at(obs, [r], issue)
                if not dev[0].units:
                    continue
                col = (issue - obs.lo) // HOUR_MS
                real = datetime.fromtimestamp(t / 1000, UTC)
                for s, means in (
                    (model, _rows_of(model_means(fits), r)),
                    (base, naive_means_for(obs, r, col)),
                ):
                    u = (
                        predict(dev, np.asarray([True]), means, issue, cash, tz)
                        .devices[0]
                        .cash_out()
                    )
                    s.cash_outs[lead_h] = s.cash_outs.get(lead_h, 0) + 1
                    if u is None or u.at is None:
                        continue
                    s.errors.setdefault(lead_h, []).append((u.at - real).total_seconds() / 3600)
                    if abs((u.at - real).total_seconds()) <= tolerance:
                        s.hits[lead_h] = s.hits.get(lead_h, 0) + 1
                    if (
                        u.earliest is not None
                        and u.earliest <= real
                        and (u.latest is None or real <= u.latest)
                    ):
                        s.covered[lead_h] = s.covered.get(lead_h, 0) + 1
    return model, base


def naive_means_for(obs: Observed, r: int, col: int):  # type: ignore[no-untyped-def]
    inner = naive_means(obs, col)

    def means(kind: str, rows: np.ndarray, fut: Hours):  # type: ignore[no-untyped-def]
        return inner(kind, np.asarray([r]), fut)

    return means


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def table(model: Scores, base: Scores, tolerance_share: float = 0.25) -> tuple[str, bool]:
    def gain(m: float | None, b: float | None, higher_better: bool) -> tuple[str, bool]:
        if m is None or b is None or b == 0:
            return "–", False
        g = (m - b) / b if higher_better else (b - m) / b
        return f"{100 * g:+.1f} %", g >= 0.2

    g1, ok1 = gain(model.mape, base.mape, False)
    g2, _ = gain(model.wape, base.wape, False)
    lines = [
        f"{'':48} {'forecast':>9} {'baseline':>9} {'better by':>10}",
        f"{'MAPE of daily withdrawals per device':48} {_pct(model.mape):>9} {_pct(base.mape):>9} {g1:>10}",
        f"{'WAPE of daily withdrawals (sum|err|/sum)':48} {_pct(model.wape):>9} {_pct(base.wape):>9} {g2:>10}",
        f"{'  over device-days':48} {model.device_days:>9}",
    ]  # fmt: skip
    ok3 = False
    for lead in sorted(model.cash_outs):
        g, good = gain(model.hit_share(lead), base.hit_share(lead), True)
        if lead == 12.0:
            ok3 = good
        tol = tolerance_share * lead
        label = f"cash-outs predicted {lead:g} h ahead (±{tol:g} h)"
        lines.append(
            f"{label:48} {_pct(model.hit_share(lead)):>9} {_pct(base.hit_share(lead)):>9} {g:>10}"
        )
        lines.append(
            f"{'  of cash-outs / inside the interval':48} {model.cash_outs[lead]:>9} "
            f"{_pct(model.covered_share(lead)):>9}"
        )
        med = [
            f"{np.median(e):+.1f} h" if (e := s.errors.get(lead)) else "–" for s in (model, base)
        ]
        lines.append(f"{'  median error (forecast - real)':48} {med[0]:>9} {med[1]:>9}")
    return "\n".join(lines), ok1 and ok3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--first-day", default="2027-01-15", help="First evaluated local day.")
    ap.add_argument(
        "--tolerance", type=float, default=0.25,
        help="A hit is within this share of the lead time of the real cash-out.",
    )  # fmt: skip
    args = ap.parse_args(argv)
    rules = load_rules()
    tz: ZoneInfo = rules.tz
    first = date.fromisoformat(args.first_day)
    hist = rules.cash.history_days
    start = datetime(*(first - timedelta(days=hist)).timetuple()[:3], tzinfo=tz).astimezone(UTC)
    end = datetime(*(first + timedelta(days=args.days + 2)).timetuple()[:3], tzinfo=tz).astimezone(UTC)  # fmt: skip
    inv = cash_fleet(args.devices, args.seed, first - timedelta(days=hist))
    config = make_config({})
    print(
        f"simulating {len(inv.devices)} cash-dispensing devices, {start:%Y-%m-%d} .. {end:%Y-%m-%d} UTC"
    )
    obs = observe(inv, config, args.seed, start, end)
    print(f"simulated and recorded in {obs.seconds:.1f} s; {len(obs.cash_outs)} cash-outs")
    t0 = time.perf_counter()
    model, base = backtest(obs, rules, first, args.days, args.tolerance)
    print(f"backtest {args.days} days in {time.perf_counter() - t0:.1f} s\n")
    text, ok = table(model, base, args.tolerance)
    print(text)
    print("\nforecast beats the baseline by >= 20 % on both:", "yes" if ok else "NO")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
