"""The atmfleet dashboards, each a function returning a built (not yet serialised) dashboard.

Prometheus panels prefer the recording rules of ``exporters/prometheus/atmfleet.rules.yml``
(ΣA ÷ ΣS computed once per evaluation, never a mean of ratios); PostgreSQL panels read the
store directly (state runs, transactions, events, dead letters, the inventory).
"""

from __future__ import annotations

from collections.abc import Callable

from grafana_foundation_sdk.builders import bargauge
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.models import dashboard as model

from dashboards.panels import (
    MATCH,
    POSTGRES,
    Target,
    bars,
    inventory_variables,
    promql,
    ratio_bars,
    sql,
    sql_variable,
    stat_panel,
    state_timeline,
    table_panel,
    thresholds,
    time_series,
)

SB, BR, TY, VE = MATCH["subbranch"], MATCH["branch"], MATCH["type"], MATCH["vendor"]
DEVICE_SEL = f"{SB},{BR},{TY},{VE}"
#: The devices serving customers (state in_service or degraded) among those selected:
#: one series each, value 1 (``atmfleet_device_state`` carries the routing labels).
SERVING = f'atmfleet_device_state{{state=~"in_service|degraded",{DEVICE_SEL}}}'
#: 0 when some device is selected and none serves (what the sum of their ``up`` was).
NONE_SERVING = f"sum(atmfleet_device_state{{{DEVICE_SEL}}}) * 0"

#: SQL: a device of the inventory exported today (commissioned, not decommissioned).
ACTIVE = (
    "d.commissioned <= current_date"
    " AND (d.decommissioned IS NULL OR d.decommissioned > current_date)"
)
#: SQL: the device ``d`` of branch ``b`` matches the inventory variables.
SQL_SEL = (
    "b.subbranch IN (${subbranch:sqlstring}) AND b.id IN (${branch:sqlstring})"
    " AND d.type IN (${type:sqlstring}) AND d.vendor IN (${vendor:sqlstring})"
)

ALL_VARIABLES = ("subbranch", "branch", "type", "vendor")


def _base(uid: str, title: str, description: str, *variables: dash.QueryVariable) -> dash.Dashboard:
    board = (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["atmfleet"])
        .timezone("browser")
        .time("now-6h", "now")
        .refresh("1m")
        .readonly()
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
    )
    for v in variables:
        board = board.with_variable(v)
    return board


def fleet_overview() -> model.Dashboard:
    board = _base(
        "atmfleet-fleet",
        "atmfleet / Fleet overview",
        "Devices by state now, the devices down in their service window, today's uptime "
        "by sub-branch, firing alerts.",
        *inventory_variables(*ALL_VARIABLES),
    )
    board = (
        board.with_panel(stat_panel("Devices serving", promql(f"sum({SERVING}) or {NONE_SERVING}")))
        .with_panel(
            stat_panel(
                "Scheduled devices down",
                promql(f"count(atmfleet_device_scheduled_down{{{DEVICE_SEL}}}) or vector(0)"),
            ).thresholds(thresholds((None, "green"), (1, "orange")))
        )
        .with_panel(
            stat_panel(
                "Firing alerts",
                promql('count(ALERTS{alertstate="firing"}) or vector(0)'),
            ).thresholds(thresholds((None, "green"), (1, "red")))
        )
        .with_panel(
            stat_panel(
                "Fleet uptime today (business)",
                promql('fleet:atmfleet_day_uptime:ratio{view="business"}'),
                unit="percentunit",
            )
        )
        .with_panel(
            bars(
                "Devices by state now",
                promql(
                    f"sum by (state) (atmfleet_devices{{{SB},{TY}}})", "{{state}}", instant=True
                ),
            )
        )
        .with_panel(
            ratio_bars(
                "Today's uptime by sub-branch (business view)",
                promql(
                    f'subbranch:atmfleet_day_uptime:ratio{{view="business",{SB}}}',
                    "{{subbranch}}",
                    instant=True,
                ),
                target=0.97,
            )
        )
        .with_panel(
            table_panel(
                "Devices down in their window (value: down since)",
                promql(
                    f"atmfleet_device_scheduled_down_since_timestamp_seconds{{{DEVICE_SEL}}}"
                    " * 1000",
                    instant=True,
                ),
                w=24,
            ).unit("dateTimeAsIso")
        )
        .with_panel(
            table_panel(
                "Firing alerts",
                promql('ALERTS{alertstate="firing"}', instant=True),
                w=24,
            )
        )
    )
    return board.build()


def device_detail() -> model.Dashboard:
    device_query = (
        "SELECT d.id FROM devices d JOIN branches b ON b.id = d.branch"
        f" WHERE {SQL_SEL} ORDER BY d.id"
    )
    board = _base(
        "atmfleet-device",
        "atmfleet / Device detail",
        "One device from the store: its state runs, transactions, cash units and events.",
        *inventory_variables(*ALL_VARIABLES),
        sql_variable("device", "Device", device_query, multi=False),
    )
    dev = "device_id = ${device:sqlstring}"
    board = (
        board.with_panel(
            state_timeline(
                "State",
                sql(
                    "SELECT time, state FROM ("
                    " SELECT start_ts AS time, state FROM state_runs"
                    f" WHERE {dev} AND last_ts >= $__timeFrom() AND start_ts <= $__timeTo()"
                    " UNION ALL"
                    " SELECT presence_at(will, ts, received_at), 'offline (' || status || ')'"
                    f" FROM presence WHERE {dev} AND status = 'offline'"
                    " AND $__timeFilter(presence_at(will, ts, received_at))"
                    ") p ORDER BY time",
                    series=False,
                ),
            )
        )
        .with_panel(
            time_series(
                "Transactions (per 5 minutes)",
                sql(
                    "SELECT $__timeGroupAlias(ts, '5m'),"
                    " count(*) FILTER (WHERE financial) AS financial,"
                    " count(*) FILTER (WHERE NOT financial) AS non_financial"
                    f" FROM transactions WHERE {dev} AND $__timeFilter(ts)"
                    " GROUP BY 1 ORDER BY 1",
                    series=True,
                ),
                ds=POSTGRES,
            )
        )
        .with_panel(
            table_panel(
                "Cash units (newest state message in range)",
                sql(
                    "SELECT u->>'id' AS unit, u->>'type' AS type,"
                    " (u->>'denomination')::int AS denomination, (u->>'count')::int AS notes,"
                    " (u->>'capacity')::int AS capacity, u->>'status' AS status"
                    " FROM (SELECT cash_units FROM state_samples"
                    f" WHERE {dev} AND $__timeFilter(ts) ORDER BY ts DESC, seq DESC LIMIT 1) s,"
                    " jsonb_array_elements(s.cash_units) AS u ORDER BY 1"
                ),
                ds=POSTGRES,
            )
        )
        .with_panel(
            table_panel(
                "Faults and events",
                sql(
                    "SELECT ts AS time, event, component, code, severity, text"
                    f" FROM events WHERE {dev} AND $__timeFilter(ts) ORDER BY ts DESC LIMIT 200"
                ),
                w=24,
                ds=POSTGRES,
            )
        )
    )
    return board.build()


def branches() -> model.Dashboard:
    board = _base(
        "atmfleet-branches",
        "atmfleet / Branches and sub-branches",
        "Today's substitution rate against its 60% target, uptime against the tier targets, "
        "deposit coverage of the staffed branches.",
        *inventory_variables(*ALL_VARIABLES),
    )
    board = (
        board.with_panel(
            ratio_bars(
                "Substitution rate today by sub-branch (target 60%)",
                promql(
                    f"subbranch:atmfleet_day_substitution:ratio{{{SB}}}",
                    "{{subbranch}}",
                    instant=True,
                ),
                target=0.6,
            )
        )
        .with_panel(
            ratio_bars(
                "Substitution rate today by branch (target 60%)",
                promql(
                    f"branch:atmfleet_day_substitution:ratio{{{SB},{BR}}}",
                    "{{branch}}",
                    instant=True,
                ),
                target=0.6,
            )
        )
        .with_panel(
            ratio_bars(
                "Uptime today by branch (business view)",
                promql(
                    f'branch:atmfleet_day_uptime:ratio{{view="business",{SB},{BR}}}',
                    "{{branch}}",
                    instant=True,
                ),
                target=0.97,
            )
        )
        .with_panel(
            time_series(
                "Sub-branch uptime today against its tier's target (percentage points)",
                promql(
                    f'subbranch:atmfleet_day_uptime:ratio{{view="business",{SB}}}'
                    " - on(tier) group_left() atmfleet_uptime_target_ratio",
                    "{{subbranch}}",
                ),
                unit="percentunit",
            ).thresholds(thresholds((None, "red"), (0, "green")))
        )
        .with_panel(
            time_series(
                "Substitution rate today against the target",
                promql(f"subbranch:atmfleet_day_substitution:ratio{{{SB}}}", "{{subbranch}}"),
                promql('atmfleet_substitution_target_ratio{placement="all"}', "target", ref="B"),
                unit="percentunit",
            )
        )
        .with_panel(
            table_panel(
                "Deposit coverage: deposit-capable devices per staffed branch",
                sql(
                    "SELECT b.subbranch, b.id AS branch, b.name,"
                    " count(d.id) FILTER (WHERE d.deposit_capable) AS deposit_capable_devices,"
                    " count(d.id) AS devices"
                    f" FROM branches b LEFT JOIN devices d ON d.branch = b.id AND {ACTIVE}"
                    " WHERE b.kind = 'outlet' AND b.subbranch IN (${subbranch:sqlstring})"
                    " AND b.id IN (${branch:sqlstring})"
                    " GROUP BY b.subbranch, b.id, b.name ORDER BY 4, 1, 2"
                ),
                ds=POSTGRES,
            )
        )
        .with_panel(
            warning_bars(
                "Resource-warning rate (资源预警率) today by sub-branch, lowest first",
                promql(
                    f"sort(subbranch:atmfleet_day_resource_warning:ratio{{{SB}}})",
                    "{{subbranch}}",
                    instant=True,
                ),
            )
        )
        .with_panel(
            warning_bars(
                "Resource-warning rate (资源预警率) today by branch, lowest first",
                promql(
                    f"sort(branch:atmfleet_day_resource_warning:ratio{{{SB},{BR}}})",
                    "{{branch}}",
                    instant=True,
                ),
            )
        )
    )
    return board.build()


def warning_bars(title: str, target: Target) -> bargauge.Panel:
    """资源预警率 bars: the share of scheduled time in a cash or consumables warning
    (ΣW / ΣS), lower is better; no target, so one colour."""
    return (
        bars(title, target, unit="percentunit")
        .min(0)
        .max(1)
        .thresholds(thresholds((None, "orange")))
        .description(
            "Share of today's scheduled time (the same S as uptime) in which the devices "
            "reported cash low/out, deposit nearly full/full or consumables low/out. "
            "Ranked ascending: lower is better. No bar: nothing scheduled yet (no data)."
        )
    )


def low_yield() -> model.Dashboard:
    board = _base(
        "atmfleet-lowyield",
        "atmfleet / Low yield and the tail",
        "The low-yield (低产) share against its 5% ceiling; the bottom devices by volume and "
        "the bottom branches by today's uptime (剁尾巴).",
        *inventory_variables(*ALL_VARIABLES),
    )
    board = (
        board.with_panel(
            ratio_bars(
                "Low-yield share by sub-branch (last evaluated date)",
                promql(
                    f"subbranch:atmfleet_lowyield_devices:ratio{{{SB}}}",
                    "{{subbranch}}",
                    instant=True,
                ),
                target=0,
                w=18,
            ).thresholds(thresholds((None, "green"), (0.05, "red")))
        )
        .with_panel(
            stat_panel(
                "Low-yield ceiling",
                promql("atmfleet_lowyield_target_ratio"),
                unit="percentunit",
            )
        )
        .with_panel(
            table_panel(
                "Bottom 20 devices by counted financial transactions in range",
                sql(
                    "SELECT d.id AS device, d.branch, d.type, d.vendor,"
                    " coalesce(sum(t.txns) FILTER (WHERE t.financial), 0) AS financial,"
                    " coalesce(sum(t.txns), 0) AS all_transactions"
                    " FROM devices d JOIN branches b ON b.id = d.branch"
                    " LEFT JOIN txn_daily t ON t.device_id = d.id AND $__timeFilter(t.bucket)"
                    f" WHERE {ACTIVE} AND {SQL_SEL}"
                    " GROUP BY d.id, d.branch, d.type, d.vendor ORDER BY 5, 6, 1 LIMIT 20"
                ),
                ds=POSTGRES,
            )
        )
        .with_panel(
            table_panel(
                "Bottom 10 branches by uptime today (business view)",
                promql(
                    f'bottomk(10, branch:atmfleet_day_uptime:ratio{{view="business",{SB},{BR}}})',
                    instant=True,
                ),
            ).unit("percentunit")
        )
    )
    return board.build()


_TECH_EXCLUDED = (
    "('cash_out', 'deposit_full', 'comms_down', 'powered_off', 'planned_maintenance', 'closed')"
)


def vendors() -> model.Dashboard:
    board = _base(
        "atmfleet-vendors",
        "atmfleet / Vendors",
        "Technical availability, mean time to repair and response time by vendor, from the "
        "stored state runs in the selected range (the bulletins' vendor scorecard applies "
        "service windows and offline gaps; these panels do not).",
        *inventory_variables(*ALL_VARIABLES),
    )
    faults = (
        "WITH runs AS ("
        " SELECT s.device_id, s.start_ts, s.state,"
        " lag(s.state) OVER (PARTITION BY s.device_id ORDER BY s.start_ts, s.start_seq) AS prev"
        " FROM state_runs s WHERE s.last_ts >= $__timeFrom()::timestamptz - INTERVAL '7 days'"
        " AND s.start_ts <= $__timeTo()"
        "), f AS ("
        " SELECT r.device_id, r.start_ts FROM runs r"
        " WHERE r.state = 'fault' AND r.prev IS DISTINCT FROM 'fault'"
        " AND $__timeFilter(r.start_ts)"
        ") SELECT d.vendor, count(*) AS faults,"
        " avg(extract(epoch FROM (SELECT min(n.start_ts) FROM state_runs n"
        " WHERE n.device_id = f.device_id AND n.start_ts > f.start_ts"
        " AND n.state IN ('in_service', 'degraded')) - f.start_ts)) AS mean_time_to_repair,"
        " avg(extract(epoch FROM (SELECT min(n.start_ts) FROM state_runs n"
        " WHERE n.device_id = f.device_id AND n.start_ts > f.start_ts"
        " AND n.state IN ('maintenance', 'supervisor')) - f.start_ts)) AS mean_response"
        " FROM f JOIN devices d ON d.id = f.device_id JOIN branches b ON b.id = d.branch"
        f" WHERE {SQL_SEL} GROUP BY d.vendor ORDER BY d.vendor"
    )
    board = (
        board.with_panel(
            ratio_bars(
                "Technical availability by vendor",
                sql(
                    "WITH r AS ("
                    " SELECT d.vendor, s.state, extract(epoch FROM"
                    " least(s.last_ts, $__timeTo()) - greatest(s.start_ts, $__timeFrom())) AS secs"
                    " FROM state_runs s JOIN devices d ON d.id = s.device_id"
                    " JOIN branches b ON b.id = d.branch"
                    " WHERE s.last_ts >= $__timeFrom() AND s.start_ts <= $__timeTo()"
                    f" AND {SQL_SEL}"
                    ") SELECT vendor,"
                    " sum(secs) FILTER (WHERE state IN ('in_service', 'degraded'))"
                    f" / nullif(sum(secs) FILTER (WHERE state NOT IN {_TECH_EXCLUDED}), 0)"
                    " AS technical_availability"
                    " FROM r GROUP BY vendor ORDER BY vendor"
                ),
                target=0.98,
                ds=POSTGRES,
            )
        )
        .with_panel(
            table_panel(
                "Faults, mean time to repair and response time by vendor (seconds)",
                sql(faults),
                ds=POSTGRES,
            ).unit("s")
        )
        .with_panel(
            table_panel(
                "Devices serving now by vendor",
                promql(
                    f"sum by (vendor) ({SERVING})"
                    f" or sum by (vendor) (atmfleet_device_state{{{DEVICE_SEL}}}) * 0",
                    instant=True,
                ),
                w=24,
            )
        )
    )
    return board.build()


def collector_health() -> model.Dashboard:
    board = _base(
        "atmfleet-collector",
        "atmfleet / Collector health",
        "Ingest rate, commit lag, dead letters and sequence gaps.",
    )
    board = (
        board.with_panel(
            stat_panel(
                "Collectors storing",
                promql("fleet:atmfleet_collector_storing:count"),
            ).thresholds(thresholds((None, "red"), (1, "green")))
        )
        .with_panel(
            stat_panel(
                "Worst lag", promql("fleet:atmfleet_collector_lag_seconds:max"), unit="s"
            ).thresholds(thresholds((None, "green"), (60, "orange"), (120, "red")))
        )
        .with_panel(
            stat_panel(
                "Messages never stored (sequence gaps)",
                promql("max(atmfleet_collector_sequence_gap_messages)"),
            )
        )
        .with_panel(
            stat_panel("Metrics read the database", promql("atmfleet_exporter_database_up"))
        )
        .with_panel(
            time_series(
                "Ingest rate (messages/s)",
                promql(
                    "sum(rate(atmfleet_collector_messages_received_total[$__rate_interval]))",
                    "received",
                ),
                promql(
                    "sum by (kind) (rate(atmfleet_collector_messages_stored_total[$__rate_interval]))",
                    "stored {{kind}}",
                    ref="B",
                ),
                unit="reqps",
            )
        )
        .with_panel(
            time_series(
                "Commit lag", promql("atmfleet_collector_lag_seconds", "{{instance}}"), unit="s"
            )
        )
        .with_panel(
            time_series(
                "Dead letters per 5 minutes, by reason",
                sql(
                    "SELECT $__timeGroupAlias(received_at, '5m'), reason AS metric,"
                    " count(*) AS dead_letters"
                    " FROM dead_letters WHERE $__timeFilter(received_at)"
                    " GROUP BY 1, 2 ORDER BY 1",
                    series=True,
                ),
                ds=POSTGRES,
            )
        )
        .with_panel(
            table_panel(
                "Devices with sequence gaps",
                sql(
                    "SELECT device_id AS device, missing, received, min_seq, max_seq,"
                    " updated_at FROM sequence_gaps WHERE missing > 0"
                    " ORDER BY missing DESC, device_id LIMIT 50"
                ),
                ds=POSTGRES,
            )
        )
    )
    return board.build()


#: Every dashboard: file name (without .json) → builder.
DASHBOARDS: dict[str, Callable[[], model.Dashboard]] = {
    "fleet-overview": fleet_overview,
    "device-detail": device_detail,
    "branches": branches,
    "low-yield": low_yield,
    "vendors": vendors,
    "collector-health": collector_health,
}
