"""The shipped alerting: Prometheus rules, their promtool tests, the Alertmanager routes.

Runs the real ``promtool`` and ``amtool`` (Debian's ``prometheus`` and
``prometheus-alertmanager`` packages); skipped, with the reason, where they are missing.
Also checks the rules against the metrics contract (docs/metrics.md), the collector's
actual metrics (collector/stats.py) and the runbook (docs/runbook.md).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from collector.stats import CollectorStats

ROOT = Path(__file__).resolve().parent.parent
PROM_DIR = ROOT / "exporters" / "prometheus"
RULES_FILE = PROM_DIR / "atmfleet.rules.yml"
ALERTMANAGER_FILE = PROM_DIR / "alertmanager.yml"
PROMETHEUS_FILE = PROM_DIR / "prometheus.yml"
RULE_TESTS = sorted((PROM_DIR / "tests").glob("*.yml"))
METRICS_DOC = ROOT / "docs" / "metrics.md"
RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_URL = "https://github.com/atmfleet/atmfleet/blob/main/docs/runbook.md#"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(
            f"{name} is not installed (Debian: apt-get install "
            f"{'prometheus' if name == 'promtool' else 'prometheus-alertmanager'})"
        )
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def _groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))["groups"]
    return groups


def _alerts() -> list[dict[str, Any]]:
    return [rule for group in _groups() for rule in group["rules"] if "alert" in rule]


def _recordings() -> list[dict[str, Any]]:
    return [rule for group in _groups() for rule in group["rules"] if "record" in rule]


def _duration_s(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    total = 0
    for number, unit in re.findall(r"(\d+)([smhd])", text):
        total += int(number) * units[unit]
    return total


def _github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub makes of a document's headings."""
    anchors = set()
    for line in markdown.splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(1).lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def _metric_names_in(expr: str) -> set[str]:
    """Base metric names (not recording rules, which contain ':') an expression reads."""
    return set(re.findall(r"(?<![\w:])(atmfleet_[a-z0-9_]+)(?![\w:])", expr))


class TestRulesFile:
    """The rules file is valid and every alert carries what routing and the on-call need."""

    def test_promtool_accepts_the_rules(self) -> None:
        result = _run(_tool("promtool"), "check", "rules", str(RULES_FILE))
        assert result.returncode == 0, result.stdout + result.stderr

    def test_promtool_accepts_the_example_prometheus_config(self) -> None:
        result = _run(_tool("promtool"), "check", "config", str(PROMETHEUS_FILE))
        assert result.returncode == 0, result.stdout + result.stderr

    @pytest.mark.parametrize("alert", _alerts(), ids=lambda a: a["alert"])
    def test_every_alert_has_severity_category_scope_and_the_three_annotations(
        self, alert: dict[str, Any]
    ) -> None:
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}
        assert alert["labels"]["category"] in {"availability", "cash", "monitoring", "kpi"}
        assert alert["labels"]["scope"] in {"device", "branch", "subbranch", "collector", "fleet"}
        # Device alerts may also name their incident (docs/runbook.md).
        assert set(alert["annotations"]) - {"incident"} == {"summary", "description", "runbook_url"}
        assert alert["alert"].startswith("Atmfleet")

    @pytest.mark.parametrize("alert", _alerts(), ids=lambda a: a["alert"])
    def test_every_runbook_url_points_at_a_section_of_the_runbook(
        self, alert: dict[str, Any]
    ) -> None:
        url = alert["annotations"]["runbook_url"]
        assert url == RUNBOOK_URL + alert["alert"].lower()
        assert alert["alert"].lower() in _github_anchors(RUNBOOK.read_text(encoding="utf-8"))

    @pytest.mark.parametrize("rule", _recordings(), ids=lambda r: r["record"])
    def test_recording_rules_are_named_level_metric_operation(self, rule: dict[str, Any]) -> None:
        assert re.fullmatch(r"[a-z]+:atmfleet_[a-z0-9_]+:[a-z0-9_]+", rule["record"])

    def test_device_and_branch_alerts_are_held_while_the_collector_is_impaired(self) -> None:
        gated = [
            a["alert"]
            for a in _alerts()
            if a["labels"]["category"] in {"availability", "cash"}
            and "unless on() (fleet:atmfleet_collector_impaired:bool == 1)" not in a["expr"]
        ]
        assert gated == []

    def test_a_branch_outage_alerts_before_its_devices_and_a_subbranch_before_its_branches(
        self,
    ) -> None:
        fors = {a["alert"]: _duration_s(a["for"]) for a in _alerts()}
        assert fors["AtmfleetSubbranchDown"] < fors["AtmfleetBranchDown"]
        assert fors["AtmfleetBranchDown"] < fors["AtmfleetDeviceDown"]


class TestRuleUnitTests:
    """``promtool test rules`` passes, and every alert's ``for:`` edge is tested."""

    @pytest.mark.parametrize("path", RULE_TESTS, ids=lambda p: p.name)
    def test_promtool_unit_tests_pass(self, path: Path) -> None:
        result = _run(_tool("promtool"), "test", "rules", str(path))
        assert result.returncode == 0, result.stdout + result.stderr

    def test_every_test_file_reads_the_shipped_rules_file(self) -> None:
        for path in RULE_TESTS:
            spec = yaml.safe_load(path.read_text(encoding="utf-8"))
            assert [(path.parent / f).resolve() for f in spec["rule_files"]] == [RULES_FILE]

    @pytest.mark.parametrize("alert", _alerts(), ids=lambda a: a["alert"])
    def test_each_alert_is_asserted_absent_just_before_its_edge_and_present_at_it(
        self, alert: dict[str, Any]
    ) -> None:
        """Some test case checks the alert at an evaluation time T (absent) and T + one
        evaluation interval (present), where T + interval - first true = ``for:``; the edge
        itself is proven by the case passing, here we check both sides are asserted."""
        edges = []
        for path in RULE_TESTS:
            spec = yaml.safe_load(path.read_text(encoding="utf-8"))
            step = _duration_s(spec.get("evaluation_interval", "1m"))
            for case in spec["tests"]:
                checks = [
                    c for c in case.get("alert_rule_test", []) if c["alertname"] == alert["alert"]
                ]
                absent = {_duration_s(c["eval_time"]) for c in checks if not c.get("exp_alerts")}
                present = [c for c in checks if c.get("exp_alerts")]
                for check in present:
                    at = _duration_s(check["eval_time"])
                    if at - step in absent and all(
                        "exp_annotations" in a and "exp_labels" in a for a in check["exp_alerts"]
                    ):
                        edges.append((path.name, case.get("name"), at))
        assert edges, f"no test asserts {alert['alert']} absent at T and present at T + 1 step"


class TestContract:
    """The rules read only metrics that docs/metrics.md specifies, and the collector's
    metrics they read are the ones collector/stats.py really exposes."""

    @staticmethod
    def _read_metrics() -> set[str]:
        names: set[str] = set()
        for rule in _alerts() + _recordings():
            names |= _metric_names_in(rule["expr"])
        return names

    def test_every_metric_the_rules_read_is_documented(self) -> None:
        doc = METRICS_DOC.read_text(encoding="utf-8")
        missing = sorted(n for n in self._read_metrics() if f"`{n}" not in doc)
        assert missing == []

    def test_the_collector_metrics_the_rules_read_are_the_ones_the_collector_exposes(
        self,
    ) -> None:
        exposed = set(_collector_sample_names())
        used = {n for n in self._read_metrics() if n.startswith("atmfleet_collector_")}
        assert used, "the rules read no collector metric?"
        assert sorted(used - exposed) == []

    def test_every_collector_metric_is_documented(self) -> None:
        doc = METRICS_DOC.read_text(encoding="utf-8")
        families = set(_collector_family_names())
        missing = sorted(n for n in families if f"`{n}" not in doc)
        assert missing == []


def _collector_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    stats = CollectorStats(registry)
    # Touch the labelled children so their samples exist.
    stats.stored.labels("state")
    stats.rejected.labels("invalid")
    stats.db_errors.labels("temporary")
    stats.batch_phase_seconds.labels("held")
    return registry


def _collector_sample_names() -> Iterator[str]:
    for family in _collector_registry().collect():
        for sample in family.samples:
            yield sample.name


def _collector_family_names() -> Iterator[str]:
    for family in _collector_registry().collect():
        # Counters are exposed with _total; document them under that name.
        yield family.name + ("_total" if family.type == "counter" else "")


class TestAlertmanagerConfig:
    """``amtool`` accepts the configuration, and routes each kind of alert where intended."""

    def test_amtool_accepts_the_configuration(self) -> None:
        result = _run(_tool("amtool"), "check-config", str(ALERTMANAGER_FILE))
        assert result.returncode == 0, result.stdout + result.stderr

    @pytest.mark.parametrize(
        ("labels", "receivers"),
        [
            (["severity=critical", "category=availability", "scope=branch"], "pager,team"),
            (["severity=critical", "category=monitoring", "scope=collector"], "pager,team"),
            (["severity=warning", "category=availability", "scope=device"], "team"),
            (["severity=warning", "category=cash", "scope=device"], "team"),
            (["severity=warning", "category=kpi", "scope=subbranch"], "kpi"),
            (["severity=info", "category=kpi", "scope=subbranch"], "kpi"),
        ],
    )
    def test_routes(self, labels: list[str], receivers: str) -> None:
        result = _run(
            _tool("amtool"),
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER_FILE}",
            *labels,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == receivers

    def test_every_alert_reaches_a_receiver_by_its_own_labels(self) -> None:
        for alert in _alerts():
            labels = [f"alertname={alert['alert']}"] + [
                f"{k}={v}" for k, v in sorted(alert["labels"].items())
            ]
            result = _run(
                _tool("amtool"),
                "config",
                "routes",
                "test",
                f"--config.file={ALERTMANAGER_FILE}",
                *labels,
            )
            expected = {"critical": "pager,team"}.get(alert["labels"]["severity"], "team")
            if alert["labels"]["category"] == "kpi":
                expected = "kpi"
            assert result.stdout.strip() == expected, alert["alert"]


def _doc_tables(heading_prefix: str) -> dict[str, set[str]]:
    """``{metric: label names}`` from the tables under the headings starting with
    ``heading_prefix`` in docs/metrics.md (first column a metric, third its labels)."""
    tables: dict[str, set[str]] = {}
    inside = False
    for line in METRICS_DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            inside = line.startswith(heading_prefix)
            continue
        match = re.match(r"^\| `(atmfleet_[a-z0-9_]+)` \| [a-z]+ \| ([^|]*) \|", line)
        if inside and match:
            labels = match.group(2).strip()
            tables[match.group(1)] = (
                set() if labels == "–" else {name.strip() for name in labels.split(",")}
            )
    return tables


def _example_exposition() -> str:
    text = METRICS_DOC.read_text(encoding="utf-8")
    match = re.search(r"^```text\n(.*?)^```$", text, re.S | re.M)
    assert match, "docs/metrics.md has no example exposition"
    return match.group(1)


class TestExampleExposition:
    """The example exposition in docs/metrics.md, which ``atmfleet serve`` is written to,
    agrees with the tables of the same page and passes Prometheus's naming lint."""

    def test_promtool_lints_the_example_clean(self) -> None:
        result = subprocess.run(
            [_tool("promtool"), "check", "metrics"],
            input=_example_exposition(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def test_the_example_has_exactly_the_documented_families_and_label_sets(self) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        documented = _doc_tables("## `atmfleet serve`")
        assert len(documented) > 20
        example = {
            sample.name: set(sample.labels)
            for family in text_string_to_metric_families(_example_exposition())
            for sample in family.samples
        }
        assert example == documented

    def test_each_device_has_one_state_and_up_follows_it(self) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        samples = [
            s
            for family in text_string_to_metric_families(_example_exposition())
            for s in family.samples
        ]
        states = [
            (s.labels["device"], s.labels["state"])
            for s in samples
            if s.name == "atmfleet_device_state"
        ]
        up = {s.labels["device"]: s.value for s in samples if s.name == "atmfleet_device_up"}
        assert len(states) == len(dict(states)) == len(up)
        for device, state in states:
            assert up[device] == (1.0 if state in {"in_service", "degraded"} else 0.0)

    def test_the_collector_table_matches_what_the_collector_exposes(self) -> None:
        documented = _doc_tables("## `atmfleet collect`")
        exposed: dict[str, set[str]] = {}
        for family in _collector_registry().collect():
            name = family.name + ("_total" if family.type == "counter" else "")
            labels = {k for s in family.samples for k in s.labels if k != "le"}
            exposed[name] = labels
        assert documented == exposed
