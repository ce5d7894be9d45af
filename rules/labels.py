"""What a stretch of a device's timeline is: available, a downtime cause, or not counted.

A device's state messages map onto these labels (``docs/kpis.md``, "Causes"); the
timeline adds ``communications`` for silent gaps and last wills, ``power`` for the offline
time a ``power_restored`` event explains, and ``unknown`` for collector outages.
"""

from __future__ import annotations

from enum import StrEnum

from atmfleet.protocol import DeviceState


class Label(StrEnum):
    AVAILABLE = "available"  # in_service or degraded
    FAULT = "fault"  # hardware/software fault
    CASH_OUT = "cash_out"  # 缺钞
    DEPOSIT_FULL = "deposit_full"  # deposit cassette full
    COMMUNICATIONS = "communications"  # offline: comms_down, last will, silent gap
    POWER = "power"  # powered_off, or offline inside a power cut
    SUPERVISOR = "supervisor"  # supervisor (加钞/清机) or unplanned maintenance
    PLANNED = "planned"  # declared planned maintenance
    CLOSED = "closed"  # the device says closed although its window is open
    UNKNOWN = "unknown"  # the collector was down: we do not know


#: Labels that are downtime causes (everything but available and unknown).
CAUSES: tuple[Label, ...] = tuple(
    label for label in Label if label not in (Label.AVAILABLE, Label.UNKNOWN)
)

STATE_LABEL: dict[str, Label] = {
    DeviceState.IN_SERVICE: Label.AVAILABLE,
    DeviceState.DEGRADED: Label.AVAILABLE,
    DeviceState.FAULT: Label.FAULT,
    DeviceState.CASH_OUT: Label.CASH_OUT,
    DeviceState.DEPOSIT_FULL: Label.DEPOSIT_FULL,
    DeviceState.SUPERVISOR: Label.SUPERVISOR,
    DeviceState.MAINTENANCE: Label.SUPERVISOR,
    DeviceState.PLANNED_MAINTENANCE: Label.PLANNED,
    DeviceState.COMMS_DOWN: Label.COMMUNICATIONS,
    DeviceState.CLOSED: Label.CLOSED,
    DeviceState.POWERED_OFF: Label.POWER,
}


def label_of_state(state: str) -> Label:
    """The label of a reported state (``ValueError`` for a state the protocol lacks)."""
    try:
        return STATE_LABEL[state]
    except KeyError:
        raise ValueError(f"unknown device state {state!r}") from None
