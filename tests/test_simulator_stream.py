"""The simulator's output is pinned: for three fleets the complete message stream (every
field of every emission, in order), the repairs in the order the generator reports them,
the ledger (intervals, counters, transaction days, summary) and the messages rows hash to
the values the reference engine gave. A faster engine must not change one byte.

The three fleets cover: busy incidents with a long heartbeat; real last wills, frequent
faults and technicians from 14:00 local (a planned maintenance may fall that day);
sub-branch outages with store-and-forward backlogs, devices commissioned and
decommissioned inside the run, a calendar holiday, and the run split in parts.
"""

from __future__ import annotations

import hashlib
import heapq
import io
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from atmfleet.inventory import Inventory
from simulator.config import SimConfig, make_config
from simulator.engine import Emission, Repair, generate, ms
from simulator.fleet import generate_inventory
from simulator.ledger import Ledger


@dataclass(frozen=True)
class Fleet:
    devices: int
    seed: int
    start: datetime
    days: float
    config: dict[str, Any]
    heartbeat_s: int | None = None
    real_wills: bool = False
    parts: int = 1
    #: Device index -> (commissioned, decommissioned) changed from the generated fleet.
    lifetimes: tuple[tuple[int, date, date | None], ...] = ()

    def inventory(self) -> Inventory:
        inv = generate_inventory(self.devices, seed=self.seed, prefix=f"st{self.seed}-")
        devices = list(inv.devices)
        for i, commissioned, decommissioned in self.lifetimes:
            devices[i] = devices[i].model_copy(
                update={"commissioned": commissioned, "decommissioned": decommissioned}
            )
        return Inventory(
            subbranches=inv.subbranches,
            branches=inv.branches,
            devices=tuple(devices),
            maintainers=inv.maintainers,
        )


FLEETS = {
    "incidents": Fleet(
        40, 3, datetime(2026, 11, 2, tzinfo=UTC), 3,
        {"incidents": {"branch_power_cuts_per_year": 40, "subbranch_network_outages_per_year": 60,
                       "device_link_drops_per_year": 80}},
        heartbeat_s=300,
    ),
    "technicians": Fleet(
        30, 5, datetime(2026, 11, 2, 6, tzinfo=UTC), 2,
        {"vendors": {v: {"mtbf_days": 1.5} for v in ("GRG", "NCR", "Yihua")}},
        real_wills=True,
    ),
    "backlogs": Fleet(
        50, 9, datetime(2026, 9, 29, 6, tzinfo=UTC), 3,
        {"incidents": {"subbranch_network_outages_per_year": 300, "network_outage_min": 90},
         "vendors": {v: {"mtbf_days": 5} for v in ("GRG", "NCR", "Yihua")}},
        heartbeat_s=120,
        parts=3,
        lifetimes=((4, date(2026, 9, 30), None), (11, date(2015, 3, 1), date(2026, 10, 1)),
                   (23, date(2026, 10, 5), None)),
    ),
}  # fmt: skip

#: sha256 of each part of each fleet's run, as the reference engine wrote them.
EXPECTED: dict[str, dict[str, str]] = {
    "backlogs": {
        "emissions": "5f057d134827c29b7f448960f0358800e60b3f8ae5a266eb8d97e58817fc7eba",
        "repairs reported": "7589b41559f31f25071f65a38620af447073aee653581e26245450d3323ffd69",
        "repairs": "072836d6e2df07ebee2ccf5fa14253434c9e4ae295906f61c0deccd55a5b2d96",
        "intervals": "0ff565dc296a34146324d87b12c4d415b35ec74adb92bf50b1c4e13b83fae120",
        "counters": "a83aabb1d1e5e68ca031af1a1bd7c5ea92ff82cae34e1c7cf610d55d2df323f3",
        "txn_days": "9864a8589fbd79f9db09d167c61197d7476dacdc6ede09cbc59e2a3be3ae341b",
        "summary": "1a1c3cf459414922d42347e345420c05177fdd88b2765eb278c1d85b5a1e1c7a",
        "messages rows": "eca8e07388c3af200b0ba2e0ec494f84785f4575525e5178532cefceaba79dcf",
        "count": "124222",
    },
    "incidents": {
        "emissions": "46a38a06b928676fdeaf9ef75a14f7091ce8845700791cf3dbde4fefc447c8a3",
        "repairs reported": "0b40704d6b45bb5e2400f1c11f8649ca93db61e92eb63d945eaee4ae128617d3",
        "repairs": "15b8a4508376fa84fa1139ccec23b40b267b35aa7ddfb19c182e486a9407ea04",
        "intervals": "e52dd4898a81cd010ae617478408f68cb5b9ba8bb083d0c0d23effd7c9d6e83a",
        "counters": "6a560cc50f5a4e08516fcfba57a16c07b3cda8a50ec50d4f18117f2b25cd765a",
        "txn_days": "b2064e637bf41c3a3cce1860fe9d699f06e29b6c296a7839e4ab73b75b7df890",
        "summary": "a800424d3f12e5a3f716a50a65fcfec072546fdd61f08799cf93c84efb0dba16",
        "messages rows": "1b41ae032de4d0aa8c9bd419dc5f15d24dec0e835a19c02d899b4195fb30a2c7",
        "count": "47712",
    },
    "technicians": {
        "emissions": "157db13517c7e17db1d9354f358b5627d50a74a56ca1d1047d8a3b8a772e6092",
        "repairs reported": "ad8163462a5d7b4c5bc425b8049586922d98c19751853e62bec6ab510234e632",
        "repairs": "945ae5d742c5ca924b2cc935b308acd081d108e9610c0997da73ae00e5b2115c",
        "intervals": "4eca39592b71a89a66cd80d30bf62d94e1a5decbe9e4a42f1bdf771d4994bdf5",
        "counters": "87a84b8b4c45bc12a37c49c6dc970d7683004a9bddef3f69f0e224649ba03fd4",
        "txn_days": "cf2c5051e908c37030be3442856ba9a5f435c4ceb932a4f3893ebcdd5cada0fe",
        "summary": "7af4b1f9e1fe697020626497107300da02be2ac6dbb369a59faeedb2c7efbf48",
        "messages rows": "f15ffd82e226510f4b5e7f80bdde2d9c164dc98ca3f11dfc4e6b8340cf2d2cb0",
        "count": "93447",
    },
}


def _digest(items: Any) -> str:
    h = hashlib.sha256()
    for item in items:
        h.update(repr(item).encode())
        h.update(b"\n")
    return h.hexdigest()


def run(fleet: Fleet) -> dict[str, str]:
    """Every part of the fleet's run, hashed."""
    inv = fleet.inventory()
    config = make_config(fleet.config) if fleet.config else SimConfig()
    end = fleet.start + timedelta(days=fleet.days)
    rows = io.StringIO()
    ledger = Ledger(inv, config, fleet.seed, heartbeat_s=fleet.heartbeat_s, messages_out=rows)
    repairs: list[Repair] = []

    def on_repair(r: Repair) -> None:
        repairs.append(r)
        ledger.record_repair(r)

    kwargs: dict[str, Any] = {"real_wills": fleet.real_wills, "heartbeat_s": fleet.heartbeat_s,
                              "on_repair": on_repair}  # fmt: skip
    emissions: list[Emission]
    if fleet.parts == 1:
        emissions = list(generate(inv, config, fleet.seed, fleet.start, end, **kwargs))
    else:
        pieces = [list(generate(inv, config, fleet.seed, fleet.start, end, part=(k, fleet.parts),
                                **kwargs))
                  for k in range(fleet.parts)]  # fmt: skip
        emissions = list(heapq.merge(*pieces, key=lambda e: e.t))
    for e in emissions:
        ledger.record(e)
    ledger.finish(ms(end))
    return {
        "emissions": _digest((*e[:4], int(e.control), *e[5:]) for e in emissions),
        "repairs reported": _digest(repairs),
        "repairs": _digest(ledger.repairs),
        "intervals": _digest(ledger.intervals),
        "counters": _digest(ledger.counters),
        "txn_days": _digest(sorted(ledger.txn_days.items())),
        "summary": _digest(sorted(ledger.summary().items())),
        "messages rows": hashlib.sha256(rows.getvalue().encode()).hexdigest(),
        "count": str(len(emissions)),
    }


@pytest.mark.parametrize("name", sorted(FLEETS))
def test_the_stream_and_the_ledger_are_the_reference_ones(name: str) -> None:
    assert run(FLEETS[name]) == EXPECTED[name]
