"""``atmfleet collect`` and ``atmfleet counters import``."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import click
from prometheus_client import CollectorRegistry, start_http_server

from atmfleet.protocol import counter_topic, encode
from atmfleet.settings import load_settings
from atmfleet.signals import stop_on_signals
from atmfleet.store.connect import connect
from atmfleet.store.writer import Accepted, BatchWriter
from collector.counters import parse_counter_csv
from collector.service import Collector, describe
from collector.stats import CollectorStats
from collector.worker import tune_gc

log = logging.getLogger(__name__)


@click.command("collect")
@click.option("--client-id", default=None, help="Override ATMFLEET_COLLECTOR__CLIENT_ID.")
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve the collector's own metrics on this port (/metrics).",
)
def collect(client_id: str | None, metrics_port: int | None) -> None:
    """Receive device telemetry from MQTT and store it; stops cleanly on SIGTERM/SIGINT."""
    settings = load_settings()
    registry = CollectorRegistry()
    stats = CollectorStats(registry)
    collector = Collector(settings, stats, client_id=client_id)
    stop = stop_on_signals(log, "flushing and stopping")
    if metrics_port is not None:
        start_http_server(metrics_port, registry=registry)
    log.info("%s", describe(settings))
    tune_gc()
    collector.run(stop)


@click.group("counters")
def counters() -> None:
    """Teller-counter transaction volumes from core banking."""


@counters.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def counters_import(path: Path) -> None:
    """Import a CSV (branch_id,date,financial[,non_financial][,source]); later imports of
    the same branch and day replace earlier ones."""
    with path.open(encoding="utf-8-sig", newline="") as fh:
        messages = parse_counter_csv(fh, str(path))
    settings = load_settings()
    now = datetime.now(UTC)
    records = [Accepted(m, now, counter_topic(m.branch_id), encode(m)) for m in messages]
    with connect(settings.require_database_url(), application_name="atmfleet-import") as conn:
        result = BatchWriter(conn, "counters-import").write(records)
    click.echo(f"imported {result.stored['counter']} of {len(records)} branch-days from {path}")
