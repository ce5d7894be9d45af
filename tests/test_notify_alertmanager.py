"""A real Alertmanager with the shipped deploy/alertmanager/alertmanager.yml, posting to
atmfleet's webhook receiver, which delivers to the WeCom and DingTalk stand-ins.

Alertmanager (Debian's prometheus-alertmanager) runs on a free port, clustering off,
storage in a temporary directory; the configuration is the shipped one with the receiver
URLs pointed at this test's receiver, the token file at a temporary one, group_wait 1 s,
and WeCom's API at the stand-in (for the ``wecom-direct`` wechat_configs example).
"""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
import yaml

from notify.config import parse_config
from notify.outbox import build_senders
from notify.receiver import Worker, make_server
from tests import alertmanager_proc
from tests import notify_standins as si
from tests.test_notify_channels import channels

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
TOKEN = "receiver-bearer-token-31337"

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_shipped_configuration_checks() -> None:
    amtool = alertmanager_proc.binary("amtool")
    out = subprocess.run(
        [amtool, "check-config", str(SHIPPED)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    routes = subprocess.run(
        [amtool, "config", "routes", "test", f"--config.file={SHIPPED}", "scope=device",
         "severity=warning"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert routes.stdout.split() == ["atmfleet-device"]


@pytest.fixture
def standin() -> Iterator[si.StandIn]:
    s = si.StandIn().start()
    yield s
    s.stop()


@pytest.fixture
def receiver(db: str, standin: si.StandIn, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    for var, value in {**si.SECRET_ENV, "T_RECEIVER_TOKEN": TOKEN}.items():
        monkeypatch.setenv(var, value)
    ch = channels(standin.base)
    for name in ("wecom", "ding", "hook"):
        ch[name].update(group_wait_s=0.5, group_interval_s=0)
    config = parse_config(
        {
            "channels": ch,
            "poll_s": 0.1,
            "recipients": {
                "team:": [{"channel": "wecom"}],
                "subbranch_manager:*": [{"channel": "ding"}],
                "head_office:": [{"channel": "hook"}],
            },
            "receiver": {
                "bearer_token": {"env": "T_RECEIVER_TOKEN"},
                "routes": {
                    "wecom": ["team:"],
                    "dingtalk": ["subbranch_manager:*"],
                    "pager": ["head_office:"],
                },
            },
        }
    )
    senders, broken = build_senders(config)
    assert not broken
    tz = ZoneInfo("Asia/Shanghai")
    worker = Worker(db, config, senders, tz)
    server = make_server("127.0.0.1", 0, db, config, tz, on_accept=worker.wake.set)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    worker.thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        worker.stop.set()
        worker.wake.set()
        worker.thread.join(timeout=10)


def _test_config(receiver_port: int, token_file: Path, standin: si.StandIn) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    config["global"]["wechat_api_url"] = f"{standin.base}/cgi-bin/"
    for r in config["receivers"]:
        for hook in r.get("webhook_configs", []):
            hook["url"] = hook["url"].replace("127.0.0.1:9095", f"127.0.0.1:{receiver_port}")
            hook["http_config"]["authorization"]["credentials_file"] = str(token_file)
        for wc in r.get("wechat_configs", []):
            wc["corp_id"] = si.CORP_ID
            wc["api_secret"] = si.CORP_SECRET

    def shorten(route: dict[str, Any]) -> None:
        route["group_wait"] = "1s"
        for child in route.get("routes", []):
            shorten(child)

    shorten(config["route"])
    config["route"]["routes"].insert(
        0, {"receiver": "wecom-direct", "matchers": ['alertname="DirectTest"'], "group_wait": "1s"}
    )
    return config


@pytest.fixture
def alertmanager(receiver: int, standin: si.StandIn, tmp_path: Path) -> Iterator[str]:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    with alertmanager_proc.running(_test_config(receiver, token_file, standin), tmp_path) as url:
        yield url


def _post_alerts(url: str, alerts: list[dict[str, Any]]) -> None:
    request = urllib.request.Request(
        f"{url}/api/v2/alerts", data=json.dumps(alerts).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


STARTS = "2026-12-01T08:03:05Z"  # 16:03:05 in Beijing


def _device_alert(device: str, name: str = "AtmfleetDeviceDown") -> dict[str, Any]:
    return {
        "labels": {
            "alertname": name, "severity": "warning", "category": "availability",
            "scope": "device", "device": device, "branch": "B01", "subbranch": "HLBE",
        },
        "annotations": {"summary": f"设备 {device} 离线超过 10 分钟"},
        "startsAt": STARTS,
    }  # fmt: skip


def test_alertmanager_to_wecom_and_dingtalk_in_beijing_time(
    db: str, alertmanager: str, standin: si.StandIn
) -> None:
    _post_alerts(alertmanager, [_device_alert(f"D00{i}") for i in range(1, 6)])
    (wecom,) = standin.wait("/cgi-bin/webhook/send", 1)
    (ding,) = standin.wait("/robot/send", 1)
    content = wecom.json()["markdown"]["content"]
    # One message for the group of five, in Chinese, in Beijing time.
    assert content.startswith("**[告警] AtmfleetDeviceDown 网点 B01，二级分行 HLBE（5 条）**")
    assert content.count("开始时间：2026-12-01 16:03:05（北京时间）") == 5
    assert "08:03:05" not in content and "UTC" not in content
    md = ding.json()["markdown"]
    assert "设备 D003 离线超过 10 分钟" in md["text"] and "16:03:05（北京时间）" in md["text"]
    with psycopg.connect(db) as conn:
        audit = conn.execute(
            "SELECT actor, surface, after->>'route', (after->>'alerts')::int FROM audit_log"
            " WHERE action = 'notify.alerts.accept' ORDER BY id"
        ).fetchall()
    assert sorted(audit) == [
        ("alertmanager", "notify-webhook", "dingtalk", 5),
        ("alertmanager", "notify-webhook", "wecom", 5),
    ]


def test_alertmanagers_own_wechat_receiver_shows_beijing_time(
    alertmanager: str, standin: si.StandIn
) -> None:
    _post_alerts(alertmanager, [_device_alert("D009", name="DirectTest")])
    (send,) = standin.wait("/cgi-bin/message/send", 1)
    assert send.query["access_token"] == si.TOKEN
    content = send.json()["text"]["content"]
    assert "开始时间：2026-12-01 16:03:05（北京时间）" in content


def test_the_receiver_refuses_without_the_token(db: str, receiver: int) -> None:
    body = json.dumps({"status": "firing", "alerts": []}).encode()
    for header in (None, "Bearer wrong", "Basic " + base64.b64encode(b"x:y").decode()):
        request = urllib.request.Request(
            f"http://127.0.0.1:{receiver}/alertmanager/wecom", data=body, method="POST"
        )
        if header:
            request.add_header("Authorization", header)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=5)
        assert err.value.code == 401
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM notify_outbox").fetchone() == (0,)
        assert conn.execute(
            "SELECT count(*) FROM audit_log WHERE action = 'notify.alerts.accept'"
        ).fetchone() == (0,)


def test_notify_serve_as_a_process(db: str, standin: si.StandIn, tmp_path: Path) -> None:
    """`atmfleet notify serve` as the service runs it: accepts a webhook, delivers it,
    stops on SIGTERM, and its output carries no secret."""
    import os
    import signal
    import sys

    ch = channels(standin.base)
    ch["wecom"].update(group_wait_s=0)
    config = {
        "channels": {"wecom": ch["wecom"]},
        "poll_s": 0.2,
        "recipients": {"team:": [{"channel": "wecom"}]},
        "receiver": {
            "bearer_token": {"file": str(tmp_path / "token")},
            "routes": {"wecom": ["team:"]},
        },
    }
    (tmp_path / "token").write_text(TOKEN + "\n", encoding="utf-8")
    path = tmp_path / "notify.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    port = alertmanager_proc.free_port()
    env = {
        **os.environ,
        **si.SECRET_ENV,
        "ATMFLEET_DATABASE_URL": db,
        "ATMFLEET_NOTIFY_FILE": str(path),
    }
    exe = str(Path(sys.executable).with_name("atmfleet"))
    proc = subprocess.Popen(
        [exe, "-v", "notify", "serve", "--port", str(port)], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        body = json.dumps(
            {"status": "firing", "alerts": [_device_alert("D077") | {"status": "firing"}]}
        )
        deadline = time.monotonic() + 30
        while True:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/alertmanager/wecom", data=body.encode(), method="POST",
                headers={"Authorization": f"Bearer {TOKEN}"},
            )  # fmt: skip
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    assert response.status == 200
                    break
            except urllib.error.URLError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        (got,) = standin.wait("/cgi-bin/webhook/send", 1)
        assert "设备 D077 离线超过 10 分钟" in got.json()["markdown"]["content"]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "webhook wecom from alertmanager: 1 alert(s), 1 outbox row(s)" in out
    for secret in (TOKEN, si.WECOM_KEY):
        assert secret not in out
