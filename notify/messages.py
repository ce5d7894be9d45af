"""The texts a person reads in a notification, zh-CN (default) and English."""

from __future__ import annotations

from typing import Any

TEXTS: dict[str, dict[str, str]] = {
    "zh-CN": {
        "firing": "告警",
        "resolved": "已恢复",
        "alerts": "{n} 条",
        "starts": "开始时间",
        "ends": "恢复时间",
        "device": "设备",
        "branch": "网点",
        "subbranch": "二级分行",
        "severity": "级别",
        "sev.critical": "严重",
        "sev.warning": "警告",
        "sev.info": "提示",
        "local": "北京时间",
        "merged": "【汇总 {n} 条】{first}",
        "more": "…另有 {n} 条，见 atmfleet notify status",
        "incident": "故障工单 #{id}",
        "incidents": "{n} 起故障工单",
        "ev.opened": "新故障",
        "ev.sla_warning": "时限预警",
        "ev.sla_breach": "超时",
        "ev.escalation": "升级督办",
        "ev.state": "状态变更",
        "ev.acknowledged": "已受理",
        "ev.dispatched": "已派单",
        "ev.on_site": "已到场",
        "ev.suspended": "已挂起",
        "ev.resumed": "恢复处理",
        "ev.restored": "已修复",
        "ev.closed": "已关闭",
        "ev.reopened": "重新打开",
        "at": "时间",
        "class": "类别",
        "vendor": "厂商",
        "state": "状态",
        "bulletin.daily": "自助设备开机率和帐务性交易量日通报",
        "bulletin.monthly": "自助业务经营管理考核评价月通报",
        "bulletin.quarterly": "自助业务经营管理考核评价季通报",
        "bulletin.mail": "附件为 {title}（{period}）。",
        "bulletin.summary": "{title}（{period}）",
        "bulletin.attached": "完整通报见邮件附件。",
        "test.title": "atmfleet 测试消息",
        "test.body": "这是一条测试消息，发送时间 {at}。",
    },
    "en": {
        "firing": "FIRING",
        "resolved": "RESOLVED",
        "alerts": "{n} alerts",
        "starts": "Started",
        "ends": "Resolved",
        "device": "Device",
        "branch": "Branch",
        "subbranch": "Sub-branch",
        "severity": "Severity",
        "sev.critical": "critical",
        "sev.warning": "warning",
        "sev.info": "info",
        "local": "Beijing time",
        "merged": "[{n} notifications] {first}",
        "more": "... {n} more, see atmfleet notify status",
        "incident": "Incident #{id}",
        "incidents": "{n} incidents",
        "ev.opened": "Opened",
        "ev.sla_warning": "SLA warning",
        "ev.sla_breach": "SLA breached",
        "ev.escalation": "Escalation",
        "ev.state": "State change",
        "ev.acknowledged": "Acknowledged",
        "ev.dispatched": "Dispatched",
        "ev.on_site": "Technician on site",
        "ev.suspended": "Suspended",
        "ev.resumed": "Resumed",
        "ev.restored": "Restored",
        "ev.closed": "Closed",
        "ev.reopened": "Reopened",
        "at": "At",
        "class": "Class",
        "vendor": "Vendor",
        "state": "State",
        "bulletin.daily": "Daily bulletin: device uptime and financial transactions",
        "bulletin.monthly": "Monthly self-service assessment",
        "bulletin.quarterly": "Quarterly self-service assessment",
        "bulletin.mail": "Attached: {title} ({period}).",
        "bulletin.summary": "{title} ({period})",
        "bulletin.attached": "The full bulletin is attached to the e-mail.",
        "test.title": "atmfleet test message",
        "test.body": "This is a test message, sent at {at}.",
    },
}


class Texts:
    def __init__(self, lang: str) -> None:
        self.lang = lang if lang in TEXTS else "zh-CN"

    def __call__(self, key: str, **values: Any) -> str:
        text = TEXTS[self.lang].get(key) or TEXTS["zh-CN"].get(key) or key
        return text.format(**values) if values else text

    def local_label(self, tz: str) -> str:
        """What the times are in: 北京时间 for Asia/Shanghai, else the zone's name."""
        return self("local") if tz in ("Asia/Shanghai", "Asia/Chongqing", "PRC") else tz
