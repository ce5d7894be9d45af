"""Serialise the dashboards: sorted, indented JSON with stable uids and panel ids.

``render`` is pure (a dashboard in, the file's text out); ``write`` puts every file in a
folder atomically (a temp file beside the target, then a rename); ``queries`` lists what
each panel and variable asks its data source, for the proofs.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model

from dashboards.catalog import DASHBOARDS

#: Where the generated JSON is committed (and where provisioning points Grafana).
DEFAULT_DIR = Path(__file__).resolve().parent / "json"


def to_dict(board: model.Dashboard) -> dict[str, Any]:
    """The dashboard as plain JSON data, panels numbered 1.. in layout order."""
    for number, panel in enumerate(board.panels or [], start=1):
        panel.id_val = number
    data: dict[str, Any] = json.loads(json.dumps(board, cls=JSONEncoder))
    return data


def render(board: model.Dashboard) -> str:
    return json.dumps(to_dict(board), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def rendered() -> dict[str, str]:
    """File name → text of every dashboard."""
    return {f"{name}.json": render(make()) for name, make in DASHBOARDS.items()}


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write(folder: Path, files: Mapping[str, str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in sorted(files.items()):
        path = folder / name
        _write_atomic(path, text)
        paths.append(path)
    return paths


def differences(folder: Path, files: Mapping[str, str]) -> list[str]:
    """Names of the files in ``folder`` that are missing, differ, or are not generated."""
    diff = [n for n, t in sorted(files.items()) if not (folder / n).is_file()
            or (folder / n).read_bytes() != t.encode("utf-8")]  # fmt: skip
    extra = sorted(p.name for p in folder.glob("*.json") if p.name not in files)
    return diff + extra


@dataclass(frozen=True)
class Query:
    """One query a dashboard sends: where it is, which language, the text, how."""

    dashboard: str
    where: str  # panel title, or "variable <name>"
    language: str  # "promql" | "sql"
    text: str
    instant: bool = False


def queries(doc: Mapping[str, Any]) -> Iterator[Query]:
    uid = doc["uid"]
    for var in doc.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            yield Query(uid, f"variable {var['name']}", "sql", var["query"])
    for panel in doc.get("panels", []):
        for target in panel.get("targets", []):
            if "expr" in target:
                yield Query(
                    uid, panel["title"], "promql", target["expr"], bool(target.get("instant"))
                )
            elif "rawSql" in target:
                yield Query(uid, panel["title"], "sql", target["rawSql"])
            else:
                raise ValueError(f"{uid}: panel {panel['title']!r}: a target of unknown kind")
