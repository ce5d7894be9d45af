"""Who is in the fleet: the one rule every count, denominator and roll-up uses.

A device is in the fleet on a local day when it was commissioned on or before that day
and not decommissioned by then (``decommissioned`` is the first day it is out). Over a
period, it counts when it was in the fleet on at least one day of the period; its time
outside the fleet is never scheduled (:func:`rules.uptime.fleet_span`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from typing import Protocol, TypeVar


class InService(Protocol):
    """Anything with the two inventory dates (a device, or its daily series)."""

    @property
    def commissioned(self) -> date: ...
    @property
    def decommissioned(self) -> date | None: ...


D = TypeVar("D", bound=InService)


def in_fleet(device: InService, on: date) -> bool:
    """Commissioned on or before ``on`` and not decommissioned by then."""
    return device.commissioned <= on and (
        device.decommissioned is None or device.decommissioned > on
    )


def in_fleet_during(device: InService, first: date, last: date) -> bool:
    """In the fleet on at least one day of ``first``..``last``."""
    return device.commissioned <= last and (
        device.decommissioned is None or device.decommissioned > first
    )


def fleet_devices(devices: Iterable[D], first: date, last: date | None = None) -> list[D]:
    """The devices in the fleet on ``first`` (or on some day of ``first``..``last``)."""
    end = first if last is None else last
    return [d for d in devices if in_fleet_during(d, first, end)]
