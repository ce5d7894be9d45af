"""The incident engine and the notifier together: a 500-device power cut of two branches,
the real engine's pass, the notifier's tail and dispatch, and what the stand-ins received:
one message per recipient (10), not 500 — within DingTalk's 20 a minute."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest

from incidents.engine import Engine
from notify.config import parse_config
from notify.incidents import tail
from notify.outbox import build_senders, dispatch
from rules.config import parse_rules
from tests import notify_standins as si
from tests.incident_helpers import B1, B2, db_now, inventory, run, setup
from tests.test_incidents_engine import FAST
from tests.test_notify_channels import channels

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MIN = timedelta(minutes=1)


@pytest.fixture
def standin() -> Iterator[si.StandIn]:
    s = si.StandIn().start()
    yield s
    s.stop()


def test_a_branch_power_cut_is_one_message_per_recipient(
    db: str, standin: si.StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var, value in si.SECRET_ENV.items():
        monkeypatch.setenv(var, value)
    ch = channels(standin.base)
    for name in ("wecom", "ding", "hook"):
        ch[name].update(group_wait_s=0)
    config = parse_config(
        {
            "channels": ch,
            "recipients": {
                "branch:*": [{"channel": "wecom"}],
                "subbranch_manager:*": [{"channel": "ding"}],
                "maintainer:*": [{"channel": "hook"}],
            },
        }
    )
    with psycopg.connect(db) as conn:
        setup(conn, inventory(devices_per_branch=250))
        now = db_now(conn)
        for b in (B1, B2):
            for i in range(250):
                run(conn, f"{b}-D{i:03d}", now - 190 * MIN, now, "powered_off")
        conn.commit()
        stats = Engine(conn, parse_rules(FAST)).run_once(now)
        conn.commit()
        assert stats.opened == 500
    senders, _ = build_senders(config)
    with psycopg.connect(db, autocommit=True) as conn:
        started = time.monotonic()
        events = tail(conn, config, ZoneInfo("Asia/Shanghai"))
        result = dispatch(conn, config, senders)
        took = time.monotonic() - started
        print(f"\n{events} notification events -> {result.sent} messages in {took:.2f} s")
    assert events == 10
    # Rows for one target merge, whatever recipient key led there: one message per chat.
    assert (result.sent, result.rows_sent, result.retried, result.failed) == (3, 10, 0, 0)
    (wecom,) = standin.received("/cgi-bin/webhook/send")
    (ding,) = standin.received("/robot/send")
    (hook,) = standin.received("/hook")
    # The branches' group: opened and escalation level 1 of both branches.
    content = wecom.json()["markdown"]["content"]
    assert content.startswith("**【汇总 4 条】[新故障] 250 起故障工单**")
    assert content.count("**[新故障] 250 起故障工单**") == 2
    assert content.count("**[升级督办] 250 起故障工单**") == 2
    assert "（北京时间）" in content
    assert len(content.encode()) <= 4096
    # The sub-branch managers' group: escalation level 2 of both sub-branches.
    md = ding.json()["markdown"]
    assert md["title"] == "【汇总 2 条】[升级督办] 250 起故障工单"
    # The maintainers' webhook: warning and breach for both teams.
    assert hook.json()["count"] == 4
    assert hook.json()["text"].count("[时限预警]") == 2 and hook.json()["text"].count("[超时]") == 2
