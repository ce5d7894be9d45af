"""The SQL that feeds the forecast, in one place.

- the newest reported cash units of each cash-handling device (``state_samples``);
- its hourly withdrawn and deposited amounts (``txn_hourly``: successful transactions);
- the weight of each hour: the share of it the device was observed serving or closed,
  from its state runs (``state_runs``): a run lasts until the next one starts, at most
  its heartbeat timeout after its last sample; hours it was down or unknown weigh 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import psycopg

from atmfleet.inventory import DeviceType, Inventory
from cash.forecast import DeviceCash, History, Unit
from cash.model import HOUR_MS, hour_axis
from rules.config import Rules
from rules.feed import Feed
from rules.fleet import fleet_devices

#: Device types that hold cash.
CASH_TYPES = frozenset({DeviceType.ATM, DeviceType.CRS, DeviceType.DEPOSIT})
#: States in which an hour is evidence of demand (serving) or of none (closed by schedule).
EVIDENCE_STATES = frozenset({"in_service", "degraded", "closed"})

UNITS_QUERY = """
SELECT d.id, s.ts, s.cash_units
FROM unnest(%(ids)s::text[]) AS d(id)
LEFT JOIN LATERAL (
    SELECT ts, cash_units FROM state_samples
    WHERE device_id = d.id AND ts <= %(now)s
    ORDER BY ts DESC, seq DESC LIMIT 1
) s ON true
"""

AMOUNTS_QUERY = """
SELECT device_id, bucket, type, sum(amount)::float8
FROM txn_hourly
WHERE bucket >= %(lo)s AND bucket < %(hi)s AND device_id = ANY(%(ids)s)
  AND type IN ('withdrawal', 'deposit') AND result = 'ok'
GROUP BY 1, 2, 3
"""

RUNS_QUERY = """
SELECT device_id, start_ts, last_ts, state, heartbeat_s
FROM state_runs
WHERE device_id = ANY(%(ids)s) AND last_ts >= %(lo)s - interval '1 day' AND start_ts < %(hi)s
ORDER BY device_id, start_ts, start_seq
"""


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


@dataclass
class Loaded:
    inventory: Inventory
    devices: list[DeviceCash]
    history: History
    now: int


def group_of(placement: str, device_type: str) -> str:
    return f"{placement}/{device_type}"


def coverage(rows: np.ndarray, a: np.ndarray, b: np.ndarray, n: int, hours: int) -> np.ndarray:
    """[n, hours] share of each hour covered by intervals ``[a, b)`` (fractional hours
    from the axis start) of row ``rows``; overlapping intervals are not expected."""
    out = np.zeros((n, hours + 1), np.float64)
    a = np.clip(a, 0, hours)
    b = np.clip(b, 0, hours)
    keep = b > a
    rows, a, b = rows[keep], a[keep], b[keep]
    ia, ib = np.floor(a).astype(np.int64), np.floor(b).astype(np.int64)
    same = ia == ib
    np.add.at(out, (rows[same], ia[same]), (b - a)[same])
    r, ia2, ib2, a2, b2 = rows[~same], ia[~same], ib[~same], a[~same], b[~same]
    np.add.at(out, (r, ia2), ia2 + 1 - a2)
    np.add.at(out, (r, ib2), b2 - ib2)
    full = np.zeros((n, hours + 2), np.float64)  # whole hours strictly between, by difference
    np.add.at(full, (r, ia2 + 1), 1.0)
    np.add.at(full, (r, ib2), -1.0)
    out += np.cumsum(full, axis=1)[:, : hours + 1]
    return np.clip(out[:, :hours], 0.0, 1.0)


#: Devices whose hour weights :func:`weights` works out at a time.
WEIGHT_BLOCK = 2048


def weights(
    rows: np.ndarray, a: np.ndarray, b: np.ndarray, n: int, hours: int, block: int = WEIGHT_BLOCK
) -> np.ndarray:
    """``coverage(rows, a, b, n, hours)`` as float32, worked out ``block`` devices at a
    time: the same values (each device's row is computed from its own intervals, in
    their order), without the float64 [n, hours] arrays of the whole fleet at once (at
    100,000 devices and 28 days, about 1.2 GiB more at the peak)."""
    out = np.empty((n, hours), np.float32)
    order = np.argsort(rows, kind="stable")  # each device's intervals keep their order
    rows, a, b = rows[order], a[order], b[order]
    cuts = np.searchsorted(rows, np.arange(0, n + block, block))
    for k, lo in enumerate(range(0, n, block)):
        hi = min(lo + block, n)
        i, j = cuts[k], cuts[k + 1]
        out[lo:hi] = coverage(rows[i:j] - lo, a[i:j], b[i:j], hi - lo, hours)
    return out


def load(
    conn: psycopg.Connection,
    rules: Rules,
    *,
    now: int | None = None,
    device_ids: Sequence[str] | None = None,
) -> Loaded:
    """Everything :func:`cash.forecast.forecast` needs, as of ``now`` (ms; default the
    database's clock), for the cash-handling devices in the fleet (or those named)."""
    feed = Feed(conn, rules)
    if now is None:
        now = feed.now_ms()
    tz = rules.tz
    inventory = feed.inventory()
    today = datetime.fromtimestamp(now / 1000, UTC).astimezone(tz).date()
    wanted = set(device_ids) if device_ids is not None else None
    devices = [
        d
        for d in fleet_devices(inventory.devices, today)
        if d.type in CASH_TYPES and (wanted is None or d.id in wanted)
    ]
    devices.sort(key=lambda d: d.id)
    ids = [d.id for d in devices]
    row_of = {d: i for i, d in enumerate(ids)}
    n = len(ids)
    hi = now // HOUR_MS * HOUR_MS
    n_hours = rules.cash.history_days * 24
    lo = hi - n_hours * HOUR_MS
    hours = hour_axis(lo, n_hours, tz, rules.cash.calendar)
    lo_dt = datetime.fromtimestamp(lo / 1000, UTC)
    hi_dt = datetime.fromtimestamp(hi / 1000, UTC)
    now_dt = datetime.fromtimestamp(now / 1000, UTC)
    units: dict[str, tuple[int | None, tuple[Unit, ...]]] = {}
    withdrawn = np.zeros((n, n_hours), np.float32)
    deposited = np.zeros((n, n_hours), np.float32)
    with conn.cursor() as cur:
        cur.execute(UNITS_QUERY, {"ids": ids, "now": now_dt})
        for dev_id, ts, cash_units in cur:
            parsed = tuple(Unit.from_json(u) for u in (cash_units or ()))
            units[dev_id] = (None if ts is None else _ms(ts), parsed)
        cur.execute(AMOUNTS_QUERY, {"ids": ids, "lo": lo_dt, "hi": hi_dt})
        for dev_id, bucket, kind, amount in cur:
            col = (_ms(bucket) - lo) // HOUR_MS
            target = withdrawn if kind == "withdrawal" else deposited
            target[row_of[dev_id], col] += amount
        cur.execute(RUNS_QUERY, {"ids": ids, "lo": lo_dt, "hi": hi_dt})
        runs = cur.fetchall()
    factor = rules.heartbeat.timeout_factor
    r_rows: list[int] = []
    r_a: list[float] = []
    r_b: list[float] = []
    for i, (dev_id, start, last, state, hb) in enumerate(runs):
        nxt = runs[i + 1] if i + 1 < len(runs) and runs[i + 1][0] == dev_id else None
        end = _ms(last) + factor * hb * 1000
        if nxt is not None:
            end = min(end, _ms(nxt[1]))
        end = min(end, now)
        if state not in EVIDENCE_STATES:
            continue
        r_rows.append(row_of[dev_id])
        r_a.append((_ms(start) - lo) / HOUR_MS)
        r_b.append((end - lo) / HOUR_MS)
    weight = weights(np.asarray(r_rows, np.int64), np.asarray(r_a), np.asarray(r_b), n, n_hours)
    out = []
    for d in devices:
        at, us = units.get(d.id, (None, ()))
        out.append(DeviceCash(d.id, group_of(d.placement.value, d.type.value), us, at))
    return Loaded(inventory, out, History(hours, withdrawn, deposited, weight), now)
