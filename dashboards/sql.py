"""A PostgreSQL query for grafana-foundation-sdk, which ships no SQL query type.

The JSON is what Grafana 11's PostgreSQL data source saves for a query written in code
mode: ``rawSql`` with ``rawQuery`` and ``format`` (``table`` or ``time_series``).
"""

from __future__ import annotations

from typing import Any, Literal, Self

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import dashboard

#: The plugin id of Grafana's PostgreSQL data source (Grafana ≥ 10.2).
POSTGRES_TYPE = "grafana-postgresql-datasource"

Format = Literal["table", "time_series"]


class SqlQuery(cogvariants.Dataquery):
    def __init__(
        self,
        raw_sql: str = "",
        format_val: Format = "table",
        ref_id: str = "A",
        datasource: dashboard.DataSourceRef | None = None,
    ) -> None:
        self.raw_sql = raw_sql
        self.format_val = format_val
        self.ref_id = ref_id
        self.datasource = datasource

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {
            "editorMode": "code",
            "format": self.format_val,
            "rawQuery": True,
            "rawSql": self.raw_sql,
            "refId": self.ref_id,
        }
        if self.datasource is not None:
            payload["datasource"] = self.datasource.to_json()
        return payload

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        ds = data.get("datasource")
        return cls(
            raw_sql=data["rawSql"],
            format_val=data["format"],
            ref_id=data["refId"],
            datasource=dashboard.DataSourceRef.from_json(ds) if ds is not None else None,
        )


class Sql(cogbuilder.Builder[SqlQuery]):
    """Builder for :class:`SqlQuery`, in the SDK's fluent style."""

    def __init__(self, raw_sql: str) -> None:
        self._internal = SqlQuery(raw_sql=raw_sql)

    def build(self) -> SqlQuery:
        return self._internal

    def format(self, format_val: Format) -> Self:
        self._internal.format_val = format_val
        return self

    def ref_id(self, ref_id: str) -> Self:
        self._internal.ref_id = ref_id
        return self

    def datasource(self, ref: dashboard.DataSourceRef) -> Self:
        self._internal.datasource = ref
        return self
