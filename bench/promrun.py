"""A Prometheus of our own for a benchmark: the shipped rules, a config scraping the given
targets, its data in the caller's folder, and what its HTTP API says about one round of
the rules (the pieces ``bench/fleet.py`` wrote inline, for scripts that need them too).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = ROOT / "exporters" / "prometheus"


def shipped_environment(root: Path = ROOT) -> dict[str, str]:
    """The ``Environment=`` settings of the systemd drop-in shipped for Debian's
    ``prometheus.service`` (``deploy/prometheus/atmfleet.conf``, e.g. ``GOMEMLIMIT``) in
    the checkout at ``root``: what a user's Prometheus runs with, so a benchmark's too.
    Empty for a checkout that ships none."""
    path = root / "deploy" / "prometheus" / "atmfleet.conf"
    out: dict[str, str] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("Environment="):
                for item in shlex.split(line.removeprefix("Environment=")):
                    key, _, value = item.partition("=")
                    out[key] = value
    return out


def rules_files(folder: Path = RULES_DIR) -> list[Path]:
    """The shipped rule files (``exporters/prometheus/*.rules.yml``; or those of
    ``folder``, another checkout's)."""
    return sorted(folder.glob("*.rules.yml"))


def write_config(
    folder: Path,
    jobs: dict[str, list[int]],
    *,
    scrape_interval: str = "30s",
    scrape_timeout: str = "25s",
    evaluation_interval: str = "15s",
    rules_dir: Path = RULES_DIR,
) -> Path:
    """``prometheus.yml`` in ``folder`` scraping 127.0.0.1:PORT for each job's ports, with
    copies of the shipped rule files (``rules_dir``'s) beside it; returns its path."""
    names = []
    for path in rules_files(rules_dir):
        shutil.copy(path, folder / path.name)
        names.append(path.name)
    lines = [
        "global:",
        f"  scrape_interval: {scrape_interval}",
        f"  scrape_timeout: {scrape_timeout}",
        f"  evaluation_interval: {evaluation_interval}",
        "rule_files:",
        *(f"  - {name}" for name in names),
        "scrape_configs:",
    ]
    for job, ports in jobs.items():
        targets = ", ".join(f'"127.0.0.1:{p}"' for p in ports)
        lines += [f"  - job_name: {job}", "    static_configs:", f"      - targets: [{targets}]"]
    path = folder / "prometheus.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def binary() -> str:
    found = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(found).exists():
        raise RuntimeError("prometheus is not installed (apt-get install prometheus)")
    return found


def start(folder: Path, config: Path, port: int) -> subprocess.Popen[bytes]:
    """Prometheus on 127.0.0.1:``port`` with its data and log in ``folder``, and the
    environment the shipped drop-in sets (:func:`shipped_environment`)."""
    log = (folder / "prometheus.log").open("wb")
    return subprocess.Popen(
        [
            binary(),
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        cwd=folder,
        env={**os.environ, **shipped_environment()},
        stdout=log,
        stderr=log,
    )


def api(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as resp:
        return json.load(resp)["data"]


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def instant(text: str) -> datetime | None:
    """An RFC 3339 time of the API (nanoseconds cut to microseconds); None for Go's zero
    time (never happened)."""
    if not text or text.startswith("0001-"):
        return None
    head, _, frac = text.rstrip("Z").partition(".")
    digits = "".join(c for c in frac if c.isdigit())[:6].ljust(6, "0")
    return datetime.fromisoformat(f"{head}.{digits}").replace(tzinfo=UTC)


@dataclass(frozen=True)
class Scrape:
    """A target's last successful scrape: when it ended and how long it took."""

    job: str
    ended: datetime
    seconds: float


def last_good_scrape(port: int, job: str) -> Scrape | None:
    """The last scrape of ``job``'s target if it succeeded (health up), else None (also
    while a busy Prometheus does not answer in time)."""
    try:
        targets = api(port, "/api/v1/targets")["activeTargets"]
    except OSError:
        return None
    for t in targets:
        if t["labels"].get("job") != job or t.get("health") != "up":
            continue
        at = instant(t.get("lastScrape", ""))
        if at is None:
            continue
        seconds = float(t.get("lastScrapeDuration", 0.0))
        ended = datetime.fromtimestamp(at.timestamp() + seconds, UTC)
        return Scrape(job, ended, seconds)
    return None


@dataclass(frozen=True)
class Group:
    """One rule group's last evaluation."""

    name: str
    file: str
    evaluated: datetime | None
    seconds: float
    rules: int
    errors: int


def groups(port: int) -> list[Group]:
    out = []
    for g in api(port, "/api/v1/rules")["groups"]:
        out.append(
            Group(
                name=g["name"],
                file=Path(g.get("file", "")).name,
                evaluated=instant(g.get("lastEvaluation", "")),
                seconds=float(g.get("evaluationTime", 0.0)),
                rules=len(g.get("rules", [])),
                errors=sum(1 for r in g.get("rules", []) if r.get("health") == "err"),
            )
        )
    return out


def round_after(port: int, after: datetime) -> list[Group] | None:
    """Every group's last evaluation if all of them began after ``after`` (one round of
    the rules on what was scraped by then), else None (also while a busy Prometheus does
    not answer in time)."""
    try:
        got = groups(port)
    except OSError:
        return None
    if not got or any(g.evaluated is None or g.evaluated <= after for g in got):
        return None
    return got
