"""What the command CLI prints, in Chinese (zh-CN, the default) and English."""

from __future__ import annotations

from atmfleet.errors import UsageError

LANGUAGES = ("zh-CN", "en")

_ZH = {
    "queued": "已登记",
    "sent": "已下发",
    "accepted": "设备已接受",
    "done": "已完成",
    "failed": "执行失败",
    "rejected": "设备拒绝",
    "expired": "已过期",
    "restart": "重启应用",
    "out_of_service": "暂停服务",
    "in_service": "恢复服务",
    "refresh": "刷新状态",
    "journal": "提取电子日志",
    "h.id": "指令号",
    "h.device": "设备",
    "h.kind": "指令",
    "h.state": "状态",
    "h.by": "发起人",
    "h.created": "发起时间",
    "h.expires": "过期时间",
    "h.reason": "原因",
    "h.result": "结果",
    "h.history": "状态历史",
    "h.journal": "电子日志",
    "confirm": "{kind}会中断设备 {device} 的服务,确认下发?",
    "waiting": "等待设备应答(最长至 {at})……",
    "saved": "已保存 {n} 字节到 {path}(SHA-256 已校验)",
    "none": "没有指令",
    # reasons the server itself gives (a device's own reasons are shown as it sent them)
    "r.no answer by the expiry": "到期未应答",
}
_EN = {
    "queued": "queued",
    "sent": "sent",
    "accepted": "accepted",
    "done": "done",
    "failed": "failed",
    "rejected": "rejected",
    "expired": "expired",
    "restart": "restart the application",
    "out_of_service": "out of service",
    "in_service": "back in service",
    "refresh": "refresh status",
    "journal": "fetch the electronic journal",
    "h.id": "command",
    "h.device": "device",
    "h.kind": "kind",
    "h.state": "state",
    "h.by": "by",
    "h.created": "created",
    "h.expires": "expires",
    "h.reason": "reason",
    "h.result": "result",
    "h.history": "history",
    "h.journal": "journal",
    "confirm": "{kind} interrupts the service of {device}. Send it?",
    "waiting": "waiting for the device (until {at}) ...",
    "saved": "saved {n} bytes to {path} (SHA-256 checked)",
    "none": "no commands",
}


def reason(text: dict[str, str], value: str | None) -> str:
    """A reason for a person: the server's own in the chosen language, a device's as sent."""
    if not value:
        return ""
    return text.get(f"r.{value}", value)


def messages(lang: str) -> dict[str, str]:
    if lang == "zh-CN":
        return _ZH
    if lang == "en":
        return _EN
    raise UsageError(f"--lang {lang!r}: unknown language; allowed: {', '.join(LANGUAGES)}")
