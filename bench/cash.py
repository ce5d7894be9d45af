"""How long the cash-out forecast takes at fleet scale (target: 100,000 devices <= 30 s).

    python bench/cash.py [DEVICES]      # default 100000

Builds synthetic input (not timed): per device 28 days of hourly withdrawn and deposited
amounts with a weekly shape, pay days, noise and some hours down (weight 0), and its cash
units now (ATMs with one to four cassettes of ¥100/¥50, cash recyclers with a recycling
unit and a deposit cassette, deposit machines). Then times, with the shipped rules:

1. ``cash.forecast.forecast``: fitting withdrawals (all devices) and deposits (the devices
   that take them), and every cash unit's expected time with its interval — the whole
   compute, as ``atmfleet serve`` and ``atmfleet cash`` run it after reading the store;
2. the metric snapshot on top (service hours to each time, per service window).

Reading the store is not in these figures: see docs/cash.md ("Cost").
"""

from __future__ import annotations

import os
import resource
import sys
import time

# Run as a script, this file's folder is first on sys.path, and its name would hide the
# ``cash`` package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import numpy as np  # noqa: E402

from cash.forecast import DeviceCash, History, Unit, forecast  # noqa: E402
from cash.metrics import snapshot_of  # noqa: E402
from cash.model import HOUR_MS, hour_axis  # noqa: E402
from rules.config import load_rules  # noqa: E402


def synthetic(n: int, seed: int = 1) -> tuple[list[DeviceCash], History, int]:
    rules = load_rules()
    tz = rules.tz
    rng = np.random.default_rng(seed)
    now = 1_796_140_800_000 + 9 * HOUR_MS + 1_234_567  # 2026-12-01 ~17:20 local
    hours = rules.cash.history_days * 24
    lo = now // HOUR_MS * HOUR_MS - hours * HOUR_MS
    axis = hour_axis(lo, hours, tz, rules.cash.calendar)
    day = np.r_[np.full(7, 0.1), np.linspace(0.5, 2.0, 6), np.linspace(2.0, 0.8, 11)]
    week = np.asarray([1.1, 1.0, 1.0, 1.0, 1.15, 0.9, 0.85])
    shape = (week[:, None] * day[None, :]).ravel()[axis.how]
    shape = shape * np.where(axis.kind == 1, 1.4, 1.0)
    kinds = rng.choice(3, size=n, p=[0.5, 0.42, 0.08])  # atm, crs, deposit
    level = rng.lognormal(np.log(900.0), 0.4, n).astype(np.float32)
    withdrawn = np.empty((n, hours), np.float32)
    deposited = np.zeros((n, hours), np.float32)
    weight = np.ones((n, hours), np.float32)
    chunk = 10_000
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        mean = level[a:b, None] * shape[None, :].astype(np.float32)
        withdrawn[a:b] = rng.gamma(2.0, mean / 2.0).astype(np.float32)
        takes = kinds[a:b] > 0
        deposited[a:b][takes] = rng.gamma(2.0, 0.6 * mean[takes] / 2.0).astype(np.float32)
        down = rng.random((b - a, hours)) < 0.02
        weight[a:b][down] = 0.0
    withdrawn[kinds == 2] = 0.0
    devices = []
    for i in range(n):
        k = int(kinds[i])
        if k == 0:
            cassettes = int(rng.integers(1, 5))
            units = tuple(
                Unit(f"CST{j + 1}", "dispense", 100 if j < max(1, cassettes - 1) else 50,
                     int(rng.integers(50, 2500)), 2500, "ok")
                for j in range(cassettes)
            )  # fmt: skip
            group = "off_site/atm" if i % 3 else "on_site/atm"
        elif k == 1:
            units = (
                Unit("CST1", "recycle", 100, int(rng.integers(50, 2500)), 2500, "ok"),
                Unit("CIM1", "deposit", 100, int(rng.integers(0, 2500)), 3000, "ok"),
            )
            group = "off_site/crs" if i % 3 else "on_site/crs"
        else:
            units = (Unit("CIM1", "deposit", 100, int(rng.integers(0, 2500)), 3000, "ok"),)
            group = "on_site/deposit"
        devices.append(DeviceCash(f"D{i:06d}", group, units, now))
    return devices, History(axis, withdrawn, deposited, weight), now


def main(argv: list[str]) -> int:
    n = int(argv[1]) if len(argv) > 1 else 100_000
    rules = load_rules()
    t0 = time.perf_counter()
    devices, history, now = synthetic(n)
    units = sum(len(d.units) for d in devices)
    print(f"synthetic input: {n:,} devices, {units:,} cash units, "
          f"{history.hours.n} hours each ({time.perf_counter() - t0:.1f} s, not timed)")  # fmt: skip
    t1, c1 = time.perf_counter(), time.process_time()
    fc = forecast(devices, history, now, rules.cash, rules.tz)
    t2 = time.perf_counter()
    specs = {d.device_id: "24x7" if i % 4 else "mon-fri 09:00-17:00; sat,sun 10:00-16:00"
             for i, d in enumerate(devices)}  # fmt: skip
    snap = snapshot_of(fc, specs, rules)
    t3, c3 = time.perf_counter(), time.process_time()
    timed = sum(1 for d in fc.devices for u in d.units if u.at is not None)
    print(
        f"forecast (fit + every unit's time and interval): {t2 - t1:6.2f} s"
        f"  ({timed:,} unit times within {rules.cash.horizon_days} days)"
    )
    print(
        f"metric snapshot (service hours):                 {t3 - t2:6.2f} s  ({len(snap.rows):,} rows)"
    )
    total = t3 - t1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    load = os.getloadavg()[0]
    print(f"total {total:.2f} s wall, {c3 - c1:.2f} s CPU, for {n:,} devices (target <= 30 s):"
          f" {'ok' if total <= 30 else 'OVER'}; peak memory {peak:,.0f} MiB;"
          f" load average {load:.1f} on {os.cpu_count()} cores")  # fmt: skip
    return 0 if total <= 30 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
