"""设备收入贡献: fee income per device, and per device of a group (docs/kpis.md, "Revenue")."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal


@dataclass(slots=True)
class Revenue:
    """Fees of counted transactions of a device or a group of devices."""

    fees: Decimal = Decimal("0")
    fee_transactions: int = 0
    devices: int = 0

    @property
    def per_device(self) -> Decimal | None:
        """Fees / devices in the fleet, unrounded (rounded only at display)."""
        return self.fees / self.devices if self.devices else None


def revenue(
    devices: Iterable[str],
    fees: Mapping[str, tuple[Decimal, int]],
    key: Callable[[str], str | None],
) -> dict[str, Revenue]:
    """Group the fleet's devices (every one in the fleet in the period, earning or not:
    :func:`rules.fleet.fleet_devices`) by ``key``; ``fees`` maps a device to its (fee
    total, number of transactions that carried a fee)."""
    out: dict[str, Revenue] = {}
    for device_id in devices:
        group = key(device_id)
        if group is None:
            continue
        acc = out.get(group)
        if acc is None:
            acc = out[group] = Revenue()
        fee, count = fees.get(device_id, (Decimal("0"), 0))
        acc.fees += fee
        acc.fee_transactions += count
        acc.devices += 1
    return out
