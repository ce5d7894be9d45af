"""Shared pieces of every dashboard: data source references, variables, panel factories.

Data sources are referenced by the uids provisioned in ``provisioning/datasources.yaml``.
Variables are read from the inventory in PostgreSQL (the same inventory the Prometheus
labels come from), multi-valued with "All"; panels use them as ``${var:regex}`` in PromQL
and ``${var:sqlstring}`` in SQL, so one set of variables serves both data sources.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import (
    bargauge,
    stat,
    statetimeline,
    table,
    timeseries,
)
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from dashboards.sql import POSTGRES_TYPE, Sql

PROMETHEUS_UID = "atmfleet-prometheus"
POSTGRES_UID = "atmfleet-postgres"
PROMETHEUS = model.DataSourceRef(type_val="prometheus", uid=PROMETHEUS_UID)
POSTGRES = model.DataSourceRef(type_val=POSTGRES_TYPE, uid=POSTGRES_UID)

Target = cogbuilder.Builder[cogvariants.Dataquery]
Panel = cogbuilder.Builder[model.Panel]

#: The inventory variables: name, label, SQL listing the values (may use earlier ones).
INVENTORY_VARIABLES: tuple[tuple[str, str, str], ...] = (
    ("subbranch", "Sub-branch", "SELECT id FROM subbranches ORDER BY id"),
    (
        "branch",
        "Branch",
        "SELECT id FROM branches WHERE subbranch IN (${subbranch:sqlstring}) ORDER BY id",
    ),
    ("type", "Type", "SELECT DISTINCT type FROM devices ORDER BY type"),
    ("vendor", "Vendor", "SELECT DISTINCT vendor FROM devices ORDER BY vendor"),
)

#: PromQL label matchers for the inventory variables, by label.
MATCH = {name: f'{name}=~"${{{name}:regex}}"' for name, _, _ in INVENTORY_VARIABLES}


def sql_variable(name: str, label: str, query: str, *, multi: bool = True) -> dash.QueryVariable:
    var = (
        dash.QueryVariable(name)
        .label(label)
        .datasource(POSTGRES)
        .query(query)
        .refresh(model.VariableRefresh.ON_DASHBOARD_LOAD)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(multi)
        .include_all(multi)
    )
    if multi:
        var = var.current(model.VariableOption(selected=True, text=["All"], value=["$__all"]))
    return var


def inventory_variables(*names: str) -> list[dash.QueryVariable]:
    return [sql_variable(n, label, q) for n, label, q in INVENTORY_VARIABLES if n in names]


def promql(expr: str, legend: str = "", *, instant: bool = False, ref: str = "A") -> prom.Dataquery:
    query = prom.Dataquery().expr(expr).ref_id(ref).datasource(PROMETHEUS)
    if legend:
        query = query.legend_format(legend)
    query = query.instant().format(PromQueryFormat.TABLE) if instant else query.range()
    return query


def sql(text: str, *, series: bool = False, ref: str = "A") -> Sql:
    return Sql(text).format("time_series" if series else "table").ref_id(ref).datasource(POSTGRES)


def thresholds(*steps: tuple[float | None, str]) -> dash.ThresholdsConfig:
    return (
        dash.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=v, color=c) for v, c in steps])
    )


def _ratio_target(target: float) -> dash.ThresholdsConfig:
    return thresholds((None, "red"), (target, "green"))


def stat_panel(
    title: str,
    *targets: Target,
    unit: str = "none",
    h: int = 5,
    w: int = 6,
    ds: model.DataSourceRef = PROMETHEUS,
) -> stat.Panel:
    panel = stat.Panel().title(title).datasource(ds).unit(unit).height(h).span(w)
    for t in targets:
        panel = panel.with_target(t)
    return panel


def bars(
    title: str,
    *targets: Target,
    unit: str = "none",
    h: int = 8,
    w: int = 12,
    ds: model.DataSourceRef = PROMETHEUS,
) -> bargauge.Panel:
    panel = (
        bargauge.Panel()
        .title(title)
        .datasource(ds)
        .unit(unit)
        .orientation(common.VizOrientation.HORIZONTAL)
        .height(h)
        .span(w)
    )
    for t in targets:
        panel = panel.with_target(t)
    return panel


def ratio_bars(
    title: str,
    *targets: Target,
    target: float,
    h: int = 8,
    w: int = 12,
    ds: model.DataSourceRef = PROMETHEUS,
) -> bargauge.Panel:
    """Ratios 0-1 as horizontal bars, red below ``target``, green from it."""
    return (
        bars(title, *targets, unit="percentunit", h=h, w=w, ds=ds)
        .min(0)
        .max(1)
        .thresholds(_ratio_target(target))
    )


def time_series(
    title: str,
    *targets: Target,
    unit: str = "none",
    h: int = 8,
    w: int = 12,
    ds: model.DataSourceRef = PROMETHEUS,
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .datasource(ds)
        .unit(unit)
        .height(h)
        .span(w)
        .line_width(1)
        .fill_opacity(10)
    )
    for t in targets:
        panel = panel.with_target(t)
    return panel


def table_panel(
    title: str, *targets: Target, h: int = 8, w: int = 12, ds: model.DataSourceRef = PROMETHEUS
) -> table.Panel:
    panel = (
        table.Panel()
        .title(title)
        .datasource(ds)
        .height(h)
        .span(w)
        .align(common.FieldTextAlignment.AUTO)
        .inspect(False)
    )
    for t in targets:
        panel = panel.with_target(t)
    return panel


def state_timeline(
    title: str, *targets: Target, h: int = 6, w: int = 24, ds: model.DataSourceRef = POSTGRES
) -> statetimeline.Panel:
    panel = statetimeline.Panel().title(title).datasource(ds).height(h).span(w)
    for t in targets:
        panel = panel.with_target(t)
    return panel
