"""``atmfleet web`` (the console) and ``atmfleet users`` (its accounts and API tokens).

``users`` acts as ATMFLEET_USER (else the login name) and needs an admin, except for the
very first admin of an empty users table (the bootstrap). Every change is audited.
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path
from typing import Any

import click
import psycopg
from fastapi import FastAPI

from atmfleet.errors import UsageError
from atmfleet.settings import load_settings
from atmfleet.store.audit import ROLES, cli_actor
from atmfleet.store.connect import connect
from atmfleet.store.migrate import require_current
from web import auth
from web.settings import load_web_settings


def _password(given_env: str | None) -> str:
    """From the named environment variable, else asked twice at the terminal."""
    if given_env:
        value = os.environ.get(given_env)
        if not value:
            raise UsageError(f"--password-env {given_env}: the variable is not set")
        return value
    if not sys.stdin.isatty():
        raise UsageError("no terminal to ask for the password: use --password-env NAME")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise UsageError("the two passwords differ")
    return first


def _conn() -> psycopg.Connection[Any]:
    settings = load_settings()
    conn = connect(settings.require_database_url(), application_name="atmfleet-users")
    require_current(conn)
    return conn


@click.group("users")
def users() -> None:
    """The console's users (roles viewer/operator/admin, an org scope each) and API tokens."""


@users.command("add")
@click.argument("username")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--scope", default="fleet", show_default=True,
              help="fleet, subbranch:ID or branch:ID: what the user may see and act on.")  # fmt: skip
@click.option("--name", "display_name", default="", help="Display name.")
@click.option("--password-env", default=None,
              help="Read the password from this environment variable (else asked).")  # fmt: skip
@click.option("--no-password", is_flag=True, help="No password login (CLI or API tokens only).")
def add_cmd(username: str, role: str, scope: str, display_name: str, password_env: str | None,
            no_password: bool) -> None:  # fmt: skip
    """Add a user (an admin's act; the first admin may be added by anyone)."""
    password = None if no_password else _password(password_env)
    with _conn() as conn:
        user = auth.add_user(conn, cli_actor(), username, role, scope, password, display_name)
    click.echo(f"added {user.username}: {user.role}, scope {user.scope_kind}"
               + (f":{user.scope_id}" if user.scope_id else ""))  # fmt: skip


@users.command("list")
def list_cmd() -> None:
    """Every user with role, scope and whether disabled."""
    with _conn() as conn:
        for u in auth.list_users(conn):
            scope = u.scope_kind + (f":{u.scope_id}" if u.scope_id else "")
            flag = "  disabled" if u.disabled else ""
            click.echo(f"{u.username:<24} {u.role:<9} {scope}{flag}")


@users.command("disable")
@click.argument("username")
@click.option("--enable", is_flag=True, help="Enable again instead.")
def disable_cmd(username: str, enable: bool) -> None:
    """Disable a user (their sessions end at once) or, with --enable, enable again."""
    with _conn() as conn:
        u = auth.set_disabled(conn, cli_actor(), username, not enable)
    click.echo(f"{u.username}: {'disabled' if u.disabled else 'enabled'}")


@users.command("passwd")
@click.argument("username")
@click.option("--password-env", default=None, help="Read the new password from this variable.")
def passwd_cmd(username: str, password_env: str | None) -> None:
    """Set a user's password (admin, or the user themself); their sessions end."""
    password = _password(password_env)
    with _conn() as conn:
        auth.set_password(conn, cli_actor(), username, password)
    click.echo(f"{username}: password set")


@users.group("token")
def token() -> None:
    """API tokens for integrations (they act as their user, with its role and scope)."""


@token.command("add")
@click.argument("username")
@click.option("--name", required=True, help="What the token is for, e.g. ticketing.")
@click.option(
    "--days", type=click.IntRange(1, 3650), default=None, help="Expires after (default never)."
)
def token_add(username: str, name: str, days: int | None) -> None:
    """Issue a token; it is printed once, only its hash is kept."""
    with _conn() as conn:
        token_id, value = auth.issue_token(conn, cli_actor(), username, name, days)
    click.echo(f"token {token_id} for {username} ({name}); shown once, keep it safe:", err=True)
    click.echo(value)


@token.command("list")
def token_list() -> None:
    with _conn() as conn:
        for tid, user, name, prefix, _created, expires, used, revoked in auth.list_tokens(conn):
            state = "revoked" if revoked else ("expires " + expires.date().isoformat()
                                               if expires else "no expiry")  # fmt: skip
            click.echo(f"{tid:<5} {user:<20} {name:<20} {prefix}…  {state}"
                       f"  last used {used.isoformat(timespec='seconds') if used else '-'}")  # fmt: skip


@token.command("revoke")
@click.argument("token_id", type=int)
def token_revoke(token_id: int) -> None:
    with _conn() as conn:
        auth.revoke_token(conn, cli_actor(), token_id)
    click.echo(f"token {token_id} revoked")


# ---------------------------------------------------------------------------- web


def build_app(database_url: str, output_dir: Path | None = None, settings: Any = None) -> FastAPI:
    """The console over ``database_url`` with the settings of the environment (or
    ``settings``: the broker a demo started); commands go to ATMFLEET_MQTT_URL as the
    identity ATMFLEET_MQTT_USERNAME (``atmfleet-ops`` in the shipped ACL)."""
    from psycopg_pool import ConnectionPool

    from rules.config import load_rules
    from web.app import Console, create_app
    from web.commands import ConsolePublisher

    settings = settings or load_settings()
    web_settings = load_web_settings()
    rules = load_rules(settings.rules_file)
    publisher = ConsolePublisher(settings) if web_settings.commands else None
    pool: ConnectionPool = ConnectionPool(
        database_url, min_size=1, max_size=web_settings.pool_size, open=True,
        kwargs={"application_name": "atmfleet-web"},
    )  # fmt: skip
    console = Console(pool, rules, web_settings, output_dir or settings.output_dir,
                      publisher=publisher)  # fmt: skip
    console.fleet.start()  # the wall's snapshot, loaded before the first request
    return create_app(console)


@click.command("web")
@click.option(
    "--host", default=None, help="Address to listen on (default ATMFLEET_WEB_HOST, 127.0.0.1)."
)
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port (default ATMFLEET_WEB_PORT, 8080).")  # fmt: skip
def web(host: str | None, port: int | None) -> None:
    """The web console: fleet wall, devices, incidents, planned stops, bulletins, KPIs."""
    import uvicorn

    settings = load_settings()
    web_settings = load_web_settings()
    url = settings.require_database_url()
    with connect(url, application_name="atmfleet-web") as conn:
        require_current(conn)
    app = build_app(url)
    h, p = host or web_settings.host, port or web_settings.port
    click.echo(f"atmfleet web console on http://{h}:{p}/", err=True)
    if web_settings.cookie_secure and h not in ("127.0.0.1", "localhost", "::1"):
        click.echo(
            "atmfleet web: browsers keep the (Secure) session cookie over HTTPS only: put a "
            "TLS-terminating proxy in front (docs/web.md, Access)",
            err=True,
        )
    uvicorn.run(app, host=h, port=p, log_level="warning", proxy_headers=False)
