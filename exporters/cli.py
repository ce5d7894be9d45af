"""``atmfleet serve``: the fleet's metrics for Prometheus (docs/metrics.md).

The collector's own metrics are not served here: each ``atmfleet collect
--metrics-port`` serves its own, so a collector instance is scraped (and alerted on)
by itself, as the example Prometheus configuration assumes.
"""

from __future__ import annotations

import logging

import click

from atmfleet.settings import load_settings
from atmfleet.signals import stop_on_signals
from exporters.metrics import start_serving
from rules.config import load_rules

log = logging.getLogger(__name__)


@click.command("serve")
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=9310, show_default=True)
@click.option(
    "--refresh",
    "refresh_s",
    type=click.FloatRange(1, 3600),
    default=30.0,
    show_default=True,
    help="Seconds between two reads of the devices' state (a scrape serves the last read).",
)
@click.option(
    "--day-refresh",
    "day_refresh_s",
    type=click.FloatRange(1, 86400),
    default=120.0,
    show_default=True,
    help="Seconds between two computations of today's uptime (costlier).",
)
@click.option(
    "--lean/--full",
    default=True,
    show_default=True,
    help="--lean leaves out the series no shipped rule, alert or dashboard reads (each "
    "device's info series, up series (the state says it), state since-time, last-seen "
    "time, service-window flag and forecast cash-out and deposit-full times, each "
    "branch's info series, unknown time and non-financial transactions); --full serves "
    "them too: docs/metrics.md.",
)
def serve(host: str, port: int, refresh_s: float, day_refresh_s: float, lean: bool) -> None:
    """Serve the fleet's Prometheus metrics on /metrics, read from the database."""
    settings = load_settings()
    rules = load_rules(settings.rules_file)
    url = settings.require_database_url()
    stop = stop_on_signals(log)
    serving = start_serving(
        url, rules, host=host, port=port, refresh_s=refresh_s, day_refresh_s=day_refresh_s,
        lean=lean,
    )  # fmt: skip
    log.info("serving on %s:%d/metrics, refresh every %g s", host, serving.port, refresh_s)
    try:
        stop.wait()
    finally:
        serving.close()
