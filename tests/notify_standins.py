"""Local stand-ins for the vendors' cloud endpoints, and a local SMTP server.

:class:`StandIn` is one small HTTP server that answers like WeCom (group robot
``/cgi-bin/webhook/send``, application ``/cgi-bin/gettoken`` + ``/cgi-bin/message/send``),
DingTalk (``/robot/send``, checking the ``timestamp``/``sign`` signature and refusing more
than ``ding_limit`` messages a minute with errcode 130101 as DingTalk does) and a generic
webhook (``/hook``, checking the HMAC header), and records every request. ``script`` queues
answers to give first (e.g. an errcode or an HTTP 500) before the normal ones.

:class:`Smtp` is aiosmtpd on a free port (plain, STARTTLS with AUTH, or implicit TLS), with
a self-signed certificate made here.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

WECOM_KEY = "wecom-robot-key-0123456789"
CORP_ID = "ww-corp-1"
CORP_SECRET = "wecom-app-secret-abcdef"
TOKEN = "access-token-xyz-987"
DING_TOKEN = "ding-access-token-555"
DING_SECRET = "SECding-sign-secret-777"
HOOK_SECRET = "hook-hmac-secret-333"
SMTP_USER = "atmfleet"
SMTP_PASSWORD = "smtp-pass-424242"
#: The variables the tests' notify configurations name (``{env: ...}``) and their values.
SECRET_ENV = {
    "T_WECOM_KEY": WECOM_KEY,
    "T_CORP_SECRET": CORP_SECRET,
    "T_DING_TOKEN": DING_TOKEN,
    "T_DING_SECRET": DING_SECRET,
    "T_HOOK_SECRET": HOOK_SECRET,
    "T_SMTP_PASSWORD": SMTP_PASSWORD,
}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class StandIn:
    port: int = 0
    requests: list[Request] = field(default_factory=list)
    script: dict[str, list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)
    ding_limit: int = 20
    lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def received(self, path: str) -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def wait(self, path: str, n: int, timeout: float = 30.0) -> list[Request]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.received(path)
            if len(got) >= n or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    def new_minute(self) -> None:
        """DingTalk's minute starts again (instead of waiting for it)."""
        with self.lock:
            for r in self.requests:
                r.headers.pop("x-accepted", None)

    def _answer(self, req: Request) -> tuple[int, dict[str, Any]]:
        with self.lock:
            queued = self.script.get(req.path)
            if queued:
                return queued.pop(0)
        q = req.query
        if req.path == "/cgi-bin/webhook/send":
            if q.get("key") != WECOM_KEY:
                return 200, {"errcode": 93000, "errmsg": "invalid webhook url"}
            return 200, {"errcode": 0, "errmsg": "ok"}
        if req.path == "/cgi-bin/gettoken":
            if q.get("corpid") != CORP_ID or q.get("corpsecret") != CORP_SECRET:
                return 200, {"errcode": 40001, "errmsg": "invalid credential"}
            return 200, {"errcode": 0, "errmsg": "ok", "access_token": TOKEN, "expires_in": 7200}
        if req.path == "/cgi-bin/message/send":
            if q.get("access_token") != TOKEN:
                return 200, {"errcode": 40014, "errmsg": "invalid access_token"}
            return 200, {"errcode": 0, "errmsg": "ok", "invaliduser": ""}
        if req.path == "/robot/send":
            if q.get("access_token") != DING_TOKEN:
                return 200, {"errcode": 300001, "errmsg": "token is not exist"}
            ts = q.get("timestamp", "")
            if not ts.isdigit() or abs(int(ts) - time.time() * 1000) > 3600_000:
                return 200, {"errcode": 310000, "errmsg": "timestamp invalid"}
            want = base64.b64encode(
                hmac.new(
                    DING_SECRET.encode(), f"{ts}\n{DING_SECRET}".encode(), hashlib.sha256
                ).digest()
            ).decode()
            if q.get("sign") != want:
                return 200, {"errcode": 310000, "errmsg": "sign not match"}
            with self.lock:
                minute = [
                    r for r in self.requests
                    if r.path == "/robot/send" and r.headers.get("x-accepted") == "1"
                    and float(r.headers["x-at"]) > time.time() - 60
                ]  # fmt: skip
                if len(minute) >= self.ding_limit:
                    return 200, {"errcode": 130101, "errmsg": "send too fast"}
                req.headers["x-accepted"] = "1"
            return 200, {"errcode": 0, "errmsg": "ok"}
        if req.path == "/hook":
            want = "sha256=" + hmac.new(HOOK_SECRET.encode(), req.body, hashlib.sha256).hexdigest()
            if req.headers.get("x-atmfleet-signature") != want:
                return 401, {"error": "bad signature"}
            return 204, {}
        return 404, {"error": "no such path"}

    def start(self) -> StandIn:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                parts = urllib.parse.urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                headers["x-at"] = str(time.time())
                req = Request(
                    self.command,
                    parts.path,
                    dict(urllib.parse.parse_qsl(parts.query)),
                    headers,
                    body,
                )
                code, answer = outer._answer(req)
                with outer.lock:
                    outer.requests.append(req)
                data = json.dumps(answer).encode() if code != 204 else b""
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = _handle
            do_POST = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1/localhost and its key (PEM files)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "smtp.crt", folder / "smtp.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


class Smtp:
    """aiosmtpd on 127.0.0.1: ``mode`` plain, starttls (AUTH required over TLS) or ssl."""

    def __init__(self, folder: Path, mode: str = "starttls") -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        self.messages: list[tuple[list[str], EmailMessage]] = []
        self.cert, key = self_signed(folder)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, key)
        outer = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                msg = message_from_bytes(envelope.original_content, policy=policy.default)
                assert isinstance(msg, EmailMessage)
                outer.messages.append((list(envelope.rcpt_tos), msg))
                return "250 OK"

        def authenticator(
            server: Any, session: Any, envelope: Any, mechanism: str, data: Any
        ) -> Any:
            ok = (
                isinstance(data, LoginPassword)
                and data.login == SMTP_USER.encode()
                and data.password == SMTP_PASSWORD.encode()
            )
            return AuthResult(success=ok, handled=False)

        kwargs: dict[str, Any] = {"hostname": "127.0.0.1", "port": 0}
        if mode == "starttls":
            kwargs.update(
                tls_context=context, require_starttls=True, authenticator=authenticator,
                auth_required=True, auth_require_tls=True,
            )  # fmt: skip
        elif mode == "ssl":
            kwargs.update(ssl_context=context)
        self.controller = Controller(Handler(), **kwargs)
        self.mode = mode

    def start(self) -> Smtp:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.controller.port = self.port
        if self.mode == "ssl":
            # The controller's readiness probe would speak plain SMTP to a TLS port.
            self.controller.ready_timeout = 5.0
        self.controller.start()
        return self

    def wait(self, n: int, timeout: float = 30.0) -> list[tuple[list[str], EmailMessage]]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.messages)

    def stop(self) -> None:
        self.controller.stop()
