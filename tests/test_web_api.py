"""The JSON API against its own OpenAPI description: schemathesis generates requests for
every operation (as an admin, through a bearer token) and finds no server error, no
response outside the documented schema, status codes or content types."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("schemathesis")

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.web_server import Server, serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve(tmp_path_factory.mktemp("web-api-out"))


def _description() -> dict[str, Any]:
    """The OpenAPI document, from an app that never connects (the schema needs no data)."""
    from psycopg_pool import ConnectionPool

    from rules.config import load_rules
    from web.app import Console, create_app
    from web.settings import WebSettings

    pool: ConnectionPool[Any] = ConnectionPool("postgresql://unused", open=False)
    return create_app(Console(pool, load_rules(), WebSettings(), Path("unused"))).openapi()


schema = schemathesis.openapi.from_dict(_description())

CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance,
          content_type_conformance]  # fmt: skip


@schema.parametrize()
# derandomize: the same generated requests on every run (a run that fails fails every time).
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))  # fmt: skip
def test_the_api_keeps_to_its_description(case: Any, srv: Server) -> None:
    case.call_and_validate(
        base_url=srv.url, headers={"Authorization": f"Bearer {srv.tokens['admin']}"},
        checks=CHECKS,
    )  # fmt: skip


def test_the_description_names_every_operation(srv: Server) -> None:
    with srv.client() as c:
        doc = c.get("/api/openapi.json").json()
    paths = set(doc["paths"])
    assert {"/api/me", "/api/wall", "/api/devices/{device_id}", "/api/incidents",
            "/api/incidents/{incident_id}/{action}", "/api/stops", "/api/bulletins",
            "/api/kpi/{kind}", "/api/audit"} <= paths  # fmt: skip
    assert not any(p for p in paths if not p.startswith("/api/"))  # pages are not the API


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/audit?action=a%00b", None),
        ("GET", "/api/devices/ATM%00X", None),
        ("POST", "/api/stops", '{"device_id": "A\\u0000B"}'),
    ],
)
def test_a_nul_character_is_refused_at_the_edge(
    srv: Server, method: str, path: str, body: str | None
) -> None:
    """PostgreSQL text cannot hold NUL: refused with 400 and a message, never a 500."""
    with srv.client() as c:
        r = c.request(method, path, content=body,
                      headers={"Authorization": f"Bearer {srv.tokens['admin']}",
                               "Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 400, r.text
    assert r.json() == {"detail": "NUL characters are not accepted"}
