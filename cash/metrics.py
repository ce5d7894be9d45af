"""The cash-out forecast as Prometheus metrics (docs/metrics.md, "Cash forecast").

:class:`CashCollector` is a custom collector: ``collect()`` yields fresh families from the
last forecast. :class:`CashMetrics` recomputes it from the store every
``cash.forecast_every_s`` in its own thread (a forecast of a large fleet takes seconds;
the scrape never waits for it). With ``isolated`` (what ``atmfleet serve`` runs) each
forecast is made in a short-lived child process that hands back only the rows: the
forecast of a 100,000-device fleet peaks at about 1.0 GiB of history while it runs, and a
long-lived exporter would keep that memory for good (docs/metrics.md, "Cost"). A device without a forecast (no history, no cash units,
beyond the horizon) has no series: no data is never a made-up time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from atmfleet.child import ChildCancelled, Children
from atmfleet.errors import AtmfleetError
from atmfleet.store.connect import connect
from atmfleet.windows import ServiceWindow
from cash.forecast import Forecast, forecast
from cash.store import load
from rules.config import Rules

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CashRow:
    device: str
    cash_out: float | None  # Unix seconds
    earliest: float | None
    latest: float | None
    service_hours: float | None  # of the device's service window from now to cash_out
    deposit_full: float | None


@dataclass
class CashSnapshot:
    alert_service_hours: float
    rows: list[CashRow] = field(default_factory=list)
    at: float | None = None  # when the forecast was made (Unix s)
    seconds: float | None = None  # how long it took
    ok: bool = False


class ServiceHours:
    """Service hours from ``now`` to a later time, per window spec (cached per hour)."""

    def __init__(self, now: datetime, horizon_h: int, tz: object) -> None:
        self.now = now
        self.horizon = horizon_h
        self.tz = tz
        self._cum: dict[str, np.ndarray] = {}

    def between(self, spec: str, at: datetime) -> float:
        cum = self._cum.get(spec)
        if cum is None:
            window = ServiceWindow.parse(spec)
            edges = [self.now + timedelta(hours=h) for h in range(self.horizon + 2)]
            cum = np.zeros(len(edges))
            if window.always:
                cum = np.arange(len(edges), dtype=np.float64) * 3600.0
            else:
                for i in range(1, len(edges)):
                    cum[i] = cum[i - 1] + window.open_seconds(edges[i - 1], edges[i], self.tz)  # type: ignore[arg-type]
            self._cum[spec] = cum
        x = (at - self.now).total_seconds() / 3600.0
        return float(np.interp(x, np.arange(len(cum)), cum)) / 3600.0


def snapshot_of(fc: Forecast, specs: dict[str, str], rules: Rules) -> CashSnapshot:
    now = datetime.fromtimestamp(fc.now / 1000, UTC)
    hours = ServiceHours(now, fc.horizon_hours, rules.tz)
    snap = CashSnapshot(rules.cash.alert_service_hours, at=fc.now / 1000, ok=True)
    for d in fc.devices:
        out, full = d.cash_out(), d.deposit_full()
        if out is None and full is None:
            continue
        at = out.at if out is not None else None
        snap.rows.append(
            CashRow(
                d.device_id,
                None if at is None else at.timestamp(),
                None if out is None or out.earliest is None else out.earliest.timestamp(),
                None if out is None or out.latest is None else out.latest.timestamp(),
                None if at is None else hours.between(specs[d.device_id], at),
                None if full is None or full.at is None else full.at.timestamp(),
            )
        )
    return snap


def families(snap: CashSnapshot) -> Iterator[Metric]:
    g = GaugeMetricFamily
    yield g(
        "atmfleet_cash_out_forecast_alert_service_hours",
        "Alert when cash-out is expected within this many service hours (rules file).",
        value=snap.alert_service_hours,
    )
    if snap.at is not None:
        yield g("atmfleet_cash_forecast_timestamp_seconds",
                "When the cash-out forecast was last made.", value=snap.at)  # fmt: skip
    if snap.seconds is not None:
        yield g("atmfleet_cash_forecast_duration_seconds",
                "How long the last cash-out forecast took (read and compute).",
                value=snap.seconds)  # fmt: skip
    if not snap.ok:
        return
    at = g("atmfleet_device_cash_out_forecast_timestamp_seconds",
           "Expected time the device runs out of cash (first dispensing denomination).",
           labels=["device"])  # fmt: skip
    lo = g("atmfleet_device_cash_out_forecast_earliest_timestamp_seconds",
           "Earliest end of the cash-out interval (rules cash.interval).", labels=["device"])  # fmt: skip
    hi = g("atmfleet_device_cash_out_forecast_latest_timestamp_seconds",
           "Latest end of the cash-out interval.", labels=["device"])  # fmt: skip
    sh = g("atmfleet_device_cash_out_forecast_service_hours",
           "Hours of the device's service window from now to its expected cash-out.",
           labels=["device"])  # fmt: skip
    dep = g("atmfleet_device_deposit_full_forecast_timestamp_seconds",
            "Expected time the device's deposit cassette is full.", labels=["device"])  # fmt: skip
    for r in snap.rows:
        for fam, value in ((at, r.cash_out), (lo, r.earliest), (hi, r.latest),
                           (sh, r.service_hours), (dep, r.deposit_full)):  # fmt: skip
            if value is not None:
                fam.add_metric([r.device], value)
    yield from (at, lo, hi, sh, dep)


class CashCollector(Collector):
    def __init__(self, metrics: CashMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return families(self._metrics.snapshot)


class CashMetrics:
    """Recomputes the forecast from the store; :attr:`snapshot` is the last one."""

    def __init__(
        self,
        url: str,
        rules: Rules,
        now: Callable[[], int] | None = None,
        *,
        isolated: bool = False,
    ) -> None:
        """``now``: the forecast's clock (ms); default the database's. ``isolated``: make
        each forecast in a child process."""
        self.url = url
        self.rules = rules
        self._now = now
        self._isolated = isolated
        self._children = Children()
        self.snapshot = CashSnapshot(rules.cash.alert_service_hours)

    def close(self) -> None:
        """Stop a forecast being made in its child process (``isolated``): the child is
        terminated and :meth:`refresh` gives up at once, keeping the last forecast; none
        is made from now on."""
        self._children.close()

    def refresh(self) -> CashSnapshot:
        started = time.perf_counter()
        now = None if self._now is None else self._now()
        if self._isolated:
            try:
                snap = self._children.run(compute, self.url, self.rules, now)
            except ChildCancelled:  # closing: the last forecast stays
                return self.snapshot
            except Exception as exc:  # the child died (killed, out of memory): none shown
                log.warning("cash forecast: the forecast process failed: %s", exc)
                snap = CashSnapshot(self.rules.cash.alert_service_hours)
        else:
            snap = compute(self.url, self.rules, now)
        if snap.ok:
            snap.seconds = time.perf_counter() - started
        self.snapshot = snap
        return snap

    def run(self, stop: threading.Event) -> None:
        while True:
            try:
                self.refresh()
            except Exception:  # never end the loop
                log.exception("cash forecast failed")
            if stop.wait(self.rules.cash.forecast_every_s):
                return


def compute(url: str, rules: Rules, now: int | None = None) -> CashSnapshot:
    """One forecast from the store (an empty, not-ok snapshot if it cannot be read)."""
    try:
        with connect(url, application_name="atmfleet-serve-cash") as conn:
            loaded = load(conn, rules, now=now)
    except (psycopg.Error, AtmfleetError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        log.warning("cash forecast: cannot read the database: %s", reason)
        return CashSnapshot(rules.cash.alert_service_hours)
    fc = forecast(loaded.devices, loaded.history, loaded.now, rules.cash, rules.tz)
    windows = rules.service_windows
    specs = {d.id: windows.spec_for(d) for d in loaded.inventory.devices}
    return snapshot_of(fc, specs, rules)
