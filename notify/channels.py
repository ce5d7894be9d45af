"""The channels: e-mail (SMTP), WeCom group robot, WeCom application, DingTalk robot, and a
generic JSON webhook.

Each channel is a small client with one method, :meth:`Sender.send`, which either returns
(the vendor accepted the message) or raises :class:`DeliveryError` with a text that never
carries a secret. WeCom and DingTalk answer HTTP 200 with ``{"errcode": N}``: only
``errcode == 0`` is a success; anything else, an HTTP status other than 2xx, a timeout or a
refused connection is a failure the outbox retries.

Why hand-written clients over httpx rather than apprise (docs/notifications.md,
"Why not apprise"): apprise 2.3's WeCom-bot and DingTalk plugins post to hard-coded
``https://qyapi.weixin.qq.com`` / ``https://oapi.dingtalk.com`` URLs (no way to point them at
a bank's proxy or a test stand-in), treat any HTTP 200 as success without reading
``errcode`` (WeCom's "success with an error code in the body"), and return only True/False,
so the outbox could not record why a delivery failed; they also sleep in their own
throttle, which would hold the worker. Each vendor API here is one POST (WeCom app: a
token GET first) that fits in a few lines.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import smtplib
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Protocol

import httpx

from atmfleet.errors import ConfigError
from notify.config import (
    Channel,
    DingTalkChannel,
    EmailChannel,
    WebhookChannel,
    WeComAppChannel,
    WeComRobotChannel,
)

# httpx logs every request's full URL at INFO, query string included: the WeCom robot key
# and the DingTalk/WeCom tokens travel there. Never let it.
for _noisy in ("httpx", "httpcore"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)

#: Content limits of the vendors (bytes of UTF-8): WeCom robot markdown 4096, WeCom app
#: text 2048, DingTalk markdown 20000. A longer message is cut with a note.
LIMITS = {"wecom_robot": 4000, "wecom_app": 2000, "dingtalk_robot": 18000}


@dataclass(frozen=True)
class Attachment:
    name: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Message:
    """What a channel sends: a title, a plain/markdown body, an optional HTML body and
    attachments (e-mail), addresses (e-mail) and mobiles to @mention (chat robots)."""

    title: str
    body: str
    html: str | None = None
    attachments: tuple[Attachment, ...] = ()
    addresses: tuple[str, ...] = ()
    mentions: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)  # the webhook's JSON extras


class DeliveryError(Exception):
    """The channel did not accept the message; the text is safe to log and store."""


class Sender(Protocol):
    name: str
    kind: str

    def send(self, message: Message) -> None: ...


def _scrub(text: str, secrets: list[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***").replace(urllib.parse.quote(s, safe=""), "***")
    return text[:500]


def cut(text: str, limit: int, note: str) -> str:
    """``text`` within ``limit`` UTF-8 bytes, ending with ``note`` when cut."""
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    keep = raw[: max(0, limit - len(note.encode("utf-8")) - 2)].decode("utf-8", "ignore")
    return keep.rsplit("\n", 1)[0] + "\n" + note


class _Http:
    """A JSON POST client for one channel; errors scrubbed of the channel's secrets."""

    def __init__(self, name: str, timeout_s: float, secrets: list[str]) -> None:
        self.name = name
        self.secrets = secrets
        self.client = httpx.Client(timeout=timeout_s, follow_redirects=False)

    def request(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, str] | None = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        try:
            response = self.client.request(
                method, url, params=params, content=body, headers=headers
            )
        except httpx.TimeoutException:
            raise DeliveryError(f"{self.name}: timed out") from None
        except httpx.HTTPError as exc:
            detail = _scrub(f"{type(exc).__name__}: {exc}", self.secrets)
            raise DeliveryError(f"{self.name}: {detail}") from None
        if not 200 <= response.status_code < 300:
            text = _scrub(response.text[:200], self.secrets)
            raise DeliveryError(f"{self.name}: HTTP {response.status_code} {text}".rstrip())
        return response

    def vendor_json(self, response: httpx.Response) -> dict[str, Any]:
        """The body of a WeCom/DingTalk answer; a failure unless ``errcode`` is 0."""
        try:
            data = response.json()
        except ValueError:
            raise DeliveryError(f"{self.name}: answer is not JSON") from None
        if not isinstance(data, dict):
            raise DeliveryError(f"{self.name}: answer is not a JSON object")
        code = data.get("errcode")
        if code != 0:
            msg = _scrub(str(data.get("errmsg", "")), self.secrets)
            raise DeliveryError(f"{self.name}: errcode {code}: {msg}")
        return data

    def post_json(
        self, url: str, payload: dict[str, Any], params: dict[str, str] | None = None
    ) -> httpx.Response:
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        return self.request(
            "POST",
            url,
            params=params,
            body=body,
            headers={"Content-Type": "application/json; charset=utf-8"},
        )


def _markdown(message: Message) -> str:
    return f"**{message.title}**\n\n{message.body}"


class WeComRobot:
    """企业微信群机器人: POST {base}/cgi-bin/webhook/send?key=KEY."""

    kind = "wecom_robot"

    def __init__(self, name: str, config: WeComRobotChannel) -> None:
        self.name = name
        self.key = config.key.read(f"channels.{name}.key")
        self.url = config.base_url.rstrip("/") + "/cgi-bin/webhook/send"
        self.http = _Http(name, config.timeout_s, [self.key])

    def payload(self, message: Message) -> dict[str, Any]:
        note = "…（内容过长，已截断）"
        if message.mentions:  # only the text type can @mention by mobile
            text = cut(f"{message.title}\n\n{message.body}", LIMITS[self.kind], note)
            return {
                "msgtype": "text",
                "text": {"content": text, "mentioned_mobile_list": list(message.mentions)},
            }
        return {
            "msgtype": "markdown",
            "markdown": {"content": cut(_markdown(message), LIMITS[self.kind], note)},
        }

    def send(self, message: Message) -> None:
        response = self.http.post_json(self.url, self.payload(message), {"key": self.key})
        self.http.vendor_json(response)


class WeComApp:
    """企业微信应用: GET {base}/cgi-bin/gettoken (corp id + secret), then POST
    {base}/cgi-bin/message/send?access_token=T. The token is cached until shortly before
    it expires and fetched again when WeCom says it expired (errcode 40014/42001)."""

    kind = "wecom_app"
    EXPIRED = frozenset({40014, 42001, 41001})

    def __init__(self, name: str, config: WeComAppChannel) -> None:
        self.name = name
        self.config = config
        self.secret = config.secret.read(f"channels.{name}.secret")
        self.base = config.base_url.rstrip("/")
        self.http = _Http(name, config.timeout_s, [self.secret])
        self._token: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    def token(self, fresh: bool = False) -> str:
        with self._lock:
            if fresh or self._token is None or time.monotonic() >= self._expires:
                response = self.http.request(
                    "GET",
                    self.base + "/cgi-bin/gettoken",
                    params={"corpid": self.config.corp_id, "corpsecret": self.secret},
                )
                data = self.http.vendor_json(response)
                token = data.get("access_token")
                if not isinstance(token, str) or not token:
                    raise DeliveryError(f"{self.name}: gettoken answered no access_token")
                self._token = token
                self.http.secrets.append(token)
                self._expires = time.monotonic() + float(data.get("expires_in", 7200)) - 300
            return self._token

    def payload(self, message: Message) -> dict[str, Any]:
        text = cut(f"{message.title}\n\n{message.body}", LIMITS[self.kind], "…（已截断）")
        data: dict[str, Any] = {
            "touser": self.config.to_user,
            "msgtype": "text",
            "agentid": self.config.agent_id,
            "text": {"content": text},
        }
        if self.config.to_party:
            data["toparty"] = self.config.to_party
        return data

    def send(self, message: Message) -> None:
        url = self.base + "/cgi-bin/message/send"
        payload = self.payload(message)
        for attempt in (0, 1):
            token = self.token(fresh=attempt > 0)
            response = self.http.post_json(url, payload, {"access_token": token})
            try:
                data = response.json()
            except ValueError:
                data = None
            if attempt == 0 and isinstance(data, dict) and data.get("errcode") in self.EXPIRED:
                continue
            self.http.vendor_json(response)
            return


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk's signature: base64(HMAC-SHA256(secret, "<timestamp>\\n<secret>"))."""
    to_sign = f"{timestamp_ms}\n{secret}".encode()
    digest = hmac.new(secret.encode("utf-8"), to_sign, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


class DingTalkRobot:
    """钉钉群机器人: POST {base}/robot/send?access_token=T[&timestamp=..&sign=..]."""

    kind = "dingtalk_robot"

    def __init__(self, name: str, config: DingTalkChannel) -> None:
        self.name = name
        self.token = config.access_token.read(f"channels.{name}.access_token")
        self.sign_secret = (
            config.sign_secret.read(f"channels.{name}.sign_secret")
            if config.sign_secret is not None
            else None
        )
        self.url = config.base_url.rstrip("/") + "/robot/send"
        self.http = _Http(name, config.timeout_s, [self.token, self.sign_secret or ""])

    def payload(self, message: Message) -> dict[str, Any]:
        text = _markdown(message)
        if message.mentions:  # markdown shows a mention only when "@mobile" is in the text
            text += "\n\n" + " ".join(f"@{m}" for m in message.mentions)
        return {
            "msgtype": "markdown",
            "markdown": {"title": message.title, "text": cut(text, LIMITS[self.kind], "…")},
            "at": {"atMobiles": list(message.mentions), "isAtAll": False},
        }

    def params(self, now_ms: int | None = None) -> dict[str, str]:
        params = {"access_token": self.token}
        if self.sign_secret is not None:
            ts = now_ms if now_ms is not None else int(time.time() * 1000)
            params["timestamp"] = str(ts)
            params["sign"] = dingtalk_sign(self.sign_secret, ts)
        return params

    def send(self, message: Message) -> None:
        response = self.http.post_json(self.url, self.payload(message), self.params())
        self.http.vendor_json(response)


class Webhook:
    """A generic webhook: POST the message as JSON; any 2xx is a success. With a secret,
    ``<hmac_header>: sha256=<hex HMAC-SHA256 of the body>``."""

    kind = "webhook"

    def __init__(self, name: str, config: WebhookChannel) -> None:
        self.name = name
        self.config = config
        self.secret = (
            config.hmac_secret.read(f"channels.{name}.hmac_secret")
            if config.hmac_secret is not None
            else None
        )
        self.http = _Http(name, config.timeout_s, [self.secret or ""])

    def send(self, message: Message) -> None:
        payload = {"title": message.title, "text": message.body, **message.extra}
        body = json.dumps(payload, ensure_ascii=False, sort_keys=True).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if self.secret is not None:
            digest = hmac.new(self.secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
            headers[self.config.hmac_header] = f"sha256={digest}"
        self.http.request("POST", self.config.url, body=body, headers=headers)


class Email:
    """SMTP: STARTTLS (port 587), implicit TLS (465) or plain (a relay inside the bank);
    HTML body with a plain-text alternative, attachments."""

    kind = "email"

    def __init__(self, name: str, config: EmailChannel) -> None:
        self.name = name
        self.config = config
        self.password = (
            config.password.read(f"channels.{name}.password")
            if config.password is not None
            else None
        )
        if self.password is not None and config.username is None:
            raise ConfigError(f"channels.{name}.username: needed with a password")

    def build(self, message: Message) -> EmailMessage:
        msg = EmailMessage()
        msg["Subject"] = message.title
        msg["From"] = self.config.sender
        msg["To"] = ", ".join(message.addresses or self.config.to)
        msg["Date"] = formatdate(localtime=False)
        msg["Message-ID"] = make_msgid(domain=self.config.sender.rpartition("@")[2] or None)
        msg.set_content(message.body)
        if message.html is not None:
            msg.add_alternative(message.html, subtype="html")
        for a in message.attachments:
            main, _, sub = a.content_type.partition("/")
            msg.add_attachment(a.data, maintype=main, subtype=sub, filename=a.name)
        return msg

    def _context(self) -> ssl.SSLContext:
        ca = str(self.config.ca_file) if self.config.ca_file is not None else None
        return ssl.create_default_context(cafile=ca)

    def send(self, message: Message) -> None:
        to = message.addresses or self.config.to
        if not to:
            raise DeliveryError(f"{self.name}: no address to send to")
        c = self.config
        try:
            smtp: smtplib.SMTP
            if c.security == "ssl":
                smtp = smtplib.SMTP_SSL(
                    c.host, c.port, timeout=c.timeout_s, context=self._context()
                )
            else:
                smtp = smtplib.SMTP(c.host, c.port, timeout=c.timeout_s)
            with smtp:
                if c.security == "starttls":
                    smtp.starttls(context=self._context())
                if c.username is not None and self.password is not None:
                    smtp.login(c.username, self.password)
                refused = smtp.send_message(self.build(message), to_addrs=list(to))
        except (smtplib.SMTPException, OSError) as exc:
            detail = _scrub(f"{type(exc).__name__}: {exc}", [self.password or ""])
            raise DeliveryError(f"{self.name}: {detail}") from None
        if refused:
            raise DeliveryError(f"{self.name}: refused {', '.join(sorted(refused))}")


def build_sender(name: str, config: Channel) -> Sender:
    if isinstance(config, EmailChannel):
        return Email(name, config)
    if isinstance(config, WeComRobotChannel):
        return WeComRobot(name, config)
    if isinstance(config, WeComAppChannel):
        return WeComApp(name, config)
    if isinstance(config, DingTalkChannel):
        return DingTalkRobot(name, config)
    return Webhook(name, config)
