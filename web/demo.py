"""The console as ``atmfleet demo`` runs it: in a thread beside the other services, with
a demo admin whose random password goes into the demo's env file (0600), never onto the
terminal."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from atmfleet.errors import AtmfleetError
from atmfleet.store.audit import Actor, find_user
from web import auth

DEMO_USER = "demo"


@dataclass
class Running:
    url: str
    server: Any
    thread: threading.Thread
    pool: Any
    console: Any

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.console.fleet.close()
        if self.console.publisher is not None:
            self.console.publisher.close()
        self.pool.close()


def demo_login(database_url: str) -> tuple[str, str] | None:
    """(username, password) of the demo's admin, created (or its password renewed) with a
    new random password; None when the database has other admins and no demo user."""
    password = secrets.token_urlsafe(12)
    actor = Actor(DEMO_USER, "demo")
    with psycopg.connect(database_url) as conn:
        if find_user(conn, DEMO_USER) is not None:
            auth.set_password(conn, actor, DEMO_USER, password)
        elif auth.bootstrap_allowed(conn):
            auth.add_user(conn, actor, DEMO_USER, "admin", "fleet", password, "演示管理员")
        else:
            return None
        conn.commit()
    return DEMO_USER, password


def start_console(
    database_url: str, host: str, port: int, output_dir: Path, settings: Any = None
) -> Running:
    """Serve the console on ``host:port`` in a thread; returns once it listens (commands
    go to the broker of ``settings``, the environment's by default)."""
    import uvicorn

    from web.cli import build_app

    app = build_app(database_url, output_dir, settings)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="atmfleet-web", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            app.state.console.pool.close()
            raise AtmfleetError(f"the web console could not listen on {host}:{port}")
        time.sleep(0.05)
    console = app.state.console
    return Running(f"http://{host}:{port}/", server, thread, console.pool, console)
