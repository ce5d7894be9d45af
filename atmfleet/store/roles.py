"""The least-privilege roles of migration 0006 and the logins a bank creates in them."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql


@dataclass(frozen=True)
class Login:
    name: str
    group: str
    used_by: str


def group_roles(database: str) -> dict[str, str]:
    """``{"owner": ..., "writer": ..., "reader": ...}`` for a database (migration 0006)."""
    return {kind: f"{database}_{kind}" for kind in ("owner", "writer", "reader")}


def logins(database: str) -> list[Login]:
    groups = group_roles(database)
    return [
        Login(f"{database}_migrate", groups["owner"], "atmfleet db upgrade, db load-inventory"),
        Login(
            f"{database}_collector", groups["writer"], "atmfleet collect, counters import, db prune"
        ),
        Login(f"{database}_serve", groups["reader"], "atmfleet serve, bulletin, kpi"),
        Login(f"{database}_dashboards", groups["reader"], "Grafana's PostgreSQL data source"),
    ]


def role_commands(conn: psycopg.Connection) -> str:
    """psql commands (for a superuser) creating the logins; no password is in them:
    ``\\password`` asks for each one."""
    row = conn.execute("SELECT current_database()").fetchone()
    assert row is not None
    database = str(row[0])
    others = [
        r[0]
        for r in conn.execute(
            "SELECT datname FROM pg_database WHERE datallowconn AND datname <> current_database()"
            " AND has_database_privilege('public', oid, 'CONNECT') ORDER BY datname"
        )
    ]

    def ident(name: str) -> str:
        return sql.Identifier(name).as_string(conn)

    lines = [
        f"-- Logins for database {database} (migration 0006 made the groups). Run in psql as",
        "-- a superuser; \\password asks for each password, so none is ever on screen.",
    ]
    for login in logins(database):
        lines.append(f"-- {login.used_by}")
        lines.append(f"CREATE ROLE {ident(login.name)} LOGIN IN ROLE {ident(login.group)};")
        lines.append(f"ALTER ROLE {ident(login.name)} SET search_path = public;")
        lines.append(f"\\password {login.name}")
    if others:
        lines.append("-- Other databases of this cluster that every role may connect to:")
        lines.extend(
            f"REVOKE CONNECT, TEMPORARY ON DATABASE {ident(d)} FROM PUBLIC;" for d in others
        )
    lines.append("-- pg_hba.conf: these logins, this database, TLS and SCRAM only, e.g.")
    for login in logins(database):
        lines.append(f"--   hostssl {database} {login.name} <client network> scram-sha-256")
    return "\n".join(lines) + "\n"
