"""The broker policy and credential files, without a broker (tests/test_broker_security.py
runs them against a real Mosquitto)."""

from __future__ import annotations

import base64
import stat
from datetime import date
from pathlib import Path

import pytest
from cryptography import x509

from atmfleet.errors import ConfigError
from atmfleet.inventory import Inventory
from atmfleet.inventory_io import load_inventory
from broker import passwords
from broker.credentials import DeviceAuth, generate
from broker.policy import Role, identities, render_acl

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "inventory.yaml"


def test_the_hash_is_the_one_mosquitto_passwd_writes() -> None:
    # `mosquitto_passwd -b file alice secret` (Mosquitto 2.0.11) wrote this line.
    line = (
        "alice:$7$101$yvMH/VADb4GBvtta$BCtLh9HOpKBH+8UL6wXU7ez0K2P8AuLAxXdrPn99uQP6kKFWTThc9"
        "MC5HoqEaBUCeA5tZqMp+5EG1eZ8KrzDtw=="
    )
    encoded = line.split(":", 1)[1]
    salt = base64.b64decode(encoded.split("$")[3])
    assert passwords.hash_password("secret", salt=salt) == encoded
    assert passwords.verify("secret", encoded) and not passwords.verify("Secret", encoded)


def _with(inv: Inventory, **changes: object) -> Inventory:
    first = inv.devices[0].model_copy(update=changes)
    return inv.model_copy(update={"devices": (first, *inv.devices[1:])})


def test_decommissioned_devices_have_no_identity_and_ids_are_unique() -> None:
    inv = load_inventory(EXAMPLE)
    names = {i.name for i in identities(inv)}
    assert inv.devices[0].id in names
    gone = _with(inv, decommissioned=date(2026, 1, 1))
    assert inv.devices[0].id not in {i.name for i in identities(gone)}
    assert inv.devices[0].id not in render_acl(identities(gone))
    with pytest.raises(ConfigError, match="atmfleet-feed"):
        identities(_with(inv, id="atmfleet-feed"))
    clash = _with(inv, gateway=inv.devices[1].id)
    with pytest.raises(ConfigError, match="both a"):
        identities(clash)


def test_a_gateway_gets_exactly_its_devices_topics() -> None:
    inv = _with(load_inventory(EXAMPLE), gateway="GW-9")
    gw = next(i for i in identities(inv) if i.role is Role.GATEWAY)
    dev = inv.devices[0].id
    assert gw.name == "GW-9" and gw.speaks_for == (dev,)
    assert all(f"/{dev}" in t for t in gw.write)
    assert {t for t in gw.write if "/device/" not in t} == {
        f"atmfleet/v1/result/{dev}",
        f"atmfleet/v1/data/{dev}",
    }
    assert gw.read == (f"atmfleet/v1/command/{dev}",)


def test_only_the_commands_identity_reads_results_and_uploads() -> None:
    idents = identities(load_inventory(EXAMPLE))
    readers = {
        i.name
        for i in idents
        if any(t.startswith(("atmfleet/v1/result", "atmfleet/v1/data")) for t in i.read)
    }
    assert readers == {"atmfleet-commands"}
    commands = next(i for i in idents if i.role is Role.COMMANDS)
    assert commands.write == ()


def test_rerunning_keeps_credentials_and_revokes_removed_ones(tmp_path: Path) -> None:
    inv = load_inventory(EXAMPLE)
    out = tmp_path / "creds"
    generate(out, identities(inv))
    removed = inv.devices[0].id
    kept = inv.devices[1].id
    kept_cert = (out / "clients" / f"{kept}.pem").read_bytes()
    serial = x509.load_pem_x509_certificate(
        (out / "clients" / f"{removed}.pem").read_bytes()
    ).serial_number
    feed_password = (out / "secrets" / "atmfleet-feed.password").read_text()
    for path in [out / "ca.key", out / "server.key", *(out / "secrets").iterdir(),
                 *(out / "clients").glob("*.key")]:  # fmt: skip
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    smaller = inv.model_copy(update={"devices": inv.devices[1:]})
    report = generate(out, identities(smaller))
    assert report.revoked == [removed] and not report.added
    assert not (out / "clients" / f"{removed}.pem").exists()
    assert (out / "clients" / f"{kept}.pem").read_bytes() == kept_cert
    assert (out / "secrets" / "atmfleet-feed.password").read_text() == feed_password
    crl = x509.load_pem_x509_crl((out / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    # Password mode: every device in the password file instead.
    report = generate(out, identities(smaller), device_auth=DeviceAuth.PASSWORD)
    assert f"{kept}:$7$" in (out / "passwords").read_text()
    assert not any((out / "clients").glob("*.pem"))
