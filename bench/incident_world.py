"""A simulated stretch played through the real store and the incident engine, with the
simulated world's operators replaying the ledger's dispatches; and the scorecard the
ledger alone implies. Shared by ``tests/test_vendor_scorecard_ledger.py`` and
``bench/incident_week.py``.

The driver (:class:`World`):

1. writes what the devices sent to the store (``BatchWriter``, the collector's writer;
   received = the simulated publish time), in publish order, only up to the moment it
   plays;
2. at each dispatch the ledger recorded (in time order) it runs an incident-engine pass
   as of that moment, then, as the operator on duty, acknowledges and dispatches the
   device's incident through ``incidents/service.py`` at the ledger's dispatch time;
3. at the end it writes the rest and runs a last pass as of the end.

The technician's arrival and the repair reach the engine only as the device's own
messages (maintenance mode, back in service), as they would from a real fleet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from atmfleet.errors import UsageError
from atmfleet.inventory import Inventory
from atmfleet.store.audit import Actor
from atmfleet.store.inventory import upsert_inventory
from atmfleet.store.writer import Accepted, BatchWriter
from collector.decode import decode
from incidents import service
from rules.config import Rules
from rules.timeline import from_ms
from rules.uptime import WindowSpans, scheduled_spans
from rules.vendors import quantile
from simulator.engine import Emission, Repair
from simulator.ledger import Ledger
from simulator.truth import TrueIncident, true_incidents

HOUR = 3_600_000
OPERATOR = "duty-operator"


def at_ms(t: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=t)


def accepted(emissions: Sequence[Emission]) -> list[Accepted]:
    """What the collector would have decoded, received at the publish time."""
    out = []
    for e in emissions:
        got = decode(e.topic, e.payload, at_ms(e.t))
        if not isinstance(got, Accepted):
            raise AssertionError(f"the collector refuses a simulated message: {got}")
        out.append(got)
    return out


PassFn = Callable[[datetime], None]


def fault_debounce_s(rules: Rules) -> int:
    """The debounce of a fault outage (component and software incidents)."""
    return next(v for k, v in rules.incidents.debounce_s.items() if k.value == "fault")


def engine_passes(conn: psycopg.Connection[Any], rules: Rules) -> PassFn:
    """Passes of one incident engine (``atmfleet incidents run``'s), each as of the
    simulated instant given."""
    from incidents.engine import Engine

    engine = Engine(conn, rules)

    def run(now: datetime) -> None:
        engine.run_once(now=now)

    return run


@dataclass
class World:
    """``emissions``: what the fleet sends, in publish order (a generator is read lazily,
    so a big fleet is never held in memory); ``ledger``: the same run's ledger (from an
    earlier run with the same seed: the simulator is deterministic)."""

    conn: psycopg.Connection[Any]
    inventory: Inventory
    emissions: Iterator[Emission]
    ledger: Ledger
    rules: Rules
    passes: int = 0
    dispatched: int = 0
    messages: int = 0
    #: dispatches the operator could not make as the ledger says (no incident open yet,
    #: the technician already there...): (device, ledger dispatch time, why)
    missed: list[tuple[str, int, str]] = field(default_factory=list)
    _next: Emission | None = None

    def setup(self) -> None:
        upsert_inventory(self.conn, self.inventory)
        self.conn.execute(
            "INSERT INTO users (username, display_name, role) VALUES (%s, %s, 'operator')"
            " ON CONFLICT DO NOTHING",
            (OPERATOR, "值班员"),
        )
        self.conn.commit()

    def store_until(self, t: int) -> None:
        """Write every message published up to and including ``t``."""
        writer = BatchWriter(self.conn, "simulated")
        batch: list[Accepted] = []
        while True:
            e = self._next if self._next is not None else next(self.emissions, None)
            self._next = None
            if e is None:
                break
            if e.t > t:
                self._next = e
                break
            batch.extend(accepted([e]))
            if len(batch) >= 5000:
                writer.write(batch)
                self.messages += len(batch)
                batch = []
        if batch:
            writer.write(batch)
            self.messages += len(batch)
        self.conn.commit()

    def pass_at(self, t: int, pass_fn: PassFn) -> None:
        self.store_until(t)
        pass_fn(at_ms(t))
        self.conn.commit()
        self.passes += 1

    def play(self, pass_fn: PassFn | None = None, every_ms: int = 1_800_000) -> None:
        """The whole stretch. A live engine passes every ``incidents.poll_s``; here a pass
        comes at each instant where the outcome of one can change — just after a fault's
        debounce ends (the incident opens), at each dispatch of the ledger (then the
        operator dispatches), just after each technician's arrival (maintenance mode:
        on site) and each repair — and every ``every_ms`` of simulated time (warnings,
        breaches, escalations fall due on the clock). ``pass_fn`` default:
        :func:`engine_passes`."""
        pass_fn = pass_fn or engine_passes(self.conn, self.rules)
        end = self.ledger.end
        start = self.ledger.first
        assert end is not None and start is not None
        debounce = 1000 * fault_debounce_s(self.rules)
        actor = Actor(OPERATOR, "cli")
        plan: list[tuple[int, int, str, Repair | None]] = []
        for r in self.ledger.repairs:
            plan.append((r.fault + debounce + 1, 0, r.device_id, None))
            if r.dispatch is not None:
                plan.append((r.dispatch, 1, r.device_id, r))
            for t in (r.arrival, r.repair):
                if t is not None:
                    plan.append((t + 1, 0, r.device_id, None))
        plan += [(t, 0, "", None) for t in range(start + every_ms, end, every_ms)]
        plan.sort(key=lambda p: p[:3])
        last = -1
        for t, _kind, _device, todo in plan:
            if t >= end:
                break
            if t != last:
                self.pass_at(t, pass_fn)
                last = t
            if todo is not None:
                self._dispatch(todo, actor)
        self.pass_at(end - 1, pass_fn)

    def _dispatch(self, r: Repair, actor: Actor) -> None:
        assert r.dispatch is not None
        row = self.conn.execute(
            "SELECT id, state FROM incidents WHERE device_id = %s AND started_at <= %s"
            " ORDER BY started_at DESC LIMIT 1",
            (r.device_id, at_ms(r.fault)),
        ).fetchone()
        if row is None or row[1] not in ("open", "acknowledged"):
            why = "no incident" if row is None else f"incident {row[0]} is {row[1]}"
            self.missed.append((r.device_id, r.dispatch, why))
            return
        when = at_ms(r.dispatch)
        try:
            if row[1] == "open":
                service.ack(self.conn, row[0], actor, at=when)
            service.dispatch(self.conn, row[0], actor, at=when, eta=when + timedelta(hours=2))
        except UsageError as exc:
            self.conn.rollback()
            self.missed.append((r.device_id, r.dispatch, str(exc)))
            return
        self.conn.commit()
        self.dispatched += 1


# ------------------------------------------------------------------ the ledger's figures


def ledger_incidents(ledger: Ledger, rules: Rules) -> list[TrueIncident]:
    """The ledger's incidents under the rules' numbers; the service windows are the ones
    开机率 counts (rules' ``service_windows`` ∩ the device's time in the fleet)."""
    end, first = ledger.end, ledger.first
    assert end is not None and first is not None
    inv = ledger.inventory
    windows = WindowSpans(rules.tz)
    day, last = from_ms(first).astimezone(rules.tz).date(), from_ms(end).astimezone(rules.tz).date()
    local_days = []
    while day <= last:
        local_days.append(day)
        day += timedelta(days=1)

    def scheduled(device_id: str) -> list[tuple[int, int]]:
        device = inv.device_by_id[device_id]
        return [s for d in local_days for s in scheduled_spans(device, d, rules, windows)]

    return true_incidents(
        ledger.repairs,
        ledger.intervals,
        end,
        debounce_ms=fault_debounce_s(rules) * 1000,
        merge_ms=rules.incidents.merge_flaps_s * 1000,
        repeat_ms=rules.vendors.repeat_fault_days * 86_400_000,
        scheduled=scheduled,
    )


def ledger_scorecard(
    incidents: Sequence[TrueIncident],
    inventory: Inventory,
    rules: Rules,
    end: int,
    period: tuple[int, int],
) -> dict[str, dict[str, Any]]:
    """Per vendor and per ``vendor model``: the figures ``kpi vendors`` shows, from the
    ledger's incidents, breaches judged in calendar hours against the contract's
    deadlines (response from the dispatch, repair from the outage start or from the
    outage start + the debounce when the contract counts from the opening)."""
    causes = {c.value for c in rules.vendors.incident_causes}
    devices = inventory.device_by_id
    tiers = {s.id: s.tier for s in inventory.subbranches}
    debounce = fault_debounce_s(rules)
    groups: dict[str, list[TrueIncident]] = {}
    for d in inventory.devices:
        groups.setdefault(d.vendor, [])
        groups.setdefault(f"{d.vendor} {d.model}", [])
    for i in incidents:
        if i.cause not in causes or not period[0] <= i.started < period[1]:
            continue
        groups.setdefault(i.vendor, []).append(i)
        groups.setdefault(f"{i.vendor} {i.model}", []).append(i)
    out: dict[str, dict[str, Any]] = {}
    high = rules.vendors.high_quantile
    for name, items in groups.items():
        response = [i.response_ms for i in items if i.response_ms is not None]
        repair = [i.repair_ms for i in items if i.repair_ms is not None]
        r_breach = p_breach = 0
        for i in items:
            d = devices[i.device_id]
            tier = tiers[inventory.branch_by_id[d.branch].subbranch]
            contract = rules.sla.contract_for(d.vendor, tier, d.placement, i.cls)
            if contract is None:
                continue
            if contract.response_hours is not None and i.dispatched is not None:
                arrived = i.on_site if i.on_site is not None else end
                r_breach += arrived - i.dispatched > contract.response_hours * HOUR
            if contract.repair_hours is not None:
                start = i.started + (debounce * 1000 if contract.repair_from == "opened" else 0)
                restored = i.restored if i.restored is not None else end
                p_breach += restored - start > contract.repair_hours * HOUR
        out[name] = {
            "incidents": len(items),
            "response_median_ms": quantile(response, 0.5),
            "response_p90_ms": quantile(response, high),
            "repair_median_ms": quantile(repair, 0.5),
            "repair_p90_ms": quantile(repair, high),
            "response_breaches": r_breach,
            "repair_breaches": p_breach,
            "repeats": sum(i.repeat for i in items),
            "open": sum(i.restored is None for i in items),
        }
    return out


COMPARED = ("incidents", "response_median_ms", "response_p90_ms", "repair_median_ms",
            "repair_p90_ms", "response_breaches", "repair_breaches", "open")  # fmt: skip


def scorecard_rows(report_rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``kpi vendors`` rows by group, the compared figures (repeats from the rate)."""
    out = {}
    for r in report_rows:
        row = {k: r[k] for k in COMPARED}
        row["repeats"] = r["repeats"]
        out[r["group"]] = row
    return out
