"""Who may speak for a device: the broker identities and the ACL, derived from the inventory.

Every client of the broker has an identity (its MQTT username; with a client certificate,
the certificate's common name, see ``use_identity_as_username``):

- a **device** publishes only on its own topics and reads only its own command topic;
- a **gateway** (``gateway:`` of a device in the inventory) publishes and reads the same for
  the devices attached to it, and nothing else;
- the **collector** identities read the device and counter topics, and they alone;
- the **counter feed** (core banking) alone writes ``branch/+/counter``;
- the **operators' tools** write command topics and read the broker's ``$SYS`` statistics;
- the **commands** identities (``atmfleet command listen``) alone read what devices answer
  to commands (``result/<id>``) and the journals they upload (``data/<id>``), which only
  the device itself (or its gateway) may write.

The ACL lists each identity with explicit topics (no ``pattern`` lines): an identity the
inventory no longer has gets no line at all, so it can do nothing even with a certificate
that is still valid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from atmfleet.errors import ConfigError
from atmfleet.inventory import Inventory
from atmfleet.protocol import TOPIC_ROOT, Kind, device_topic
from commands.protocol import COMMAND_ROOT, DATA_ROOT, RESULT_ROOT, data_topic, result_topic
from commands.protocol import command_topic as command_topic

#: The default service identities (their client ids too: the broker forces client id =
#: username, so nobody else can take the collector's session).
DEFAULT_COLLECTORS = ("atmfleet-collector-1",)
DEFAULT_FEED = "atmfleet-feed"
DEFAULT_OPERATORS = ("atmfleet-ops",)
DEFAULT_COMMANDS = ("atmfleet-commands",)

__all__ = ["COMMAND_ROOT", "DATA_ROOT", "RESULT_ROOT", "command_topic"]


class Role(StrEnum):
    DEVICE = "device"
    GATEWAY = "gateway"
    COLLECTOR = "collector"
    FEED = "feed"
    OPERATOR = "operator"
    COMMANDS = "commands"


@dataclass(frozen=True)
class Identity:
    name: str
    role: Role
    write: tuple[str, ...] = ()
    read: tuple[str, ...] = ()
    speaks_for: tuple[str, ...] = field(default=())


def _device_topics(device_id: str) -> tuple[str, ...]:
    """What a device (or its gateway) may publish: telemetry, command results, uploads."""
    telemetry = tuple(device_topic(device_id, kind) for kind in Kind)
    return (*telemetry, result_topic(device_id), data_topic(device_id))


@dataclass(frozen=True)
class Services:
    collectors: tuple[str, ...] = DEFAULT_COLLECTORS
    feed: str = DEFAULT_FEED
    operators: tuple[str, ...] = DEFAULT_OPERATORS
    commands: tuple[str, ...] = DEFAULT_COMMANDS

    def names(self) -> list[str]:
        return [*self.collectors, self.feed, *self.operators, *self.commands]


def identities(inventory: Inventory, services: Services | None = None) -> list[Identity]:
    """Every identity of the broker, services first, then gateways and devices by id.

    Decommissioned devices get none. An id used twice (a device named like a service or a
    gateway) is refused: the broker cannot tell such identities apart.
    """
    services = services or Services()
    out: list[Identity] = [
        Identity(
            name,
            Role.COLLECTOR,
            read=(f"{TOPIC_ROOT}/device/+/+", f"{TOPIC_ROOT}/branch/+/counter"),
        )
        for name in services.collectors
    ]
    out.append(Identity(services.feed, Role.FEED, write=(f"{TOPIC_ROOT}/branch/+/counter",)))
    out.extend(
        Identity(name, Role.OPERATOR, write=(f"{COMMAND_ROOT}/+",), read=("$SYS/#",))
        for name in services.operators
    )
    out.extend(
        Identity(name, Role.COMMANDS, read=(f"{RESULT_ROOT}/+", f"{DATA_ROOT}/+"))
        for name in services.commands
    )
    active = sorted((d for d in inventory.devices if d.decommissioned is None), key=lambda d: d.id)
    gateways: dict[str, list[str]] = {}
    for device in active:
        if device.gateway is not None:
            gateways.setdefault(device.gateway, []).append(device.id)
    for name in sorted(gateways):
        ids = gateways[name]
        out.append(
            Identity(
                name,
                Role.GATEWAY,
                write=tuple(t for d in ids for t in _device_topics(d)),
                read=tuple(command_topic(d) for d in ids),
                speaks_for=tuple(ids),
            )
        )
    out.extend(
        Identity(
            d.id,
            Role.DEVICE,
            write=_device_topics(d.id),
            read=(command_topic(d.id),),
            speaks_for=(d.id,),
        )
        for d in active
    )
    seen: dict[str, Role] = {}
    for ident in out:
        if ident.name in seen:
            raise ConfigError(
                f"broker identity {ident.name!r} is both a {seen[ident.name].value} and a "
                f"{ident.role.value}; every device, gateway and service needs its own name"
            )
        seen[ident.name] = ident.role
    return out


def render_acl(idents: Sequence[Identity]) -> str:
    """The Mosquitto ``acl_file``: one ``user`` block per identity, explicit topics only."""
    lines = [
        "# atmfleet broker ACL, generated by `atmfleet broker acl` from the inventory.",
        "# Do not edit: regenerate after every inventory change, then reload the broker",
        "# (SIGHUP). An identity not listed here may do nothing.",
        "",
    ]
    for ident in idents:
        lines.append(f"# {ident.role.value}")
        lines.append(f"user {ident.name}")
        lines.extend(f"topic write {t}" for t in ident.write)
        lines.extend(f"topic read {t}" for t in ident.read)
        lines.append("")
    return "\n".join(lines)


def check_names(idents: Sequence[Identity]) -> None:
    """Names that would break the ACL or password file syntax are refused."""
    for ident in idents:
        if not ident.name or any(c in ident.name for c in " \t\n:#+/") or ident.name[0] == "$":
            raise ConfigError(f"broker identity {ident.name!r}: not a usable name")
