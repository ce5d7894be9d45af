"""Words a person reads about incidents, in Chinese (zh-CN, the default) and English."""

from __future__ import annotations

from atmfleet.errors import UsageError

LANGUAGES = ("zh-CN", "en")

_ZH: dict[str, str] = {
    "state.open": "待受理",
    "state.acknowledged": "已受理",
    "state.dispatched": "已派单",
    "state.on_site": "已到场",
    "state.restored": "已修复",
    "state.closed": "已关闭",
    "suspended": "挂起",
    "class.component": "部件故障",
    "class.cash": "钞箱",
    "class.network": "通讯",
    "class.power": "电力",
    "class.software": "软件",
    "sla.none": "无合同",
    "sla.ok": "正常",
    "sla.warning": "预警",
    "sla.breached": "超时",
    "sla.suspended": "挂起",
    "h.id": "工单",
    "h.device": "设备",
    "h.branch": "网点",
    "h.vendor": "厂商",
    "h.class": "类别",
    "h.cause": "原因",
    "h.state": "状态",
    "h.sla": "SLA",
    "h.started": "故障开始",
    "h.opened": "开单时间",
    "h.eta": "预计到场",
    "h.maintainer": "维保",
    "h.at": "时间",
    "h.event": "事件",
    "h.actor": "操作人",
    "h.detail": "说明",
    "h.allowed": "可执行操作",
    "h.repeat_of": "重复故障,前次工单",
    "none": "无工单",
}

_EN: dict[str, str] = {
    "state.open": "open",
    "state.acknowledged": "acknowledged",
    "state.dispatched": "dispatched",
    "state.on_site": "on site",
    "state.restored": "restored",
    "state.closed": "closed",
    "suspended": "suspended",
    "class.component": "component",
    "class.cash": "cash",
    "class.network": "network",
    "class.power": "power",
    "class.software": "software",
    "sla.none": "no contract",
    "sla.ok": "ok",
    "sla.warning": "warning",
    "sla.breached": "breached",
    "sla.suspended": "suspended",
    "h.id": "id",
    "h.device": "device",
    "h.branch": "branch",
    "h.vendor": "vendor",
    "h.class": "class",
    "h.cause": "cause",
    "h.state": "state",
    "h.sla": "SLA",
    "h.started": "outage start",
    "h.opened": "opened",
    "h.eta": "ETA",
    "h.maintainer": "maintainer",
    "h.at": "at",
    "h.event": "event",
    "h.actor": "actor",
    "h.detail": "detail",
    "h.allowed": "allowed actions",
    "h.repeat_of": "repeat of incident",
    "none": "no incidents",
}

_TABLES = {"zh-CN": _ZH, "en": _EN}


def words(lang: str) -> dict[str, str]:
    table = _TABLES.get(lang)
    if table is None:
        raise UsageError(f"--lang {lang!r}: allowed: {', '.join(LANGUAGES)}")
    return table
