"""The collector's own metrics, on a registry passed in (no global registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "atmfleet_collector"


class CollectorStats:
    """Counters and gauges the writer loop and the MQTT callbacks update."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.received = Counter(
            f"{PREFIX}_messages_received", "MQTT messages received.", registry=registry
        )
        self.stored = Counter(
            f"{PREFIX}_messages_stored",
            "Messages stored (new rows), by kind.",
            ["kind"],
            registry=registry,
        )
        self.duplicates = Counter(
            f"{PREFIX}_messages_duplicate",
            "Redelivered messages that were already stored (nothing written).",
            registry=registry,
        )
        self.rejected = Counter(
            f"{PREFIX}_messages_rejected",
            "Messages dead-lettered, by reason.",
            ["reason"],
            registry=registry,
        )
        self.batch_seconds = Histogram(
            f"{PREFIX}_batch_duration_seconds",
            "Time to store and commit one batch (including retries).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.batch_phase_seconds = Histogram(
            f"{PREFIX}_batch_phase_seconds",
            "Where a batch's time goes, by phase: held (its first message received, the "
            "batch not yet sent to the store worker), to_worker (sent, not yet read by the "
            "worker), decode (validated), queued (waiting for the worker's store thread), "
            "copy, move, runs, commit (its transaction's parts), answer (committed, the "
            "answer not yet read), ack (acknowledged to the broker).",
            ["phase"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.batch_messages = Histogram(
            f"{PREFIX}_batch_messages",
            "Messages per committed batch.",
            buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 50000),
            registry=registry,
        )
        self.buffered = Gauge(
            f"{PREFIX}_buffered_messages",
            "Messages received and not yet acknowledged.",
            registry=registry,
        )
        self.buffered_bytes = Gauge(
            f"{PREFIX}_buffered_bytes",
            "Memory held by messages received and not yet acknowledged (payload, topic, "
            "bookkeeping), at most ATMFLEET_COLLECTOR__MAX_BUFFERED_BYTES.",
            registry=registry,
        )
        self.dropped = Counter(
            f"{PREFIX}_messages_dropped",
            "QoS 0 messages dropped because the buffer was full (QoS 1 ones are never "
            "dropped: the broker holds them back).",
            ["reason"],
            registry=registry,
        )
        self.dropped.labels("qos0_overflow")  # exposed at 0 from the start
        self.lag = Gauge(
            f"{PREFIX}_lag_seconds",
            "Age of the oldest message received and not yet acknowledged (0 when none), "
            "measured at scrape time by the process that holds the MQTT connection.",
            registry=registry,
        )
        self.last_commit = Gauge(
            f"{PREFIX}_last_commit_timestamp_seconds",
            "When the collector last committed to the database (a batch or a liveness beat).",
            registry=registry,
        )
        self.sequence_gaps = Gauge(
            f"{PREFIX}_sequence_gap_messages",
            "Messages the devices numbered (seq) that were never stored, fleet-wide.",
            registry=registry,
        )
        self.db_errors = Counter(
            f"{PREFIX}_db_errors",
            "Database errors, by class (temporary, data, fatal).",
            ["class"],
            registry=registry,
        )
        self.mqtt_connects = Counter(
            f"{PREFIX}_mqtt_connects", "Successful MQTT (re)connections.", registry=registry
        )
        self.mqtt_sessions_lost = Counter(
            f"{PREFIX}_mqtt_sessions_lost",
            "Reconnections of a known client id the broker had no session for (what it had "
            "queued for the collector may be lost).",
            registry=registry,
        )
        self.mqtt_connected = Gauge(
            f"{PREFIX}_mqtt_connected", "1 while connected to the broker.", registry=registry
        )
