"""The console's ASGI application: FastAPI, Jinja2 templates rendered on the server, a
little JavaScript for live refresh, ECharts for charts — every asset served from the
installed package (``/static``), nothing from the internet.

:func:`create_app` builds it from its parts (a connection pool, the rules, the settings,
an :class:`~web.auth.Authenticator`), so a test builds its own.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote_to_bytes, urlencode

import jinja2
import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from psycopg_pool import ConnectionPool

from atmfleet.errors import Conflict, Forbidden, UsageError
from rules.config import Rules
from rules.report import display
from rules.timeline import from_ms
from rules.uptime import day_span
from web import i18n
from web.auth import Authenticator, LocalPasswords, Principal, session_principal, token_principal
from web.fleet import SEVERITY, STATES, Fleet
from web.ops import NotFound
from web.settings import WebSettings

SESSION_COOKIE = "atmfleet_session"
LANG_COOKIE = "atmfleet_lang"


class NotLoggedIn(Exception):
    pass


class BadCsrf(Forbidden):
    pass


class Console:
    """What every route needs: the pool, the rules, the settings, the fleet snapshot."""

    def __init__(
        self,
        pool: ConnectionPool[Any],
        rules: Rules,
        settings: WebSettings,
        output_dir: Path,
        authenticator: Authenticator | None = None,
        publisher: Any = None,
    ) -> None:
        from web.cash import ForecastCache

        self.pool = pool
        #: Hands command requests to the broker (web.commands.ConsolePublisher); None
        #: when no broker is configured: the command buttons say so.
        self.publisher = publisher
        self.forecasts = ForecastCache(settings.cash_forecast_ttl_s, pool.connection)
        self.rules = rules
        self.settings = settings
        self.bulletins = output_dir / "bulletins-web"
        self.authenticator = authenticator or LocalPasswords()
        self.fleet = Fleet(
            pool, rules.heartbeat.timeout_factor, settings.state_refresh_s,
            settings.inventory_refresh_s,
        )  # fmt: skip
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("web", "templates"),
            autoescape=jinja2.select_autoescape(["html"]),
            undefined=jinja2.StrictUndefined,
        )
        self.templates.globals.update(
            STATES=STATES, SEVERITY=SEVERITY, labels=frozenset(i18n.M), day0=self._day0
        )
        self.templates.filters.update(
            localtime=self._localtime,
            localminute=self._localminute,
            mstime=self._mstime,
            pageq=_pageq,
            cell=_cell,
            plain=self._plain,
        )
        self.templates.globals["changes"] = _changes

    def _localtime(self, value: Any, tz: Any = None) -> str:
        if value is None or value == "":
            return "–"
        when = datetime.fromisoformat(value) if isinstance(value, str) else value
        return str(when.astimezone(tz or self.rules.tz).strftime("%Y-%m-%d %H:%M:%S"))

    def _localminute(self, value: Any, tz: Any = None) -> str:
        """A forecast's time: to the minute (its interval is hours wide)."""
        text = self._localtime(value, tz)
        return text[:16] if text != "–" else text

    def _plain(self, value: Any) -> str:
        """An event detail value: a time in the bank's local time, the rest as it is."""
        if isinstance(value, str) and len(value) >= 19 and value[10:11] == "T":
            try:
                return self._localtime(datetime.fromisoformat(value))
            except ValueError:
                return value
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    def _mstime(self, value: int, tz: Any = None) -> str:
        return str(from_ms(value).astimezone(tz or self.rules.tz).strftime("%H:%M"))

    def _day0(self, day: str) -> int:
        return day_span(date.fromisoformat(day), self.rules.tz)[0]

    @contextmanager
    def conn(self) -> Iterator[psycopg.Connection[Any]]:
        with self.pool.connection() as conn:
            yield conn

    # ------------------------------------------------------------------ identity

    def principal(self, request: Request) -> Principal:
        """The caller, from a bearer token or the session cookie; else NotLoggedIn."""
        cached = getattr(request.state, "principal", None)
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        auth = request.headers.get("authorization", "")
        found: Principal | None = None
        with self.conn() as conn:
            if auth.lower().startswith("bearer "):
                found = token_principal(conn, auth[7:].strip())
            elif SESSION_COOKIE in request.cookies:
                found = session_principal(
                    conn, request.cookies[SESSION_COOKIE], self.settings.session_hours
                )
        if found is None:
            raise NotLoggedIn()
        request.state.principal = found
        return found

    def device_view(self, request: Request, device_id: str) -> dict[str, Any]:
        """A device the caller may see (404 otherwise) with everything its page shows:
        the figures of the KPI layer, the last state message, its incidents and stops."""
        from web import cash, ops
        from web import commands as cmds
        from web.kpi import device_figures

        who = self.principal(request)
        fleet = self.fleet.fresh()
        d = fleet.device(who.user, device_id)
        if d is None:
            raise NotFound(f"no device {device_id}")
        with self.conn() as conn:
            return {
                "device": d, "state": fleet.state_of(device_id),
                "last_seen": fleet.last_seen(device_id),
                "figures": device_figures(conn, self.rules, device_id),
                "latest": ops.latest_sample(conn, device_id),
                "incidents": ops.device_incidents(conn, who.user, device_id),
                "stops": ops.device_stops(conn, who, device_id),
                "commands": [cmds.as_dict(x) for x in cmds.listing(
                    conn, who, device_id=device_id, limit=self.settings.device_commands)],
                "forecast": cash.device_view(self.forecasts.device(conn, self.rules, device_id)),
            }  # fmt: skip

    def device_view_check(self, request: Request, device_id: str) -> None:
        """404 unless the caller sees the device (its scope, the inventory)."""
        who = self.principal(request)
        if self.fleet.fresh().device(who.user, device_id) is None:
            raise NotFound(f"no device {device_id}")

    def writer(self, request: Request, csrf: str | None, role: str = "operator") -> Principal:
        """The caller of a write: authenticated, with the CSRF token of its session
        (a bearer token carries none), and at least ``role``."""
        who = self.principal(request)
        if who.via == "session":
            given = csrf or request.headers.get("x-csrf-token") or ""
            if not who.csrf or not secrets.compare_digest(given, who.csrf):
                raise BadCsrf("the CSRF token is missing or wrong: reload the page and retry")
        who.require(role)
        return who

    # ------------------------------------------------------------------ rendering

    def lang(self, request: Request) -> str:
        return i18n.pick(request.query_params.get("lang") or request.cookies.get(LANG_COOKIE))

    def page_text(self, request: Request, key: str) -> str:
        return i18n.t(self.lang(request), key)

    def page(self, request: Request, name: str, code: int = 200, **values: Any) -> Response:
        lang = self.lang(request)
        who = getattr(request.state, "principal", None)

        def tr(key: str, **kw: Any) -> str:
            return i18n.t(lang, key, **kw)

        def other_lang_url() -> str:
            target = "en" if lang != "en" else "zh-CN"
            here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return f"/lang?to={target}&next={quote(here, safe='')}"

        html = self.templates.get_template(name).render(
            t=tr, lang=lang, who=who, request=request, other_lang_url=other_lang_url(),
            refresh_s=self.settings.refresh_s, **values,
        )  # fmt: skip
        return Response(html, code, media_type="text/html; charset=utf-8",
                        headers=SECURITY_HEADERS)  # fmt: skip


#: No inline scripts run, nothing loads from elsewhere, no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self';"
    " script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _pageq(query: str, page: int) -> str:
    """The query string with ``page`` replaced."""
    pairs = [(k, v) for k, v in parse_qsl(query) if k != "page"]
    return urlencode([*pairs, ("page", str(page))])


def _cell(value: Any, column: str, lang: str = i18n.DEFAULT) -> str:
    """A report cell as a person reads it (rules.report.display: the CLI's rounding; yes,
    no and causes in the reader's language)."""
    if isinstance(value, bool):
        return i18n.t(lang, "yes" if value else "no")
    if isinstance(value, str) and f"label.{value}" in i18n.M:
        return i18n.t(lang, f"label.{value}")
    if isinstance(value, dict | list):
        return ", ".join(f"{k} {display(column, v)}" for k, v in value.items()) if isinstance(
            value, dict) else ", ".join(map(str, value))  # fmt: skip
    return display(column, value)


def _changes(before: Any, after: Any) -> list[tuple[str, Any, Any]]:
    """An audit row's before -> after as the keys that differ (all of them when one side
    is missing), each with its two values."""
    b = before if isinstance(before, dict) else {}
    a = after if isinstance(after, dict) else {}
    keys = sorted(set(b) | set(a))
    return [(k, b.get(k), a.get(k)) for k in keys if b.get(k) != a.get(k) or not (b and a)]


def _status(exc: Exception) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Forbidden):
        return 403
    if isinstance(exc, Conflict):
        return 409
    return 400


#: The largest request body the console reads (forms and JSON are small).
MAX_BODY_BYTES = 1 << 20


class RefuseNul:
    """Refuses (400) a request whose path, query or body carries a NUL character.

    PostgreSQL text cannot hold NUL, so such a value would fail deep in a query; it is
    refused at the edge instead, with a message, before any handler runs. Bodies larger
    than :data:`MAX_BODY_BYTES` are refused (413) for the same reason.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = scope.get("raw_path") or scope["path"].encode()
        if b"\x00" in unquote_to_bytes(raw) or b"\x00" in unquote_to_bytes(
            scope.get("query_string", b"").replace(b"+", b" ")
        ):
            await self._refuse(send, 400, "NUL characters are not accepted")
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                await self._refuse(send, 413, "request body too large")
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        headers = dict(scope.get("headers") or [])
        form = headers.get(b"content-type", b"").startswith(b"application/x-www-form-urlencoded")
        decoded = unquote_to_bytes(body.replace(b"+", b" ")) if form else body
        if b"\x00" in decoded or b"\\u0000" in body:
            await self._refuse(send, 400, "NUL characters are not accepted")
            return
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(send: Any, status: int, detail: str) -> None:
        payload = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": payload})


def create_app(console: Console) -> FastAPI:
    from web import api, pages

    app = FastAPI(
        title="atmfleet web console API",
        version="1",
        description="The fleet wall, devices, incidents, planned stops, bulletins and KPIs "
        "of atmfleet. Authenticate with `Authorization: Bearer <token>` (`atmfleet users "
        "token`) or a console session (writes then need the X-CSRF-Token header).",
        docs_url=None,
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    app.state.console = console
    static = resources.files("web").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    def handle(request: Request, exc: Exception) -> Response:
        status = _status(exc)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": str(exc)}, status)
        lang = console.lang(request)
        return console.page(request, "error.html", status, status=status,
                            message=str(exc), title=i18n.t(lang, f"err.{status}"))  # fmt: skip

    def not_logged_in(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": "not authenticated"}, 401,
                                headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(here, safe='')}", 303)

    @app.middleware("http")
    async def server_timing(request: Request, call_next: Callable[..., Any]) -> Response:
        started = time.perf_counter()
        response: Response = await call_next(request)
        took = (time.perf_counter() - started) * 1000
        response.headers["Server-Timing"] = f"app;dur={took:.1f}"
        return response

    for kind in (UsageError, Forbidden, Conflict):
        app.add_exception_handler(kind, handle)
    app.add_exception_handler(NotLoggedIn, not_logged_in)
    app.include_router(api.router)
    app.include_router(pages.router)
    app.add_middleware(RefuseNul)
    return app


def console_of(request: Request) -> Console:
    return request.app.state.console  # type: ignore[no-any-return]


Handler = Callable[..., Any]
