"""A realistic default fleet: sub-branches in three tiers, outlets, off-site self-service
banks and their devices, of any size from 10 to 100,000 devices.

The region is the seed plan's: Inner Mongolia's leagues and cities, the first tier the
largest cities. Deterministic for a given ``(devices, seed)``.
"""

from __future__ import annotations

import random
import re
from datetime import date, timedelta

from atmfleet.errors import UsageError
from atmfleet.inventory import (
    Branch,
    BranchKind,
    Device,
    DeviceType,
    Inventory,
    Maintainer,
    Placement,
    SubBranch,
    Tier,
)
from simulator.config import DEFAULT_MODELS, SimConfig

MIN_DEVICES = 1
MAX_DEVICES = 1_000_000

#: (id code, name, tier, weight): about a dozen sub-branches in three tiers.
SUBBRANCHES: tuple[tuple[str, str, Tier, float], ...] = (
    ("HHHT", "呼和浩特", Tier.FIRST, 0.16),
    ("BT", "包头", Tier.FIRST, 0.14),
    ("ORDOS", "鄂尔多斯", Tier.FIRST, 0.12),
    ("HLBE", "呼伦贝尔", Tier.SECOND, 0.08),
    ("CF", "赤峰", Tier.SECOND, 0.09),
    ("TL", "通辽", Tier.SECOND, 0.08),
    ("XM", "锡盟", Tier.SECOND, 0.07),
    ("WH", "乌海", Tier.SECOND, 0.06),
    ("BYNE", "巴彦淖尔", Tier.THIRD, 0.055),
    ("WLCB", "乌兰察布", Tier.THIRD, 0.05),
    ("XAM", "兴安盟", Tier.THIRD, 0.04),
    ("ALS", "阿拉善", Tier.THIRD, 0.035),
)

_OUTLET_NAMES = (
    "营业部", "新华支行", "中山支行", "建设支行", "人民路支行", "光明支行", "团结支行",
    "幸福支行", "和平支行", "胜利支行", "友谊支行", "文化支行", "北站支行", "东城支行",
    "西城支行", "南门支行", "开发区支行", "金桥支行", "青山支行", "矿区支行",
)  # fmt: skip
_SITE_NAMES = (
    "万达广场", "火车站", "大学城", "人民医院", "机场", "步行街", "体育馆", "会展中心",
    "汽车站", "工业园", "市政府", "百货大楼",
)  # fmt: skip

#: Type mix of devices at an outlet and at off-site banks (weights).
_OUTLET_TYPES = {
    DeviceType.ATM: 30, DeviceType.CRS: 24, DeviceType.DEPOSIT: 9,
    DeviceType.SMART_TELLER: 18, DeviceType.PASSBOOK: 9, DeviceType.INQUIRY: 7,
}  # fmt: skip
_OFF_SITE_TYPES = {DeviceType.ATM: 45, DeviceType.CRS: 50, DeviceType.DEPOSIT: 5}
_CASH_TYPES = (DeviceType.ATM, DeviceType.CRS, DeviceType.DEPOSIT)
#: In-hall cash devices keep the outlet's business hours; the rest of the lobby is 24x7.
IN_HALL_WINDOW = "mon-fri 09:00-17:00; sat,sun 10:00-16:00"
DEVICES_PER_OUTLET = 4.4
OFF_SITE_BANKS_PER_OUTLET = 0.5


#: The fields ``generate_inventory`` sets on every device.
_GENERATED_FIELDS = {
    "id", "branch", "type", "placement", "vendor", "model", "commissioned", "service_window",
}  # fmt: skip


def _pick(rng: random.Random, weights: dict[DeviceType, int]) -> DeviceType:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def generate_inventory(
    devices: int, seed: int, *, prefix: str = "", config: SimConfig | None = None
) -> Inventory:
    """A fleet of exactly ``devices`` devices. ``prefix`` starts every id (tests use it to
    keep runs apart on a shared broker)."""
    if not MIN_DEVICES <= devices <= MAX_DEVICES:
        raise UsageError(
            f"devices must be between {MIN_DEVICES} and {MAX_DEVICES:,} (got {devices})"
        )
    config = config or SimConfig()
    rng = random.Random(f"{seed}:inventory")
    subs = tuple(SubBranch(id=f"{prefix}{c}", name=n, tier=t) for c, n, t, _ in SUBBRANCHES)
    weights = [w for *_, w in SUBBRANCHES]

    n_outlets = max(1, round(devices / DEVICES_PER_OUTLET))
    n_banks = min(round(n_outlets * OFF_SITE_BANKS_PER_OUTLET), devices - n_outlets)
    # Every sub-branch gets an outlet before any gets a second one.
    outlet_subs = list(range(min(n_outlets, len(subs))))
    outlet_subs += rng.choices(range(len(subs)), weights=weights, k=n_outlets - len(outlet_subs))
    outlet_subs.sort()

    branches: list[Branch] = []
    per_sub: dict[int, int] = {}
    outlets: list[Branch] = []
    for s in outlet_subs:
        per_sub[s] = per_sub.get(s, 0) + 1
        k = per_sub[s]
        sub = subs[s]
        base = _OUTLET_NAMES[(k - 1) % len(_OUTLET_NAMES)]
        suffix = "" if k <= len(_OUTLET_NAMES) else str((k - 1) // len(_OUTLET_NAMES) + 1)
        branch = Branch(id=f"{sub.id}-{k:04d}", name=f"{sub.name}{base}{suffix}", subbranch=sub.id)
        branches.append(branch)
        outlets.append(branch)
    banks: list[Branch] = []
    for k in range(n_banks):
        parent = rng.choice(outlets)
        sub = next(s for s in subs if s.id == parent.subbranch)
        site = _SITE_NAMES[k % len(_SITE_NAMES)]
        bank = Branch(
            id=f"{sub.id}-S{k + 1:04d}",
            name=f"{sub.name}{site}离行式自助银行{k // len(_SITE_NAMES) + 1}",
            subbranch=sub.id,
            kind=BranchKind.SELF_SERVICE_BANK,
            parent=parent.id,
        )
        branches.append(bank)
        banks.append(bank)

    # One device for each branch, the rest spread by each branch's size.
    homes: list[Branch] = outlets + banks
    size = {
        b.id: rng.lognormvariate(0, 0.5) * (1.0 if b.kind is BranchKind.OUTLET else 0.45)
        for b in homes
    }
    extra = rng.choices(homes, weights=[size[b.id] for b in homes], k=devices - len(homes))
    slots = homes + extra
    slots.sort(key=lambda b: b.id)

    vendor_names = [v for v, p in config.vendors.items() if p.share > 0] or list(config.vendors)
    vendor_weights = [config.vendors[v].share or 1.0 for v in vendor_names]
    counts: dict[str, int] = {}
    days: dict[int, date] = {}  # one date object for the devices commissioned on a day
    out: list[Device] = []
    for branch in slots:
        n = counts.get(branch.id, 0) + 1
        counts[branch.id] = n
        window = None
        if branch.kind is BranchKind.OUTLET:
            if n == 1:
                # Nearly every outlet has a deposit-capable device; a few do not.
                dtype = DeviceType.CRS if rng.random() < 0.95 else DeviceType.ATM
            else:
                dtype = _pick(rng, _OUTLET_TYPES)
            if dtype in _CASH_TYPES:
                placement = (
                    Placement.SELF_SERVICE_BANK if rng.random() < 0.55 else Placement.ON_SITE
                )
                if placement is Placement.ON_SITE and rng.random() < 0.15:
                    window = IN_HALL_WINDOW
            else:
                placement = Placement.ON_SITE
        else:
            dtype = _pick(rng, _OFF_SITE_TYPES)
            placement = Placement.OFF_SITE
        vendor = rng.choices(vendor_names, weights=vendor_weights)[0]
        model = DEFAULT_MODELS.get(vendor, {}).get(dtype, f"{vendor}-{dtype.value}")
        day = rng.randrange(11 * 365)
        commissioned = days.get(day) or days.setdefault(day, date(2015, 1, 1) + timedelta(days=day))
        device = Device(
            id=f"{branch.id}-{n:02d}",
            branch=branch.id,
            type=dtype,
            placement=placement,
            vendor=vendor,
            model=model,
            commissioned=commissioned,
            service_window=window,
        )
        # Every generated device sets the same fields: one set for them all instead of
        # pydantic's own per model (728 bytes, 73 MB of a 100,000-device fleet). A frozen
        # model never changes it; model_copy copies it.
        if device.__pydantic_fields_set__ == _GENERATED_FIELDS:
            object.__setattr__(device, "__pydantic_fields_set__", _GENERATED_FIELDS)
        out.append(device)
    return Inventory(
        subbranches=subs,
        branches=tuple(branches),
        devices=tuple(out),
        maintainers=maintainers(subs, sorted({d.vendor for d in out}), prefix),
    )


def maintainers(
    subs: tuple[SubBranch, ...], vendors: list[str], prefix: str = ""
) -> tuple[Maintainer, ...]:
    """Each vendor's service team per sub-branch (维保 contacts the incidents are dispatched
    to), with made-up contacts. Drawn from no random stream, so adding them changed no
    other part of a generated fleet."""
    out = []
    for vendor in vendors:
        slug = re.sub(r"[^A-Za-z0-9_.-]", "_", vendor)[:24]
        for k, sub in enumerate(subs):
            ident = f"{prefix}M-{slug}-{sub.id.removeprefix(prefix)}"[:64]
            out.append(
                Maintainer(
                    id=ident,
                    vendor=vendor,
                    region=sub.id,
                    name=f"{vendor} {sub.name}维保站",
                    phone=f"400-800-{k:04d}",
                    email=f"{ident.lower()}@service.example",
                    manager=f"{vendor} 区域经理",
                    manager_email=f"{slug.lower()}-manager@service.example",
                )
            )
    return tuple(out)
