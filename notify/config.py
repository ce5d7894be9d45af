"""The notify configuration: channels, recipients, retry and rate limits, the calendar.

One YAML file (``ATMFLEET_NOTIFY_FILE``, example ``notify/example.yaml``), validated once
at start-up by pydantic: an unknown key or a bad value is a :class:`ConfigError` that names
the field. Secrets (webhook keys, the WeCom application secret, the DingTalk signing secret,
the SMTP password, the receiver's bearer token) are never in the file: the file names an
environment variable (``*_env``) or a file (``*_file``) holding them, read when the channel
is built, and never printed.
"""

from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from atmfleet.errors import ConfigError

_KEY = re.compile(r"^[a-z_]+:[A-Za-z0-9_.@-]*$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Secret(_Strict):
    """Where a secret is: an environment variable or a file (one of the two)."""

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _one(self) -> Secret:
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env (a variable name) or file (a path)")
        return self

    def where(self) -> str:
        return f"${self.env}" if self.env else f"file {self.file}"

    def read(self, field: str) -> str:
        """The secret's value; a :class:`ConfigError` naming ``field`` when it is missing."""
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise ConfigError(f"{field}: environment variable {self.env} is not set")
            return value
        assert self.file is not None
        try:
            value = self.file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{field}: cannot read {self.file}: {exc.strerror}") from None
        if not value:
            raise ConfigError(f"{field}: {self.file} is empty")
        return value


class RateLimit(_Strict):
    """At most ``messages`` per ``window_s`` on one channel (DingTalk: 20 a minute a robot).
    Messages over the limit wait for the next window, aggregated; none is dropped."""

    messages: int = Field(ge=1)
    window_s: float = Field(gt=0)


class _Channel(_Strict):
    #: Seconds a first message waits so that a burst for the same target goes as one.
    group_wait_s: float = Field(5.0, ge=0)
    #: At most one message per target (recipient) in this many seconds; later ones merge.
    group_interval_s: float = Field(60.0, ge=0)
    rate_limit: RateLimit | None = None
    timeout_s: float = Field(10.0, gt=0)


class EmailChannel(_Channel):
    type: Literal["email"]
    host: str
    port: int = Field(587, ge=1, le=65535)
    security: Literal["starttls", "ssl", "none"] = "starttls"
    username: str | None = None
    password: Secret | None = None
    sender: str = Field(alias="from")
    #: Addresses used when a recipient names this channel without its own ``to``.
    to: tuple[str, ...] = ()
    #: CA bundle to verify the server with (default: the system's).
    ca_file: Path | None = None
    group_interval_s: float = Field(0.0, ge=0)


class WeComRobotChannel(_Channel):
    type: Literal["wecom_robot"]
    key: Secret
    base_url: str = "https://qyapi.weixin.qq.com"
    rate_limit: RateLimit | None = RateLimit(messages=20, window_s=60)


class WeComAppChannel(_Channel):
    type: Literal["wecom_app"]
    corp_id: str
    agent_id: int
    secret: Secret
    to_user: str = "@all"
    to_party: str | None = None
    base_url: str = "https://qyapi.weixin.qq.com"


class DingTalkChannel(_Channel):
    type: Literal["dingtalk_robot"]
    access_token: Secret
    #: The robot's signing secret (安全设置 加签); None: a robot with keyword/IP security.
    sign_secret: Secret | None = None
    base_url: str = "https://oapi.dingtalk.com"
    rate_limit: RateLimit | None = RateLimit(messages=20, window_s=60)


class WebhookChannel(_Channel):
    type: Literal["webhook"]
    url: str
    #: Signs the body with HMAC-SHA256 in ``hmac_header`` (``sha256=<hex>``) when given.
    hmac_secret: Secret | None = None
    hmac_header: str = "X-Atmfleet-Signature"
    group_wait_s: float = Field(0.0, ge=0)
    group_interval_s: float = Field(0.0, ge=0)


Channel = Annotated[
    EmailChannel | WeComRobotChannel | WeComAppChannel | DingTalkChannel | WebhookChannel,
    Field(discriminator="type"),
]


class Target(_Strict):
    """One way a recipient is reached: a channel, with addresses for e-mail and mobiles to
    @mention on a chat robot."""

    channel: str
    to: tuple[str, ...] = ()
    mention: tuple[str, ...] = ()


class Retry(_Strict):
    """Exponential backoff: the n-th retry waits ``base_s * factor**(n-1)``, capped."""

    max_attempts: int = Field(8, ge=1, le=100)
    base_s: float = Field(30.0, gt=0)
    factor: float = Field(2.0, ge=1)
    max_s: float = Field(3600.0, gt=0)


class Maintainers(_Strict):
    """How ``maintainer:<id>`` keys are reached: the maintainers table's e-mail through
    ``email_channel``; its phone as an @mention on ``mention_channel``."""

    email_channel: str | None = None
    mention_channel: str | None = None


class Receiver(_Strict):
    """``atmfleet notify serve``: the Alertmanager webhook receiver."""

    #: Bearer token Alertmanager sends (http_config.authorization.credentials_file).
    bearer_token: Secret | None = None
    #: Or basic auth (http_config.basic_auth).
    basic_user: str | None = None
    basic_password: Secret | None = None
    #: POST /alertmanager/<name>: the receiver name in the URL -> recipient keys.
    routes: dict[str, tuple[str, ...]] = {}
    #: Bodies larger than this are refused (413).
    max_body_bytes: int = Field(1024 * 1024, ge=1024)

    @model_validator(mode="after")
    def _auth(self) -> Receiver:
        basic = (self.basic_user is None, self.basic_password is None)
        if basic[0] != basic[1]:
            raise ValueError("basic_user and basic_password go together")
        if self.bearer_token is None and self.basic_user is None:
            raise ValueError(
                "the receiver needs bearer_token or basic_user/basic_password: "
                "an unauthenticated endpoint could post anything to the team's chats"
            )
        return self


class Calendar(_Strict):
    """Working days: Monday to Friday, minus ``holidays``, plus ``workdays`` (调休: the
    weekend days the State Council makes working days)."""

    holidays: tuple[date, ...] = ()
    workdays: tuple[date, ...] = ()

    def is_working_day(self, day: date) -> bool:
        if day in self.workdays:
            return True
        return day.weekday() < 5 and day not in self.holidays


class BulletinDelivery(_Strict):
    """Who gets a bulletin: e-mail targets (XLSX attached, HTML body) and chat summaries."""

    email: tuple[str, ...] = ()  # recipient keys or channel names
    summary: tuple[str, ...] = ()
    lang: Literal["zh-CN", "en"] = "zh-CN"


class Bulletins(_Strict):
    daily: BulletinDelivery = BulletinDelivery()
    monthly: BulletinDelivery = BulletinDelivery()
    quarterly: BulletinDelivery = BulletinDelivery()


class NotifyConfig(_Strict):
    lang: Literal["zh-CN", "en"] = "zh-CN"
    channels: dict[str, Channel] = {}
    #: Recipient key (``<role>:<id>``, e.g. ``subbranch_manager:HLBE``, ``head_office:``)
    #: -> its targets. ``<role>:*`` is the fallback for a role.
    recipients: dict[str, tuple[Target, ...]] = {}
    maintainers: Maintainers = Maintainers()
    retry: Retry = Retry()
    receiver: Receiver | None = None
    calendar: Calendar = Calendar()
    bulletins: Bulletins = Bulletins()
    #: Seconds between two passes of the worker (tail incident events, send what is due).
    poll_s: float = Field(2.0, gt=0, le=3600)

    @field_validator("channels")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not _NAME.match(name):
                raise ValueError(f"channel name {name!r}: use letters, digits, '_', '.', '-'")
        return value

    @model_validator(mode="after")
    def _references(self) -> NotifyConfig:
        for key, targets in self.recipients.items():
            if not _KEY.match(key) and not key.endswith(":*"):
                raise ValueError(f"recipients.{key}: a key is <role>:<id>, e.g. branch:B01")
            for i, t in enumerate(targets):
                self._channel_ref(f"recipients.{key}.{i}.channel", t.channel)
        for field in ("email_channel", "mention_channel"):
            name = getattr(self.maintainers, field)
            if name is not None:
                self._channel_ref(f"maintainers.{field}", name)
        if self.receiver is not None:
            for route, keys in self.receiver.routes.items():
                for k in keys:
                    self._target_ref(f"receiver.routes.{route}", k)
        for kind in ("daily", "monthly", "quarterly"):
            delivery: BulletinDelivery = getattr(self.bulletins, kind)
            for part in ("email", "summary"):
                for k in getattr(delivery, part):
                    self._target_ref(f"bulletins.{kind}.{part}", k)
        return self

    def _channel_ref(self, field: str, name: str) -> None:
        if name not in self.channels:
            raise ValueError(
                f"{field}: no channel {name!r}; channels: {', '.join(sorted(self.channels)) or '(none)'}"
            )

    def _target_ref(self, field: str, key: str) -> None:
        if key in self.channels or key in self.recipients or ":" in key:
            return
        raise ValueError(f"{field}: {key!r} is neither a channel nor a recipient key")


def _field_path(loc: tuple[int | str, ...]) -> str:
    # Drop pydantic's union tags (the channel type names) from the path.
    tags = {"email", "wecom_robot", "wecom_app", "dingtalk_robot", "webhook"}
    return ".".join(str(p) for p in loc if p not in tags) or "(file)"


def parse_config(data: Any, source: str = "notify config") -> NotifyConfig:
    try:
        return NotifyConfig.model_validate(data if data is not None else {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _field_path(tuple(first["loc"]))
        value = first.get("input")
        shown = "" if isinstance(value, dict | list) or value is None else f" (got {value!r})"
        raise ConfigError(f"{source}: {where}: {first['msg']}{shown}") from None


def load_config(path: Path | None) -> NotifyConfig:
    """The configuration in ``path`` (None: ``ATMFLEET_NOTIFY_FILE``, else empty)."""
    if path is None:
        env = os.environ.get("ATMFLEET_NOTIFY_FILE")
        if not env:
            raise ConfigError(
                "ATMFLEET_NOTIFY_FILE: not set; point it at the notify configuration "
                "(example: notify/example.yaml)"
            )
        path = Path(env)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"ATMFLEET_NOTIFY_FILE: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, str(path))
