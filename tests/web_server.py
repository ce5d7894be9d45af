"""The console in a thread for the web tests: a seeded database (tests/web_fleet.py), the
app on a free loopback port, API tokens for every user, and a login helper."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import uvicorn
from psycopg_pool import ConnectionPool

from atmfleet.store.audit import Actor
from rules.config import load_rules
from tests.conftest import create_database, drop_database
from tests.web_fleet import PASSWORD, USERS, seed
from web import auth
from web.app import Console, create_app
from web.settings import WebSettings


@dataclass
class Server:
    url: str
    db: str
    out: Path
    console: Console
    tokens: dict[str, str] = field(default_factory=dict)

    def client(self, user: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}
        return httpx.Client(base_url=self.url, headers=headers, follow_redirects=False,
                            timeout=30)  # fmt: skip

    def session(self, user: str) -> tuple[httpx.Client, str]:
        """A logged-in browser-like client (cookie sent by hand: it is Secure, and http
        cookie jars keep Secure cookies for https only) and its CSRF token."""
        c = httpx.Client(base_url=self.url, follow_redirects=False, timeout=30)
        r = httpx.post(
            self.url + "/login", data={"username": user, "password": PASSWORD, "next": "/wall"}
        )
        assert r.status_code == 303, r.text
        m = re.search(r"atmfleet_session=([^;]+)", r.headers["set-cookie"])
        assert m
        c.headers["Cookie"] = f"atmfleet_session={m[1]}"
        page = httpx.get(self.url + "/wall", headers=c.headers)
        csrf = re.search(r'data-csrf="([^"]+)"', page.text)
        assert csrf, page.text[:500]
        return c, csrf[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(out: Path, publisher: Any = None, **settings: Any) -> Iterator[Server]:
    """A seeded database and the console serving it (sending commands through
    ``publisher``, none by default), until the generator is closed."""
    db = create_database("atmfleet_web")
    pool: ConnectionPool[Any] | None = None
    console: Console | None = None
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None
    try:
        seed(db)
        values = {"refresh_s": 1.0, "state_refresh_s": 0.3, "inventory_refresh_s": 600.0,
                  "login_max_failures": 5, "page_size": 50, **settings}  # fmt: skip
        pool = ConnectionPool(db, min_size=1, max_size=6, open=True)
        console = Console(pool, load_rules(), WebSettings(**values), out, publisher=publisher)
        console.fleet.start()
        app = create_app(console)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                               log_level="warning", lifespan="off"))  # fmt: skip
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "the console did not start"
            time.sleep(0.05)
        s = Server(f"http://127.0.0.1:{port}", db, out, console)
        with psycopg.connect(db) as conn:
            for user in USERS:
                s.tokens[user] = auth.issue_token(conn, Actor("admin", "cli"), user, "tests",
                                                  None)[1]  # fmt: skip
            conn.commit()
        yield s
    finally:
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout=10)
        if console is not None:
            console.fleet.close()
        if pool is not None:
            pool.close()
        drop_database(db)
