"""The broker's credentials directory, generated from the identities and kept in step.

Layout (the shipped ``deploy/mosquitto/mosquitto.conf`` points at these names)::

    ca.pem, ca.key          the CA (generated unless the bank's own is given)
    server.pem, server.key  the broker's TLS certificate
    crl.pem                 client certificates revoked (devices removed from the inventory)
    passwords               Mosquitto password file (services; devices in password mode)
    clients/<id>.pem/.key   client certificates (devices and gateways in cert mode)
    secrets/<id>.password   each password identity's password, to hand to that client

Re-running keeps what is still valid (existing passwords and certificates are not
rotated), adds new identities and revokes removed ones: their password-file line, key,
certificate and secret are deleted and their certificate serial goes into ``crl.pem``.
Private keys and secrets are written 0600.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from cryptography import x509

from atmfleet.errors import ConfigError
from broker import passwords, pki
from broker.policy import Identity, Role


class DeviceAuth(StrEnum):
    CERT = "cert"  # client certificate, CN = device id (recommended)
    PASSWORD = "password"  # password file entry, username = device id


@dataclass
class Report:
    added: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{len(self.added)} identities added, {len(self.kept)} kept, "
            f"{len(self.revoked)} revoked"
            + (f" ({', '.join(self.revoked[:10])}{'…' if len(self.revoked) > 10 else ''})"
               if self.revoked else "")
        )  # fmt: skip


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Atomically, with ``mode`` from the start (a secret is never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _uses_cert(ident: Identity, device_auth: DeviceAuth) -> bool:
    return ident.role in (Role.DEVICE, Role.GATEWAY) and device_auth is DeviceAuth.CERT


def generate(
    out: Path,
    idents: Sequence[Identity],
    *,
    device_auth: DeviceAuth = DeviceAuth.CERT,
    server_names: Sequence[str] = ("localhost", "127.0.0.1"),
    ca_cert: Path | None = None,
    ca_key: Path | None = None,
) -> Report:
    out.mkdir(parents=True, exist_ok=True)
    for private in ("secrets", "clients"):
        (out / private).mkdir(mode=0o700, exist_ok=True)
        (out / private).chmod(0o700)
    ca, key = _ca(out, ca_cert, ca_key)
    report = Report()
    if not (out / "server.pem").exists() or not pki.issued_by(
        pki.load_cert(out / "server.pem"), ca
    ):
        skey, scert = pki.make_server(key, ca, list(server_names))
        write_file(out / "server.key", pki.key_pem(skey), 0o600)
        write_file(out / "server.pem", pki.cert_pem(scert), 0o644)

    wanted_pw = {i.name for i in idents if not _uses_cert(i, device_auth)}
    wanted_cert = {i.name for i in idents if _uses_cert(i, device_auth)}

    # Passwords: keep the ones still wanted, create the missing, drop the rest.
    old_hashes = _read_password_file(out / "passwords")
    secrets_dir = out / "secrets"
    hashes: dict[str, str] = {}
    for name in sorted(wanted_pw):
        secret_file = secrets_dir / f"{name}.password"
        if name in old_hashes and secret_file.exists():
            hashes[name] = old_hashes[name]
            report.kept.append(name)
            continue
        secret = passwords.new_password()
        write_file(secret_file, secret.encode(), 0o600)
        hashes[name] = passwords.hash_password(secret)
        report.added.append(name)
    write_file(out / "passwords", passwords.render(hashes).encode(), 0o640)
    if secrets_dir.is_dir():
        for path in secrets_dir.glob("*.password"):
            if path.name.removesuffix(".password") not in wanted_pw:
                path.unlink()
    report.revoked.extend(sorted(set(old_hashes) - wanted_pw - wanted_cert))

    # Certificates: keep valid ones issued by this CA, issue the missing, revoke the rest.
    revoked = _read_crl(out / "crl.pem", ca)
    clients = out / "clients"
    for name in sorted(wanted_cert):
        pem = clients / f"{name}.pem"
        if pem.exists() and (clients / f"{name}.key").exists():
            cert = pki.load_cert(pem)
            if pki.issued_by(cert, ca) and cert.serial_number not in revoked:
                report.kept.append(name)
                continue
        ckey, cert = pki.make_client(key, ca, name)
        write_file(clients / f"{name}.key", pki.key_pem(ckey), 0o600)
        write_file(pem, pki.cert_pem(cert), 0o644)
        report.added.append(name)
    if clients.is_dir():
        for pem in sorted(clients.glob("*.pem")):
            name = pem.name.removesuffix(".pem")
            if name in wanted_cert:
                continue
            cert = pki.load_cert(pem)
            if pki.issued_by(cert, ca):
                revoked[cert.serial_number] = datetime.now(UTC)
            pem.unlink()
            (clients / f"{name}.key").unlink(missing_ok=True)
            if name not in report.revoked:
                report.revoked.append(name)
    write_file(out / "crl.pem", pki.cert_pem_crl(pki.make_crl(key, ca, revoked)), 0o644)
    return report


def _ca(out: Path, ca_cert: Path | None, ca_key: Path | None) -> tuple[x509.Certificate, pki.Key]:
    if (ca_cert is None) != (ca_key is None):
        raise ConfigError("--ca-cert and --ca-key go together (the bank's CA and its key)")
    if ca_cert is not None and ca_key is not None:
        cert, key = pki.load_cert(ca_cert), pki.load_key(ca_key)
        if cert.public_key() != key.public_key():
            raise ConfigError(f"{ca_key} is not the key of {ca_cert}")
        write_file(out / "ca.pem", pki.cert_pem(cert), 0o644)
        return cert, key
    if (out / "ca.pem").exists():
        if not (out / "ca.key").exists():
            raise ConfigError(
                f"{out / 'ca.pem'} exists but its key is not here: pass --ca-cert and --ca-key"
            )
        return pki.load_cert(out / "ca.pem"), pki.load_key(out / "ca.key")
    key, cert = pki.make_ca()
    write_file(out / "ca.key", pki.key_pem(key), 0o600)
    write_file(out / "ca.pem", pki.cert_pem(cert), 0o644)
    return cert, key


def _read_password_file(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    entries: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if ":" in line and not line.startswith("#"):
            name, encoded = line.split(":", 1)
            entries[name] = encoded
    return entries


def _read_crl(path: Path, ca: x509.Certificate) -> dict[int, datetime]:
    if not path.exists():
        return {}
    try:
        crl = x509.load_pem_x509_crl(path.read_bytes())
    except ValueError:
        raise ConfigError(f"{path}: not a PEM certificate revocation list") from None
    if crl.issuer != ca.subject:
        return {}
    return {r.serial_number: r.revocation_date_utc for r in crl}
