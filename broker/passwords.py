"""Mosquitto 2 password files: ``name:$7$<iterations>$<salt>$<hash>`` (PBKDF2-HMAC-SHA512).

The same format ``mosquitto_passwd`` writes: a 12-byte random salt, a 64-byte SHA-512
PBKDF2 digest, both base64; 101 iterations is its default. The passwords generated here are
32 random bytes, so the iteration count is not what protects them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

ITERATIONS = 101
SALT_BYTES = 12


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify(password: str, encoded: str) -> bool:
    """Whether ``password`` matches a ``$7$`` hash (as the broker checks it)."""
    try:
        _, kind, iterations, salt, digest = encoded.split("$")
    except ValueError:
        return False
    if kind != "7":
        return False
    mine = hash_password(password, salt=base64.b64decode(salt), iterations=int(iterations))
    return hmac.compare_digest(mine.rsplit("$", 1)[1], digest)


def new_password() -> str:
    return secrets.token_urlsafe(32)


def render(entries: dict[str, str]) -> str:
    """A password file from ``{username: hash}``, sorted by name."""
    return "".join(f"{name}:{entries[name]}\n" for name in sorted(entries))
