"""Cash in the console: the replenishment plan 加钞计划 (``cash.plan.plan_for``, the call
``atmfleet cash plan`` makes: viewer and up, the user's org scope, audited as
``cash.plan``) and a device's cash-out forecast (``cash.forecast.forecast``, the call
``atmfleet cash forecast --scope device:ID`` makes).

The forecast pools the hour-of-week shapes of the whole fleet, so it is computed for the
fleet at once and kept for ``cash_forecast_ttl_s`` (web settings); each device page reads
its device from that.
"""

from __future__ import annotations

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
    """The fleet's forecast, recomputed when older than ``ttl_s``."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._at = 0.0
        self._fc: Forecast | None = None
        self._by: dict[str, DeviceForecast] = {}

    def device(self, conn: Conn, rules: Rules, device_id: str) -> DeviceForecast | None:
        """The device's forecast (None: not a cash-handling device)."""
        with self._lock:
            if self._fc is None or time.monotonic() - self._at > self.ttl_s:
                loaded = load(conn, rules)
                self._fc = forecast(loaded.devices, loaded.history, loaded.now, rules.cash,
                                    rules.tz)  # fmt: skip
                self._by = self._fc.by_device()
                self._at = time.monotonic()
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
