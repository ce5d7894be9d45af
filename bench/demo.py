"""How long ``make demo`` takes to be ready: ``atmfleet demo`` started as a process (as
``make demo`` starts it, with a temporary data folder), watched from outside.

    python bench/demo.py [--before CHECKOUT] [--devices 200] [--backfill-days D]
                         [--timeout 600] [--lines]

Prints the seconds from the start of the process until each readiness point:

- ``url``: the console's URL line (``web   http://…``) is printed;
- ``web``: the console answers (its login page, 200);
- ``kpis``: the console's uptime KPI of yesterday answers with a figure (logged in as
  the demo's admin, with the password the demo writes into its env file);
- ``serve``: the fleet's metrics URL answers with every device's ``atmfleet_device_state``;
- ``ready``: the last of those;

then the peak RSS (MiB) of the demo process, of its children (collector, broker), and of
the embedded PostgreSQL (its processes summed; shared memory counted in each), and the
seconds the demo took to stop after Ctrl-C (SIGINT to its process group).

With ``--before CHECKOUT`` (e.g. ``git worktree add /tmp/demo-before main``) the other
checkout's demo runs the same way first, then this one's, and both are printed side by
side. Each demo runs from its own checkout (its ``.venv`` if it has one). ``--lines``
also prints every line each demo printed, with the second it appeared (where the time
goes). The history length depends on the time of day (from yesterday's local midnight):
both runs are made within minutes, so they publish almost the same history; the
``history`` line of each is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import psutil

HERE = Path(__file__).resolve().parent.parent
POINTS = ("url", "web", "kpis", "serve", "ready")
WEB_LINE = re.compile(r"^web +(http://\S+)")
METRICS_LINE = re.compile(r"^metrics +(http://\S+/metrics) +\(the fleet")
HISTORY_LINE = re.compile(r"^history +(publishing|storing) .*")


@dataclass
class Run:
    checkout: Path
    lines: list[tuple[float, str]] = field(default_factory=list)
    points: dict[str, float] = field(default_factory=dict)
    rss: dict[str, float] = field(default_factory=dict)
    stop_s: float | None = None
    returncode: int | None = None
    history: str = ""


def python_of(checkout: Path) -> str:
    own = checkout / ".venv" / "bin" / "python"
    return str(own) if own.exists() else sys.executable


def get(url: str, opener: urllib.request.OpenerDirector | None = None) -> tuple[int, bytes]:
    try:
        with (opener or urllib.request.build_opener()).open(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except OSError:
        return 0, b""


def env_password(path: Path) -> str | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    m = re.search(r"^export ATMFLEET_DEMO_WEB_PASSWORD=(\S+)$", text, re.M)
    return m[1].strip("'") if m else None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_args: object, **_kw: object) -> None:
        return None


def kpis_answer(base: str, password: str, day: str) -> bool:
    """Log in as the demo admin; True when yesterday's uptime KPI has a figure. (The
    session cookie is marked Secure, which a browser sends to 127.0.0.1 over plain HTTP
    and urllib's cookie jar does not: it is sent by hand.)"""
    import json

    form = urllib.parse.urlencode({"username": "demo", "password": password, "next": "/wall"})
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(base + "login", data=form.encode(), timeout=10) as resp:
            headers = resp.headers
    except urllib.error.HTTPError as exc:
        headers = exc.headers
    except OSError:
        return False
    cookie = headers.get("set-cookie", "").split(";", 1)[0]
    if not cookie:
        return False
    request = urllib.request.Request(f"{base}api/kpi/uptime?from={day}&to={day}")
    request.add_header("Cookie", cookie)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            report = json.loads(resp.read())
    except OSError:
        return False
    total = report.get("total") or {}
    return bool(report.get("rows")) and total.get("uptime") is not None


def sample_rss(proc: psutil.Process, data: Path, rss: dict[str, float]) -> None:
    now = {"demo": 0.0, "children": 0.0, "postgres": 0.0}
    try:
        now["demo"] = proc.memory_info().rss
        kids = proc.children(recursive=True)
    except psutil.Error:
        return
    pids = {proc.pid}
    for k in kids:
        pids.add(k.pid)
        with contextlib.suppress(psutil.Error):
            now["children"] += k.memory_info().rss
    for p in psutil.process_iter(["name", "cmdline"]):
        if p.pid in pids:
            continue
        try:
            cmd = p.info["cmdline"] or []
            if p.info["name"] == "postgres" and (
                any(str(data) in part for part in cmd) or (p.ppid() > 1 and _pg_child(p, data))
            ):
                now["postgres"] += p.memory_info().rss
        except psutil.Error:
            pass
    for part, v in now.items():
        rss[part] = max(rss.get(part, 0.0), v / 2**20)
    rss["total"] = max(rss.get("total", 0.0), sum(now.values()) / 2**20)


def _pg_child(p: psutil.Process, data: Path) -> bool:
    try:
        parent = p.parent()
        return parent is not None and any(str(data) in part for part in parent.cmdline())
    except psutil.Error:
        return False


def run_demo(checkout: Path, args: argparse.Namespace) -> Run:
    run = Run(checkout)
    tmp = Path(tempfile.mkdtemp(prefix="atmfleet-bench-demo-"))
    data = tmp / "demo"
    cmd = [python_of(checkout), "-m", "app.cli", "demo", "--data-dir", str(data),
           "--devices", str(args.devices), "--web-port", "0", "--metrics-port", "0"]  # fmt: skip
    if args.backfill_days is not None:
        cmd += ["--backfill-days", str(args.backfill_days)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATMFLEET_")}
    env["PYTHONUNBUFFERED"] = "1"
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=checkout, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    ps = psutil.Process(proc.pid)
    found: dict[str, str] = {}

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            run.lines.append((time.monotonic() - t0, line))
            if (m := WEB_LINE.match(line)) and "web" not in found:
                found["web"] = m[1]
                run.points["url"] = time.monotonic() - t0
            if (m := METRICS_LINE.match(line)) and "metrics" not in found:
                found["metrics"] = m[1]
            if HISTORY_LINE.match(line) and not run.history:
                run.history = line

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    tz = ZoneInfo("Asia/Shanghai")
    day = (datetime.now(UTC).astimezone(tz).date() - timedelta(days=1)).isoformat()
    deadline = t0 + args.timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            sample_rss(ps, data, run.rss)
            base = found.get("web")
            if base and "web" not in run.points and get(base + "login")[0] == 200:
                run.points["web"] = time.monotonic() - t0
            if base and "kpis" not in run.points:
                password = env_password(data / "env.sh")
                if password and kpis_answer(base, password, day):
                    run.points["kpis"] = time.monotonic() - t0
            metrics = found.get("metrics")
            if metrics and "serve" not in run.points:
                status, body = get(metrics)
                up = body.decode(errors="replace").count("\natmfleet_device_state{")
                if status == 200 and up >= args.devices:
                    run.points["serve"] = time.monotonic() - t0
            if all(p in run.points for p in POINTS[:-1]):
                run.points["ready"] = max(run.points.values())
                break
            time.sleep(0.2)
    finally:
        stop_at = time.monotonic()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            while proc.poll() is None and time.monotonic() < stop_at + 180:
                sample_rss(ps, data, run.rss)
                time.sleep(0.2)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        run.stop_s = time.monotonic() - stop_at
        run.returncode = proc.returncode
        reader.join(10)
        shutil.rmtree(tmp, ignore_errors=True)
    return run


def fmt(v: float | None, spec: str = ".1f") -> str:
    return "–" if v is None else format(v, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="another checkout (e.g. of main)")
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--backfill-days", type=float, default=None)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--lines", action="store_true", help="print each demo's output, timed")
    args = parser.parse_args()
    runs: list[tuple[str, Run]] = []
    if args.before is not None:
        runs.append(("before", run_demo(args.before.resolve(), args)))
    runs.append(("after", run_demo(HERE, args)))
    for name, run in runs:
        print(f"{name}: {run.checkout} (exit {run.returncode}) {run.history.strip()}")
        if args.lines:
            for t, line in run.lines:
                print(f"  {t:7.1f}  {line[:150]}")
    print()
    names = [n for n, _ in runs]
    print(f"{'seconds to':<22}" + "".join(f"{n:>10}" for n in names) +
          ("     ratio" if len(runs) == 2 else ""))  # fmt: skip
    for point in POINTS:
        vals = [r.points.get(point) for _, r in runs]
        ratio = ""
        if len(vals) == 2 and vals[0] is not None and vals[1]:
            ratio = f"{vals[0] / vals[1]:>9.1f}x"
        print(f"  {point:<20}" + "".join(f"{fmt(v):>10}" for v in vals) + ratio)
    print(f"  {'stop after Ctrl-C':<20}" + "".join(f"{fmt(r.stop_s):>10}" for _, r in runs))
    print("peak RSS, MiB")
    for part in ("demo", "children", "postgres", "total"):
        print(f"  {part:<20}" + "".join(f"{fmt(r.rss.get(part), '.0f'):>10}" for _, r in runs))
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
