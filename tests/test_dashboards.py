"""Dashboards as code: generated, current, valid for Grafana 11.6, wired to the provisioning.

No Grafana is needed: the committed JSON is compared with a fresh generation, validated by a
round trip through grafana-foundation-sdk's typed models, and its queries are expanded the
way Grafana expands them (the proof that they return data is test_dashboards_proof.py).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from app.cli import cli
from atmfleet.errors import UsageError
from dashboards.build import DEFAULT_DIR, differences, queries, rendered, write
from dashboards.catalog import DASHBOARDS
from dashboards.expand import expand_promql, expand_sql
from dashboards.panels import POSTGRES, PROMETHEUS
from dashboards.schema import roundtrip

ROOT = Path(__file__).resolve().parent.parent
PROVISIONING = ROOT / "dashboards" / "provisioning"


def _docs() -> dict[str, dict[str, Any]]:
    return {name: json.loads(text) for name, text in rendered().items()}


class TestTheCommittedJsonIsGenerated:
    """CI fails when dashboards/json differs from what the code generates."""

    def test_regenerating_into_a_temporary_folder_gives_the_committed_bytes(
        self, tmp_path: Path
    ) -> None:
        result = CliRunner().invoke(cli, ["dashboards", "build", "--out", str(tmp_path)])
        assert result.exit_code == 0, result.output
        fresh = sorted(p.name for p in tmp_path.glob("*.json"))
        assert fresh == sorted(p.name for p in DEFAULT_DIR.glob("*.json"))
        for name in fresh:
            assert (tmp_path / name).read_bytes() == (DEFAULT_DIR / name).read_bytes(), name

    def test_check_passes_on_a_current_folder_and_names_a_stale_file(self, tmp_path: Path) -> None:
        write(tmp_path, rendered())
        ok = CliRunner().invoke(cli, ["dashboards", "build", "--check", "--out", str(tmp_path)])
        assert ok.exit_code == 0, ok.output
        (tmp_path / "vendors.json").write_text("{}\n")
        (tmp_path / "hand-made.json").write_text("{}\n")
        stale = CliRunner().invoke(cli, ["dashboards", "build", "--check", "--out", str(tmp_path)])
        assert stale.exit_code == 2
        assert "vendors.json, hand-made.json" in stale.output

    def test_generation_is_deterministic_sorted_and_indented(self) -> None:
        first, second = rendered(), rendered()
        assert first == second
        for text in first.values():
            assert (
                text
                == json.dumps(json.loads(text), sort_keys=True, indent=2, ensure_ascii=False) + "\n"
            )

    def test_differences_lists_nothing_for_the_committed_folder(self) -> None:
        assert differences(DEFAULT_DIR, rendered()) == []


class TestUidsAndIds:
    def test_every_dashboard_has_a_stable_unique_uid(self) -> None:
        uids = {name: doc["uid"] for name, doc in _docs().items()}
        assert uids == {
            "branches.json": "atmfleet-branches",
            "collector-health.json": "atmfleet-collector",
            "device-detail.json": "atmfleet-device",
            "fleet-overview.json": "atmfleet-fleet",
            "low-yield.json": "atmfleet-lowyield",
            "vendors.json": "atmfleet-vendors",
        }

    def test_panels_are_numbered_from_one_without_overlap(self) -> None:
        for name, doc in _docs().items():
            panels = doc["panels"]
            assert [p["id"] for p in panels] == list(range(1, len(panels) + 1)), name
            cells: set[tuple[int, int]] = set()
            for p in panels:
                g = p["gridPos"]
                mine = {
                    (x, y)
                    for x in range(g["x"], g["x"] + g["w"])
                    for y in range(g["y"], g["y"] + g["h"])
                }
                assert not cells & mine, f"{name}: {p['title']!r} overlaps another panel"
                assert g["x"] + g["w"] <= 24
                cells |= mine


class TestValidAgainstTheGrafanaModel:
    """The SDK's typed models (generated from Grafana 11.6's schema) decode every file and
    encode it back unchanged: no key outside the schema, no value of the wrong shape."""

    @pytest.mark.parametrize("name", sorted(DASHBOARDS))
    def test_round_trip_through_the_typed_models_is_the_identity(self, name: str) -> None:
        doc = json.loads((DEFAULT_DIR / f"{name}.json").read_text("utf-8"))
        assert roundtrip(doc) == doc

    def test_an_unknown_key_does_not_survive_the_round_trip(self) -> None:
        doc = json.loads((DEFAULT_DIR / "vendors.json").read_text("utf-8"))
        doc["panels"][0]["colour"] = "red"
        assert roundtrip(doc) != doc

    def test_a_query_of_an_unknown_data_source_type_is_refused(self) -> None:
        doc = json.loads((DEFAULT_DIR / "vendors.json").read_text("utf-8"))
        doc["panels"][0]["datasource"] = {"type": "mysql", "uid": "x"}
        for t in doc["panels"][0]["targets"]:
            t["datasource"] = {"type": "mysql", "uid": "x"}
        with pytest.raises(ValueError, match="no known data source type"):
            roundtrip(doc)


class TestProvisioning:
    def test_the_data_sources_have_the_uids_and_types_the_panels_reference(self) -> None:
        config = yaml.safe_load((PROVISIONING / "datasources" / "atmfleet.yaml").read_text("utf-8"))
        provisioned = {(d["uid"], d["type"]) for d in config["datasources"]}
        assert provisioned == {
            (PROMETHEUS.uid, PROMETHEUS.type_val),
            (POSTGRES.uid, POSTGRES.type_val),
        }
        used = set()
        for doc in _docs().values():
            for p in doc["panels"]:
                used.add((p["datasource"]["uid"], p["datasource"]["type"]))
                used |= {(t["datasource"]["uid"], t["datasource"]["type"]) for t in p["targets"]}
            for v in doc["templating"].get("list", []):
                used.add((v["datasource"]["uid"], v["datasource"]["type"]))
        assert used == provisioned

    def test_postgres_is_read_through_a_member_of_the_read_only_role_without_a_password_in_the_file(
        self,
    ) -> None:
        config = yaml.safe_load((PROVISIONING / "datasources" / "atmfleet.yaml").read_text("utf-8"))
        pg = next(d for d in config["datasources"] if d["uid"] == POSTGRES.uid)
        assert pg["user"] == "${ATMFLEET_GRAFANA_DB_USER}"
        assert pg["secureJsonData"]["password"] == "${ATMFLEET_GRAFANA_DB_PASSWORD}"

    def test_the_provider_reads_the_folder_the_docs_mount_the_json_at(self) -> None:
        config = yaml.safe_load((PROVISIONING / "dashboards" / "atmfleet.yaml").read_text("utf-8"))
        (provider,) = config["providers"]
        assert provider["type"] == "file"
        assert provider["options"]["path"] == "/var/lib/grafana/dashboards/atmfleet"
        docs = (ROOT / "docs" / "dashboards.md").read_text("utf-8")
        assert "dashboards/json:/var/lib/grafana/dashboards/atmfleet" in docs


class TestEveryQueryIsOfAKnownKind:
    def test_each_panel_target_and_query_variable_is_listed(self) -> None:
        for doc in _docs().values():
            listed = list(queries(doc))
            targets = sum(len(p["targets"]) for p in doc["panels"])
            variables = len(doc["templating"].get("list", []))
            assert len(listed) == targets + variables


START = datetime(2026, 11, 28, 0, 0, tzinfo=UTC)
END = datetime(2026, 11, 28, 6, 0, tzinfo=UTC)


class TestExpandingSql:
    """Grafana 11's PostgreSQL macros and variable formats, as the proofs apply them."""

    def test_time_filter_with_a_nested_call(self) -> None:
        out = expand_sql("WHERE $__timeFilter(presence_at(will, ts, received_at))", {}, START, END)
        assert out == (
            "WHERE presence_at(will, ts, received_at) BETWEEN "
            "'2026-11-28T00:00:00+00:00' AND '2026-11-28T06:00:00+00:00'"
        )

    def test_time_group_alias_buckets_in_seconds_named_time(self) -> None:
        out = expand_sql("SELECT $__timeGroupAlias(ts, '5m'), 1", {}, START, END)
        assert out == 'SELECT floor(extract(epoch from ts)/300)*300 AS "time", 1'

    def test_time_from_and_to(self) -> None:
        out = expand_sql("$__timeFrom() - INTERVAL '7 days' .. $__timeTo()", {}, START, END)
        assert (
            out == "'2026-11-28T00:00:00+00:00' - INTERVAL '7 days' .. '2026-11-28T06:00:00+00:00'"
        )

    def test_sqlstring_quotes_every_value_and_doubles_quotes(self) -> None:
        out = expand_sql("IN (${b:sqlstring})", {"b": ["B1", "O'Hara"]}, START, END)
        assert out == "IN ('B1','O''Hara')"

    def test_an_unknown_macro_or_a_variable_without_values_is_an_error(self) -> None:
        with pytest.raises(UsageError, match="timeEpoch"):
            expand_sql("$__timeEpoch(ts)", {}, START, END)
        with pytest.raises(UsageError, match="'b' has no value"):
            expand_sql("${b:sqlstring}", {}, START, END)
        with pytest.raises(UsageError, match=r"\$branch"):
            expand_sql("branch = $branch", {}, START, END)


class TestExpandingPromql:
    def test_regex_of_one_value_and_of_several(self) -> None:
        assert expand_promql('x{a=~"${a:regex}"}', {"a": ["S.1"]}, "1m") == 'x{a=~"S\\.1"}'
        assert expand_promql('x{a=~"${a:regex}"}', {"a": ["S1", "S2"]}, "1m") == 'x{a=~"(S1|S2)"}'

    def test_interval_macros(self) -> None:
        assert expand_promql("rate(x[$__rate_interval])", {}, "2m") == "rate(x[2m])"
