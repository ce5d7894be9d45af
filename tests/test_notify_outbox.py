"""The durable outbox on the real PostgreSQL, delivering to the local stand-ins: success,
errcode != 0 and HTTP 500 retried with backoff, giving up (logged, counted, listed),
bursts aggregated under DingTalk's rate limit, the metrics, incident events tailed."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from notify.config import NotifyConfig, parse_config
from notify.metrics import NotifyCollector
from notify.outbox import Resolved, build_senders, dispatch, enqueue
from tests import notify_standins as si
from tests.test_notify_channels import channels

pytestmark = pytest.mark.integration


@pytest.fixture
def standin() -> Iterator[si.StandIn]:
    s = si.StandIn().start()
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for var, value in si.SECRET_ENV.items():
        monkeypatch.setenv(var, value)


def make_config(base: str, **over: Any) -> NotifyConfig:
    ch = channels(base)
    for name in ("wecom", "ding", "wecom-app", "hook"):
        ch[name].update(group_wait_s=0, group_interval_s=0)
    for name, extra in over.pop("channel", {}).items():
        ch[name].update(extra)
    return parse_config(
        {"channels": ch, "retry": {"base_s": 0.2, "max_s": 1, "max_attempts": 3}, **over}
    )


@pytest.fixture(scope="module")
def db() -> Iterator[str]:
    """One database for the module (the schema takes a second and a half to apply); each
    test starts from empty notifier tables."""
    from atmfleet.store.migrate import upgrade
    from tests.conftest import create_database, drop_database

    url = create_database()
    try:
        with psycopg.connect(url, autocommit=True) as c:
            upgrade(c)
        yield url
    finally:
        drop_database(url)


@pytest.fixture
def conn(db: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db, autocommit=True) as c:
        c.execute("TRUNCATE notify_outbox, notify_deliveries, notify_counters, notify_cursors")
        yield c


def add(
    conn: psycopg.Connection[Any], config: NotifyConfig, channel: str, n: int = 1, **kw: Any
) -> list[int]:
    ids = []
    for i in range(n):
        got = enqueue(
            conn,
            config,
            Resolved(channel, **kw),
            source="test",
            title=f"告警 {i}",
            body=f"设备 D{i:03d} 离线",
        )
        assert got is not None
        ids.append(got)
    return ids


def rows(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT id, status, attempts, last_error, next_attempt_at - last_attempt_at"
        " FROM notify_outbox ORDER BY id"
    ).fetchall()


def drain(
    conn: psycopg.Connection[Any],
    config: NotifyConfig,
    senders: Any,
    until: Any,
    timeout: float = 20,
) -> None:
    """Dispatcher passes until ``until()`` holds (waits for the event, not a time)."""
    import time

    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, rows(conn)
        dispatch(conn, config, senders)
        time.sleep(0.05)


def metric(conn_url: str, name: str, channel: str) -> float | None:
    registry = CollectorRegistry()
    collector = NotifyCollector(lambda: psycopg.connect(conn_url, autocommit=True))
    registry.register(collector)
    try:
        return registry.get_sample_value(name, {"channel": channel})
    finally:
        if collector._conn is not None:
            collector._conn.close()


class TestDelivery:
    def test_success_marks_sent_and_counts(self, db: str, conn: Any, standin: si.StandIn) -> None:
        config = make_config(standin.base)
        senders, broken = build_senders(config)
        assert not broken
        add(conn, config, "wecom")
        result = dispatch(conn, config, senders)
        assert (result.sent, result.retried, result.failed) == (1, 0, 0)
        assert [r[1:3] for r in rows(conn)] == [("sent", 1)]
        assert metric(db, "atmfleet_notify_sent_total", "wecom") == 1
        assert metric(db, "atmfleet_notify_pending", "wecom") == 0

    def test_errcode_is_retried_with_backoff_then_sent(
        self, db: str, conn: Any, standin: si.StandIn
    ) -> None:
        config = make_config(standin.base)
        senders, _ = build_senders(config)
        standin.script["/cgi-bin/webhook/send"] = [(200, {"errcode": -1, "errmsg": "system busy"})]
        add(conn, config, "wecom")
        first = dispatch(conn, config, senders)
        assert (first.sent, first.retried) == (0, 1)
        ((_id, status, attempts, error, wait),) = rows(conn)
        assert (status, attempts, error) == ("pending", 1, "wecom: errcode -1: system busy")
        assert wait.total_seconds() == pytest.approx(0.2, abs=0.05)  # base_s
        drain(conn, config, senders, lambda: rows(conn)[0][1] == "sent")
        assert rows(conn)[0][2] == 2
        assert len(standin.received("/cgi-bin/webhook/send")) == 2
        assert metric(db, "atmfleet_notify_retried_total", "wecom") == 1
        assert metric(db, "atmfleet_notify_sent_total", "wecom") == 1

    def test_http_500_backs_off_exponentially_then_gives_up_loudly(
        self, db: str, conn: Any, standin: si.StandIn, caplog: pytest.LogCaptureFixture
    ) -> None:
        config = make_config(standin.base)
        senders, _ = build_senders(config)
        standin.script["/robot/send"] = [(500, {"errmsg": "internal"})] * 5
        add(conn, config, "ding")
        waits = []
        for attempt in (1, 2):
            drain(conn, config, senders, lambda a=attempt: rows(conn)[0][2] == a)
            waits.append(round(rows(conn)[0][4].total_seconds(), 1))
        assert waits == [0.2, 0.4]  # base_s * factor**(n-1)
        with caplog.at_level(logging.ERROR, logger="notify.outbox"):
            drain(conn, config, senders, lambda: rows(conn)[0][1] == "failed")
        ((_id, status, attempts, error, _w),) = rows(conn)
        assert (status, attempts, error) == ("failed", 3, 'ding: HTTP 500 {"errmsg": "internal"}')
        assert "gave up 1 message(s) after 3 attempts" in caplog.text
        assert metric(db, "atmfleet_notify_failed_total", "ding") == 1
        assert metric(db, "atmfleet_notify_retried_total", "ding") == 2
        for secret in (si.DING_TOKEN, si.DING_SECRET):
            assert secret not in caplog.text and secret not in error

    def test_a_channel_without_its_secret_fails_visibly(
        self, db: str, conn: Any, standin: si.StandIn, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        config = make_config(standin.base)
        monkeypatch.delenv("T_WECOM_KEY")
        senders, broken = build_senders(config)
        assert broken == {
            "wecom": "channels.wecom.key: environment variable T_WECOM_KEY is not set"
        }
        add(conn, config, "wecom")
        drain(conn, config, senders, lambda: rows(conn)[0][1] == "failed")
        assert "no longer configured (or could not be built)" in rows(conn)[0][3]


class TestAggregation:
    def test_a_burst_for_one_recipient_is_one_message(
        self, db: str, conn: Any, standin: si.StandIn
    ) -> None:
        config = make_config(standin.base)
        senders, _ = build_senders(config)
        add(conn, config, "ding", 300, mentions=("13800000000",))
        result = dispatch(conn, config, senders)
        assert (result.sent, result.rows_sent) == (1, 300)
        (req,) = standin.received("/robot/send")
        md = req.json()["markdown"]
        assert md["title"] == "【汇总 300 条】告警 0"
        assert "设备 D000 离线" in md["text"]

    def test_over_the_rate_limit_waits_for_the_next_window_not_dropped(
        self, db: str, conn: Any, standin: si.StandIn
    ) -> None:
        """25 recipients at once on a robot that takes 20 a minute: 20 go now, 5 wait
        (DingTalk itself would answer errcode 130101 to the 21st)."""
        config = make_config(standin.base)
        senders, _ = build_senders(config)
        for i in range(25):
            add(conn, config, "ding", 2, mentions=(f"1380000{i:04d}",))
        result = dispatch(conn, config, senders)
        assert (result.sent, result.rows_sent, result.deferred) == (20, 40, 5)
        assert all(r.json()["at"]["atMobiles"] for r in standin.received("/robot/send"))
        held = conn.execute(
            "SELECT count(*), min(next_attempt_at - now()) FROM notify_outbox WHERE status = 'pending'"
        ).fetchone()
        assert held[0] == 10 and 50 < held[1].total_seconds() <= 60
        # More for the held recipients meanwhile: merged with what waits, still one each.
        for i in range(20, 25):
            add(conn, config, "ding", 1, mentions=(f"1380000{i:04d}",))
        conn.execute(  # the window ends (moved, rather than waited for)
            "UPDATE notify_deliveries SET at = at - interval '61 seconds'"
        )
        conn.execute("UPDATE notify_outbox SET next_attempt_at = now() WHERE status = 'pending'")
        standin.new_minute()
        second = dispatch(conn, config, senders)
        assert (second.sent, second.rows_sent) == (5, 15)
        assert not [r for r in standin.received("/robot/send") if r.json().get("errcode")]

    def test_one_message_per_recipient_per_interval(
        self, db: str, conn: Any, standin: si.StandIn
    ) -> None:
        config = make_config(standin.base, channel={"wecom": {"group_interval_s": 60}})
        senders, _ = build_senders(config)
        add(conn, config, "wecom")
        assert dispatch(conn, config, senders).sent == 1
        add(conn, config, "wecom", 3)
        later = dispatch(conn, config, senders)
        assert (later.sent, later.deferred) == (0, 1)
        assert len(standin.received("/cgi-bin/webhook/send")) == 1


class TestIncidentEvents:
    def test_events_are_tailed_once_and_routed(
        self, db: str, conn: Any, standin: si.StandIn
    ) -> None:
        from datetime import UTC, datetime
        from zoneinfo import ZoneInfo

        from notify.incidents import tail

        config = make_config(
            standin.base,
            recipients={
                "branch:B01": [{"channel": "wecom"}],
                "head_office:": [{"channel": "hook"}],
            },
            maintainers={"mention_channel": "ding"},
        )
        conn.execute(
            "INSERT INTO maintainers (id, vendor, region, name, phone, email)"
            " VALUES ('GRG-HLBE', 'GRG', 'HLBE', '广电运通呼伦贝尔', '13700000000', 'grg@x.example')"
        )
        at = datetime(2026, 12, 1, 8, 3, 5, tzinfo=UTC)
        conn.execute(
            "INSERT INTO incidents (device_id, subbranch_id, branch_id, vendor, model, class, cause,"
            " started_at, opened_at, cycle_at) VALUES ('D001', 'HLBE', 'B01', 'GRG', 'H68N',"
            " 'component', 'fault', %s, %s, %s)",
            (at, at, at),
        )
        conn.execute(
            "INSERT INTO incident_events (incident_id, incident_ids, at, kind, actor, to_state,"
            " recipients) VALUES (1, '{1}', %s, 'opened', 'system', 'open',"
            " '{branch:B01,maintainer:GRG-HLBE,subbranch_manager:NOPE}')",
            (at,),
        )
        tz = ZoneInfo("Asia/Shanghai")
        assert tail(conn, config, tz) == 1
        assert tail(conn, config, tz) == 0  # the cursor moved
        senders, _ = build_senders(config)
        dispatch(conn, config, senders)
        (wecom,) = standin.received("/cgi-bin/webhook/send")
        content = wecom.json()["markdown"]["content"]
        assert "[新故障] 故障工单 #1 HLBE B01 D001" in content
        assert "时间：2026-12-01 16:03:05（北京时间）" in content
        (ding,) = standin.received("/robot/send")
        assert ding.json()["at"]["atMobiles"] == ["13700000000"]
        assert metric(db, "atmfleet_notify_failed_total", "(unrouted)") == 1

    def test_an_engine_notification_lists_its_incidents_in_local_time(
        self, db: str, conn: Any, standin: si.StandIn
    ) -> None:
        """The engine writes one event per recipient and pass, its incidents in
        ``detail.items`` (incidents/engine.py); written here with the engine's own call."""
        from datetime import UTC, datetime
        from zoneinfo import ZoneInfo

        from incidents.service import write_event
        from notify.incidents import tail

        config = make_config(
            standin.base, recipients={"subbranch_manager:*": [{"channel": "wecom"}]}
        )
        conn.execute(  # start after whatever other tests of the module wrote
            "INSERT INTO notify_cursors (name, position)"
            " SELECT 'incident_events', coalesce(max(id), 0) FROM incident_events"
        )
        at = datetime(2026, 12, 1, 8, 3, 5, tzinfo=UTC)
        ids = []
        for dev in ("D101", "D102"):
            row = conn.execute(
                "INSERT INTO incidents (device_id, subbranch_id, branch_id, vendor, model, class,"
                " cause, started_at, opened_at, cycle_at) VALUES (%s, 'TL', 'B10', 'NCR', 'SS22',"
                " 'power', 'power', %s, %s, %s) RETURNING id",
                (dev, at, at, at),
            ).fetchone()
            ids.append(row[0])
        items = [
            {"incident_id": i, "device_id": d, "branch_id": "B10", "subbranch_id": "TL",
             "vendor": "NCR", "class": "power", "cause": "power", "started_at": at.isoformat(),
             "deadline": "response", "level": 0, "due_at": "2026-12-01T10:03:05+00:00"}
            for i, d in zip(ids, ("D101", "D102"), strict=True)
        ]  # fmt: skip
        write_event(
            conn, incident_ids=ids, kind="sla_warning", actor="system", at=at,
            detail={"notification": True, "count": 2, "items": items},
            recipients=["subbranch_manager:TL"],
        )  # fmt: skip
        assert tail(conn, config, ZoneInfo("Asia/Shanghai")) == 1
        dispatch(conn, config, build_senders(config)[0])
        content = standin.wait("/cgi-bin/webhook/send", 1)[-1].json()["markdown"]["content"]
        assert content.startswith("**[时限预警] 2 起故障工单**")
        assert (
            f"- #{ids[0]} TL B10 D101（类别：电力，厂商：NCR，开始时间：2026-12-01 16:03:05，"
            "到场时限：2026-12-01 18:03:05，北京时间）"
        ) in content
