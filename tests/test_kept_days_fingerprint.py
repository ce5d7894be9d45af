"""Kept closed days are found by the next process: the rules' part of the fingerprint is
the same whatever the process's string hashing (a set's order used to change it, so no
command ever read the days another had kept), and a kept day is what the next command
reads instead of recomputing it."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta

import psycopg

from rules.config import Rules, load_rules
from rules.feed import Feed, rules_text, window_days

SCRIPT = (
    "import hashlib\n"
    "from rules.config import load_rules\n"
    "from rules.feed import rules_text\n"
    "print(hashlib.sha256(rules_text(load_rules()).encode()).hexdigest())\n"
)


def test_rules_text_is_the_same_in_every_process() -> None:
    procs = []
    for seed in ("1", "2", "3", "4"):  # the four processes at once: each is mostly imports
        env = dict(os.environ, PYTHONHASHSEED=seed)
        env.pop("ATMFLEET_RULES_FILE", None)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", SCRIPT], env=env, stdout=subprocess.PIPE, text=True
            )
        )
    seen = set()
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        seen.add(out.strip())
    assert len(seen) == 1


def test_rules_text_changes_with_the_rules() -> None:
    rules = load_rules()
    changed = rules.model_copy(
        update={"tail": rules.tail.model_copy(update={"size": rules.tail.size + 1})}
    )
    assert rules_text(rules) != rules_text(changed)


def test_a_kept_day_is_read_by_the_next_feed(db: str) -> None:
    rules = load_rules()
    with psycopg.connect(db) as conn:
        _kept_day_is_read(conn, rules)


def _kept_day_is_read(db: psycopg.Connection, rules: Rules) -> None:
    db.execute("INSERT INTO subbranches VALUES ('S1', 's1', 1)")
    db.execute(
        "INSERT INTO branches (id, name, subbranch, kind) VALUES ('B1', 'b1', 'S1', 'outlet')"
    )
    db.execute(
        "INSERT INTO devices (id, branch, type, placement, vendor, model, commissioned,"
        " deposit_capable, heartbeat_s) VALUES ('D1', 'B1', 'atm', 'on_site', 'V', 'M',"
        " '2025-01-01', false, 60)"
    )
    db.commit()
    day = date(2026, 11, 20)
    horizon = int(datetime(2026, 11, 25, tzinfo=UTC).timestamp() * 1000)
    feed = Feed(db, rules)
    devices = feed.inventory().devices
    first = window_days(feed, devices, day - timedelta(days=1), day, horizon)
    kept = Feed(db, rules).kept_days(Feed(db, rules).fingerprint(), day - timedelta(days=1), day)
    assert kept["D1"].available == first["D1"].available
    assert kept["D1"].scheduled == first["D1"].scheduled
