"""Cash in the console: the replenishment plan 加钞计划 (``cash.plan.plan_for``, the call
``atmfleet cash plan`` makes: viewer and up, the user's org scope, audited as
``cash.plan``) and a device's cash-out forecast (``cash.forecast.forecast``, the call
``atmfleet cash forecast --scope device:ID`` makes).

The forecast pools the hour-of-week shapes of the whole fleet, so it is computed for the
fleet at once and kept for ``cash_forecast_ttl_s`` (web settings); each device page reads
its device from that.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import date
from typing import Any

import psycopg

from cash.forecast import DeviceForecast, Forecast, forecast
from cash.output import plan_json, plan_xlsx
from cash.plan import Plan, plan_for
from cash.store import load
from rules.config import Rules
from web.auth import Principal

Conn = psycopg.Connection[Any]
log = logging.getLogger(__name__)


def plan(conn: Conn, rules: Rules, who: Principal, day: date) -> Plan:
    """The plan for ``day`` within the caller's scope (``fleet`` is narrowed to the
    user's own by plan_for); the audit row is committed with the connection."""
    return plan_for(conn, rules, day, who.actor, scope="fleet")


def plan_file(the_plan: Plan, fmt: str, lang: str) -> tuple[bytes, str, str]:
    """(bytes, media type, file name) of a plan download."""
    name = f"cash-plan-{the_plan.date.isoformat()}"
    if fmt == "xlsx":
        media = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
        return plan_xlsx(the_plan, lang), media, name + ".xlsx"
    return plan_json(the_plan).encode(), "application/json", name + ".json"


class ForecastCache:
    """The fleet's forecast, recomputed when older than ``ttl_s``.

    Only the first device page after start waits for it. Later, a page that finds it
    stale gets the last one at once and starts a recomputation in the background (on a
    connection of its own from ``connect``), so no page waits for the fleet's forecast
    (seconds at 100,000 devices) more than once.
    """

    def __init__(self, ttl_s: float, connect: Any = None) -> None:
        self.ttl_s = ttl_s
        self._connect = connect  # () -> context manager giving a connection
        self._lock = threading.Lock()
        self._at = 0.0
        self._fc: Forecast | None = None
        self._by: dict[str, DeviceForecast] = {}
        self._refreshing = False

    def _compute(self, conn: Conn, rules: Rules) -> None:
        loaded = load(conn, rules)
        fc = forecast(loaded.devices, loaded.history, loaded.now, rules.cash, rules.tz)
        by = fc.by_device()
        with self._lock:
            self._fc, self._by, self._at = fc, by, time.monotonic()

    def _background(self, rules: Rules) -> None:
        try:
            with self._connect() as conn:
                self._compute(conn, rules)
        except Exception:  # keep the last forecast; the next stale page tries again
            log.exception("the cash-out forecast could not be refreshed")
        finally:
            with self._lock:
                self._refreshing = False

    def device(self, conn: Conn, rules: Rules, device_id: str) -> DeviceForecast | None:
        """The device's forecast (None: not a cash-handling device)."""
        with self._lock:
            have = self._fc is not None
            stale = not have or time.monotonic() - self._at > self.ttl_s
            start = stale and have and not self._refreshing and self._connect is not None
            if start:
                self._refreshing = True
        if start:
            threading.Thread(
                target=self._background, args=(rules,), name="web-cash-forecast", daemon=True
            ).start()
        elif stale and not have:
            self._compute(conn, rules)
        with self._lock:
            return self._by.get(device_id)


def device_view(fc: DeviceForecast | None) -> dict[str, Any] | None:
    """What the device page shows: each unit's expected time and interval (local times)."""
    if fc is None:
        return None
    units = [{
        "unit_id": u.unit_id, "kind": u.kind, "denomination": u.denomination, "count": u.count,
        "capacity": u.capacity, "at": u.at, "earliest": u.earliest, "latest": u.latest,
        "beyond_horizon": u.beyond_horizon, "reason": u.reason,
    } for u in fc.units]  # fmt: skip
    first = fc.cash_out()
    return {"reason": fc.reason, "units": units,
            "cash_out": None if first is None else {"at": first.at, "earliest": first.earliest,
                                                    "latest": first.latest}}  # fmt: skip
