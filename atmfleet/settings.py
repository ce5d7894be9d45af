"""Service settings: one pydantic-settings model, read from ``ATMFLEET_*`` variables.

Nested sections use ``__`` (``ATMFLEET_COLLECTOR__BATCH_SIZE=2000``). Secrets
(``mqtt_password``, the password inside ``database_url``) may also come from files in
``ATMFLEET_SECRETS_DIR`` (default ``/run/secrets``), one file per field name, so they
never have to appear in the environment or in a log line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from atmfleet.errors import ConfigError


class CollectorSettings(BaseModel):
    """How the collector batches, acknowledges and retries."""

    client_id: str = Field("atmfleet-collector-1", min_length=1, max_length=64)
    share_group: str | None = Field(
        None, description="Join $share/<group>/... so several collectors split one fleet."
    )
    session_expiry_s: int = Field(7 * 24 * 3600, ge=0)
    batch_size: int = Field(10_000, ge=1, le=1_000_000)
    batch_max_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    flush_interval_s: float = Field(0.5, gt=0, le=60)
    max_inflight: int = Field(
        40_000, ge=1, description="Messages held unacknowledged, at most (MQTT 5 Receive Maximum)."
    )
    max_buffered_bytes: int = Field(
        1024 * 1024 * 1024,
        ge=1024 * 1024,
        description="Bytes of messages held unacknowledged, at most: Receive Maximum is "
        "lowered so that even messages of the largest size fit.",
    )
    retry_max_backoff_s: float = Field(30.0, gt=0)
    keepalive_s: int = Field(
        30, ge=1, le=65535, description="MQTT keep-alive: a silent broker link is dropped after it."
    )
    liveness_interval_s: float = Field(10.0, gt=0)


class Settings(BaseSettings):
    """Everything the services read from the environment."""

    model_config = SettingsConfigDict(
        env_prefix="ATMFLEET_",
        env_nested_delimiter="__",
        secrets_dir=os.environ.get("ATMFLEET_SECRETS_DIR", "/run/secrets")
        if Path(os.environ.get("ATMFLEET_SECRETS_DIR", "/run/secrets")).is_dir()
        else None,
        extra="ignore",
    )

    mqtt_url: str = Field(
        "mqtt://127.0.0.1:1883",
        description="mqtt://host:port or mqtts://host:port (TLS).",
    )
    mqtt_urls: str | None = Field(
        None,
        description="Comma-separated broker URLs of one cluster, tried in turn: the collector "
        "moves to the next when its broker is lost or refuses it (replaces mqtt_url).",
    )
    mqtt_protocol: Literal["5", "3.1.1"] = "5"
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_ca_file: Path | None = None
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None

    database_url: SecretStr | None = Field(
        None,
        description="postgresql://user:pass@host:port/db?sslmode=verify-full&sslrootcert=...",
    )
    database_pool_size: int = Field(4, ge=1, le=100)
    database_retention_days: int | None = Field(
        None,
        ge=1,
        description="Drop telemetry older than this many days (None: keep everything). "
        "TimescaleDB: a retention policy set by `atmfleet db upgrade`; plain PostgreSQL: "
        "`atmfleet db prune`, run hourly (on TimescaleDB it also runs late policies).",
    )

    inventory_file: Path | None = None
    rules_file: Path | None = None
    timezone: str = "Asia/Shanghai"
    output_dir: Path = Path("out")

    collector: CollectorSettings = CollectorSettings()

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, value: str) -> str:
        return check_mqtt_url(value)

    @field_validator("mqtt_urls")
    @classmethod
    def _check_mqtt_urls(cls, value: str | None) -> str | None:
        if value is None:
            return None
        urls = [u.strip() for u in value.split(",") if u.strip()]
        if not urls:
            raise ValueError("no URL; use mqtt://host1:1883,mqtt://host2:1883")
        for i, url in enumerate(urls, 1):
            try:
                check_mqtt_url(url)
            except ValueError as exc:
                raise ValueError(f"URL {i}: {exc}") from None
        if len({url.split("://", 1)[0] in ("mqtts", "ssl") for url in urls}) > 1:
            raise ValueError("mix of mqtt:// and mqtts://; all brokers of a cluster use one")
        return ",".join(urls)

    def broker_urls(self) -> list[str]:
        """The brokers to connect to, in the order tried: ``mqtt_urls``, else ``mqtt_url``."""
        if self.mqtt_urls:
            return self.mqtt_urls.split(",")
        return [self.mqtt_url]

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        problem = database_url_problem(value.get_secret_value())
        if problem:
            raise ValueError(problem)
        return value

    def require_database_url(self) -> str:
        if self.database_url is None:
            raise ConfigError(
                "ATMFLEET_DATABASE_URL is not set (e.g. postgresql://user@127.0.0.1:5432/atmfleet)"
            )
        return self.database_url.get_secret_value()


def check_mqtt_url(value: str) -> str:
    """``value`` if it is a broker URL the collector can use, else ValueError saying why."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError("not a URL (bad host or port); use mqtt://host:port") from None
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(
            f"scheme {parts.scheme!r} is not allowed; use mqtt://host:port or mqtts://host:port"
        )
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "no user or password in the URL; use ATMFLEET_MQTT_USERNAME and "
            "ATMFLEET_MQTT_PASSWORD (or a secret file)"
        )
    if not parts.hostname:
        raise ValueError("no host; use mqtt://host:port")
    del port
    return value


#: Fields whose value is, or may contain, a secret: an error never shows it.
SECRET_FIELDS = frozenset({"database_url", "mqtt_password", "mqtt_url", "mqtt_urls"})


def database_url_problem(url: str) -> str | None:
    """Why ``url`` is not a PostgreSQL URL psycopg can use (never quoting it), or None."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in ("postgresql", "postgres"):
        if not scheme and "=" in url:
            return (
                "a keyword DSN (host=... dbname=...) is not accepted; use postgresql://host:port/db"
            )
        shown = repr(scheme) if re.fullmatch(r"[a-z][a-z0-9+.-]{0,30}", scheme) else "not"
        return f"it must start with postgresql:// (the scheme is {shown})"
    try:
        conninfo_to_dict(url)
    except ProgrammingError as exc:
        text = str(exc)
        if "percent-encoded" in text:
            return "a % in it is not followed by two hex digits (write % as %25)"
        if "IPv6" in text:
            return "an IPv6 host without its closing ]"
        return "libpq cannot parse it"
    try:
        urlsplit(url).port  # noqa: B018 (a bad port raises)
    except ValueError:
        return "the port is not a number from 0 to 65535"
    return None


def load_settings() -> Settings:
    """Read the settings, turning a validation error into a message that names the field."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, prefix="ATMFLEET_")) from None


def format_validation_error(exc: ValidationError, prefix: str = "", source: str = "") -> str:
    """One line per error, naming the field; the value only for fields that hold no secret."""
    lines = []
    for err in exc.errors():
        loc = (
            "__".join(str(p) for p in err["loc"]).upper()
            if prefix
            else ".".join(str(p) for p in err["loc"])
        )
        where = f"{source}: " if source else ""
        if err["loc"] and err["loc"][0] == "database_url" and err["type"] == "value_error":
            reason = str(err.get("ctx", {}).get("error", err["msg"]))
            lines.append(f"{where}{prefix}{loc} is not a PostgreSQL URL: {reason}")
            continue
        if err["loc"] and str(err["loc"][0]) in SECRET_FIELDS:
            msg = str(err.get("ctx", {}).get("error", err["msg"]))
            lines.append(f"{where}{prefix}{loc}: {msg} (value not shown: it may hold a secret)")
            continue
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"{where}{prefix}{loc}: {err['msg']}{shown}")
    return "\n".join(lines)
