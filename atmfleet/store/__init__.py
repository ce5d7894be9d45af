"""The database: versioned migrations, connection helpers and the ingest writers.

``atmfleet db upgrade`` applies :mod:`atmfleet.store.migrate`; the collector writes through
:mod:`atmfleet.store.writer`. Every relation exists under the same name on plain PostgreSQL
and on TimescaleDB, so every query downstream runs on both.
"""

from atmfleet.store.connect import connect, redact_url
from atmfleet.store.migrate import Flavour, upgrade

__all__ = ["Flavour", "connect", "redact_url", "upgrade"]
