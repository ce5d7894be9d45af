"""Validation against the pinned Grafana version's dashboard model.

grafana-foundation-sdk ships no JSON schema file; its typed models are generated from
Grafana 11.6's dashboard schema (CUE). ``roundtrip`` decodes a dashboard's JSON into those
models (dashboard, panels, field config, each panel type's options, Prometheus and
PostgreSQL queries, variables) and encodes it again. A key the models do not know is
dropped on decoding and a value of the wrong shape fails or changes, so JSON equal to its
round trip uses only fields of the schema, with values the models accept.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from grafana_foundation_sdk.cog import plugins
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model

from dashboards.sql import POSTGRES_TYPE, SqlQuery


def _register() -> None:
    # The SDK keeps its decoders in a process-wide runtime; registering is idempotent.
    plugins.register_default_plugins()
    cogruntime.register_dataquery_variant(
        cogruntime.DataqueryConfig(identifier=POSTGRES_TYPE, from_json_hook=SqlQuery.from_json)
    )


def roundtrip(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``doc`` decoded into the SDK's typed models and encoded again."""
    _register()
    decoded = model.Dashboard.from_json(dict(doc))
    for panel in decoded.panels or []:
        for target in getattr(panel, "targets", None) or []:
            if isinstance(target, cogruntime.UnknownDataquery):
                raise ValueError(f"panel {panel.title!r}: a query of no known data source type")
    data: dict[str, Any] = json.loads(json.dumps(decoded, cls=JSONEncoder))
    return data
