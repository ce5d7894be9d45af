"""The channels against local stand-ins of WeCom, DingTalk, a webhook, and a real local SMTP
server (aiosmtpd); the configuration's validation; the pure message rendering."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from atmfleet.errors import ConfigError
from notify import alertmanager
from notify.bulletin import due, first_working_day
from notify.channels import (
    Attachment,
    DeliveryError,
    DingTalkRobot,
    Email,
    Message,
    Webhook,
    WeComApp,
    WeComRobot,
    build_sender,
    dingtalk_sign,
)
from notify.config import Calendar, Retry, parse_config
from notify.messages import Texts
from notify.outbox import backoff_s
from tests import notify_standins as si

SHANGHAI = ZoneInfo("Asia/Shanghai")
SECRETS = (si.WECOM_KEY, si.CORP_SECRET, si.TOKEN, si.DING_TOKEN, si.DING_SECRET, si.HOOK_SECRET)


@pytest.fixture
def standin() -> Iterator[si.StandIn]:
    s = si.StandIn().start()
    yield s
    s.stop()


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var, value in si.SECRET_ENV.items():
        monkeypatch.setenv(var, value)


def channels(
    base: str, smtp_port: int = 25, ca: Path | None = None, mode: str = "none"
) -> dict[str, Any]:
    return {
        "wecom": {"type": "wecom_robot", "key": {"env": "T_WECOM_KEY"}, "base_url": base},
        "wecom-app": {
            "type": "wecom_app", "corp_id": si.CORP_ID, "agent_id": 1000002,
            "secret": {"env": "T_CORP_SECRET"}, "base_url": base,
        },
        "ding": {
            "type": "dingtalk_robot", "access_token": {"env": "T_DING_TOKEN"},
            "sign_secret": {"env": "T_DING_SECRET"}, "base_url": base,
        },
        "hook": {"type": "webhook", "url": f"{base}/hook", "hmac_secret": {"env": "T_HOOK_SECRET"}},
        "mail": {
            "type": "email", "host": "127.0.0.1", "port": smtp_port, "security": mode,
            "from": "atmfleet@bank.example", "to": ["ops@bank.example"],
            **({"username": si.SMTP_USER, "password": {"env": "T_SMTP_PASSWORD"}} if mode == "starttls" else {}),
            **({"ca_file": str(ca)} if ca else {}),
        },
    }  # fmt: skip


def sender(base: str, name: str, **kw: Any) -> Any:
    config = parse_config({"channels": channels(base, **kw)})
    return build_sender(name, config.channels[name])


MSG = Message("[告警] 设备离线", "- 设备 D001 离线\n  开始时间：2026-12-01 16:03:05（北京时间）")


class TestWeComRobot:
    def test_success_posts_markdown_with_the_key(
        self, standin: si.StandIn, secrets_env: None
    ) -> None:
        s: WeComRobot = sender(standin.base, "wecom")
        s.send(MSG)
        (req,) = standin.received("/cgi-bin/webhook/send")
        assert req.query == {"key": si.WECOM_KEY}
        body = req.json()
        assert body["msgtype"] == "markdown"
        assert "北京时间" in body["markdown"]["content"]

    def test_mentions_use_the_text_type(self, standin: si.StandIn, secrets_env: None) -> None:
        s: WeComRobot = sender(standin.base, "wecom")
        s.send(Message("t", "b", mentions=("13800000000",)))
        body = standin.received("/cgi-bin/webhook/send")[0].json()
        assert body["text"]["mentioned_mobile_list"] == ["13800000000"]

    def test_http_200_with_errcode_is_a_failure(
        self, standin: si.StandIn, secrets_env: None
    ) -> None:
        standin.script["/cgi-bin/webhook/send"] = [
            (200, {"errcode": 45009, "errmsg": "api freq out of limit"})
        ]
        s: WeComRobot = sender(standin.base, "wecom")
        with pytest.raises(DeliveryError, match="errcode 45009"):
            s.send(MSG)

    def test_http_500_is_a_failure(self, standin: si.StandIn, secrets_env: None) -> None:
        standin.script["/cgi-bin/webhook/send"] = [(500, {"error": "boom"})]
        with pytest.raises(DeliveryError, match="HTTP 500"):
            sender(standin.base, "wecom").send(MSG)

    def test_a_wrong_key_fails_and_the_error_shows_no_key(
        self, standin: si.StandIn, monkeypatch: pytest.MonkeyPatch, secrets_env: None
    ) -> None:
        monkeypatch.setenv("T_WECOM_KEY", "wrong-key-abc")
        with pytest.raises(DeliveryError) as err:
            sender(standin.base, "wecom").send(MSG)
        assert "errcode 93000" in str(err.value)
        assert "wrong-key-abc" not in str(err.value)

    def test_refused_connection_names_no_secret(self, secrets_env: None) -> None:
        with pytest.raises(DeliveryError) as err:
            sender("http://127.0.0.1:1", "wecom").send(MSG)
        assert si.WECOM_KEY not in str(err.value)


class TestWeComApp:
    def test_gettoken_then_send(self, standin: si.StandIn, secrets_env: None) -> None:
        s: WeComApp = sender(standin.base, "wecom-app")
        s.send(MSG)
        s.send(MSG)
        (tok,) = standin.received("/cgi-bin/gettoken")  # cached for the second message
        assert tok.query == {"corpid": si.CORP_ID, "corpsecret": si.CORP_SECRET}
        sends = standin.received("/cgi-bin/message/send")
        assert [r.query["access_token"] for r in sends] == [si.TOKEN, si.TOKEN]
        body = sends[0].json()
        assert body["agentid"] == 1000002 and body["touser"] == "@all"
        assert "北京时间" in body["text"]["content"]

    def test_an_expired_token_is_fetched_again(
        self, standin: si.StandIn, secrets_env: None
    ) -> None:
        standin.script["/cgi-bin/message/send"] = [
            (200, {"errcode": 42001, "errmsg": "access_token expired"})
        ]
        sender(standin.base, "wecom-app").send(MSG)
        assert len(standin.received("/cgi-bin/gettoken")) == 2
        assert len(standin.received("/cgi-bin/message/send")) == 2

    def test_a_bad_secret_is_a_failure(
        self, standin: si.StandIn, monkeypatch: pytest.MonkeyPatch, secrets_env: None
    ) -> None:
        monkeypatch.setenv("T_CORP_SECRET", "not-the-secret-1")
        with pytest.raises(DeliveryError, match="errcode 40001") as err:
            sender(standin.base, "wecom-app").send(MSG)
        assert "not-the-secret-1" not in str(err.value)


class TestDingTalk:
    def test_signed_markdown_is_accepted(self, standin: si.StandIn, secrets_env: None) -> None:
        s: DingTalkRobot = sender(standin.base, "ding")
        s.send(Message("标题", "正文", mentions=("13900000000",)))
        (req,) = standin.received("/robot/send")
        assert set(req.query) == {"access_token", "timestamp", "sign"}
        body = req.json()
        assert body["msgtype"] == "markdown" and body["at"]["atMobiles"] == ["13900000000"]
        assert "@13900000000" in body["markdown"]["text"]

    def test_signature_is_dingtalks(self) -> None:
        # base64(HMAC-SHA256(secret, "<ts>\n<secret>")), computed independently
        import base64
        import hashlib
        import hmac

        want = base64.b64encode(
            hmac.new(b"SECabc", b"1700000000000\nSECabc", hashlib.sha256).digest()
        ).decode()
        assert dingtalk_sign("SECabc", 1700000000000) == want

    def test_a_wrong_signing_secret_is_refused(
        self, standin: si.StandIn, monkeypatch: pytest.MonkeyPatch, secrets_env: None
    ) -> None:
        monkeypatch.setenv("T_DING_SECRET", "SECwrong")
        with pytest.raises(DeliveryError, match="errcode 310000"):
            sender(standin.base, "ding").send(MSG)


class TestWebhook:
    def test_json_with_hmac_header(self, standin: si.StandIn, secrets_env: None) -> None:
        s: Webhook = sender(standin.base, "hook")
        s.send(Message("t", "b", extra={"source": "test"}))
        (req,) = standin.received("/hook")
        assert req.json() == {"source": "test", "text": "b", "title": "t"}
        assert req.headers["x-atmfleet-signature"].startswith("sha256=")

    def test_a_refusal_is_a_failure(
        self, standin: si.StandIn, monkeypatch: pytest.MonkeyPatch, secrets_env: None
    ) -> None:
        monkeypatch.setenv("T_HOOK_SECRET", "other")
        with pytest.raises(DeliveryError, match="HTTP 401"):
            sender(standin.base, "hook").send(MSG)


class TestEmail:
    def test_starttls_auth_html_and_xlsx_attachment(
        self, tmp_path: Path, secrets_env: None
    ) -> None:
        smtp = si.Smtp(tmp_path, "starttls").start()
        try:
            s: Email = sender(
                "http://x", "mail", smtp_port=smtp.port, ca=smtp.cert, mode="starttls"
            )
            s.send(
                Message(
                    "日通报", "附件为日通报。", html="<p>开机率 99.5%</p>",
                    attachments=(Attachment("b.xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", b"PK\x03\x04xlsx"),),
                    addresses=("a@bank.example", "b@bank.example"),
                )
            )  # fmt: skip
            ((rcpt, msg),) = smtp.wait(1)
        finally:
            smtp.stop()
        assert rcpt == ["a@bank.example", "b@bank.example"]
        assert msg["Subject"] == "日通报"
        html = msg.get_body(("html",))
        assert html is not None and "开机率 99.5%" in html.get_content()
        (att,) = list(msg.iter_attachments())
        assert att.get_filename() == "b.xlsx" and att.get_content() == b"PK\x03\x04xlsx"

    def test_implicit_tls(self, tmp_path: Path, secrets_env: None) -> None:
        smtp = si.Smtp(tmp_path, "ssl").start()
        try:
            sender("http://x", "mail", smtp_port=smtp.port, ca=smtp.cert, mode="ssl").send(MSG)
            ((rcpt, _msg),) = smtp.wait(1)
        finally:
            smtp.stop()
        assert rcpt == ["ops@bank.example"]

    def test_a_wrong_password_fails_without_showing_it(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, secrets_env: None
    ) -> None:
        monkeypatch.setenv("T_SMTP_PASSWORD", "bad-pass-999")
        smtp = si.Smtp(tmp_path, "starttls").start()
        try:
            with pytest.raises(DeliveryError) as err:
                sender("http://x", "mail", smtp_port=smtp.port, ca=smtp.cert, mode="starttls").send(
                    MSG
                )
        finally:
            smtp.stop()
        assert "bad-pass-999" not in str(err.value) and "Authentication" in str(err.value)


class TestConfig:
    def test_unknown_key_names_the_field(self) -> None:
        with pytest.raises(ConfigError, match=r"channels\.w\.colour"):
            parse_config(
                {"channels": {"w": {"type": "wecom_robot", "key": {"env": "K"}, "colour": 1}}}
            )

    def test_a_recipient_naming_no_channel(self) -> None:
        with pytest.raises(
            ConfigError, match=r"recipients\.branch:B01\.0\.channel: no channel 'nope'"
        ):
            parse_config({"recipients": {"branch:B01": [{"channel": "nope"}]}})

    def test_a_secret_inline_is_refused(self) -> None:
        with pytest.raises(ConfigError, match=r"channels\.w\.key"):
            parse_config({"channels": {"w": {"type": "wecom_robot", "key": "abc"}}})

    def test_missing_secret_env_names_the_field(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("NOPE_KEY", raising=False)
        config = parse_config(
            {"channels": {"w": {"type": "wecom_robot", "key": {"env": "NOPE_KEY"}}}}
        )
        with pytest.raises(ConfigError, match=r"channels\.w\.key: environment variable NOPE_KEY"):
            build_sender("w", config.channels["w"])

    def test_receiver_needs_credentials(self) -> None:
        with pytest.raises(ConfigError, match="receiver"):
            parse_config({"receiver": {"routes": {}}})

    def test_the_example_is_valid(self) -> None:
        import yaml

        example = Path(__file__).resolve().parent.parent / "notify" / "example.yaml"
        parse_config(yaml.safe_load(example.read_text(encoding="utf-8")))


class TestPure:
    def test_backoff_is_exponential_and_capped(self) -> None:
        r = Retry(max_attempts=10, base_s=30, factor=2, max_s=600)
        assert [backoff_s(r, n) for n in (1, 2, 3, 4, 5, 6)] == [30, 60, 120, 240, 480, 600]

    def test_alert_times_read_in_beijing_time(self) -> None:
        payload = {
            "status": "firing",
            "commonLabels": {"alertname": "AtmfleetDeviceDown", "branch": "B01"},
            "alerts": [
                {
                    "status": "firing",
                    "labels": {"alertname": "AtmfleetDeviceDown", "device": "D001", "branch": "B01", "severity": "warning"},
                    "annotations": {"summary": "设备离线"},
                    "startsAt": "2026-12-01T08:03:05.123456789Z",
                    "endsAt": "0001-01-01T00:00:00Z",
                }
            ],
        }  # fmt: skip
        title, body = alertmanager.render(payload, SHANGHAI, Texts("zh-CN"))
        assert title == "[告警] AtmfleetDeviceDown 网点 B01"
        assert "开始时间：2026-12-01 16:03:05（北京时间）" in body
        assert "08:03" not in body
        assert "级别：警告" in body

    def test_english_is_available(self) -> None:
        payload = {"status": "resolved", "alerts": [{"status": "resolved", "labels": {"alertname": "X"},
                   "startsAt": "2026-12-01T23:30:00Z", "endsAt": "2026-12-02T00:10:00+00:00"}]}  # fmt: skip
        title, body = alertmanager.render(payload, SHANGHAI, Texts("en"))
        assert title == "[RESOLVED] X"
        assert "Started: 2026-12-02 07:30:00 (Beijing time)" in body
        assert "Resolved: 2026-12-02 08:10:00 (Beijing time)" in body


class TestCalendar:
    def test_first_working_day_skips_weekends_and_holidays(self) -> None:
        cal = Calendar(holidays=(date(2026, 10, 1), date(2026, 10, 2), date(2026, 10, 5)))
        # 2026-10-01 is a Thursday: 1, 2 holidays, 3-4 weekend, 5 holiday
        assert first_working_day(2026, 10, cal) == date(2026, 10, 6)
        assert first_working_day(2026, 11, Calendar()) == date(2026, 11, 2)  # 1st is a Sunday

    def test_a_makeup_working_day_counts(self) -> None:
        cal = Calendar(workdays=(date(2026, 11, 1),))
        assert first_working_day(2026, 11, cal) == date(2026, 11, 1)

    def test_due(self) -> None:
        cal = Calendar()
        assert due("monthly", date(2026, 11, 2), cal) == (True, date(2026, 11, 2))
        assert due("monthly", date(2026, 11, 3), cal)[0] is False
        assert due("quarterly", date(2026, 11, 2), cal)[0] is False
        assert due("quarterly", date(2026, 10, 1), cal) == (True, date(2026, 10, 1))


def test_no_secret_in_logs(
    standin: si.StandIn, secrets_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("wecom", "wecom-app", "ding", "hook"):
        sender(standin.base, name).send(MSG)
    standin.script["/robot/send"] = [(500, {"errmsg": si.DING_TOKEN})]
    with pytest.raises(DeliveryError) as err:
        sender(standin.base, "ding").send(MSG)
    text = caplog.text + str(err.value)
    for secret in SECRETS:
        assert secret not in text
