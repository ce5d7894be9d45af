"""The cost curve: how the reports, the scrape and a round of the rules grow with the fleet.

    python bench/cost_curve.py [--devices 1000,10000,100000] [--out FILE.json]
                               [--paths uptime,low-yield,bulletin,scrape,rules]
                               [--admin-url postgresql://postgres@127.0.0.1/postgres]
    python bench/cost_curve.py --show FILE.json      # the table of a saved run

For each fleet size, through the real commands run as processes (this checkout's
``atmfleet``; seconds are wall time of the process, peak RSS its ``ru_maxrss`` as a
small launcher sees it, see ``LAUNCH``;
``atmfleet kpi --help``, best of three, is timed too: the start-up every command's
seconds include):

1. ``atmfleet kpi uptime --date D`` (one local day);
2. ``atmfleet kpi low-yield --date D`` (30 days), once with D not yet kept, once again
   with all 30 days kept (the first run keeps D); then the daily case: D-1 evaluated
   first as the morning before did (``kpi low-yield --date D-1`` with D-1 not kept, not
   timed: it keeps D-1 and the sums of the windows it completes), then D, not kept;
3. ``atmfleet bulletin daily --date D --format all`` (xlsx, csv, html, json), in that
   daily case too (D-1 evaluated the morning before, D not kept);

on a throw-away database filled as ``bench/kpi_db.py`` fills it (the inventory, three
local days of state runs around D, 30 days of txn_daily, the 29 kept closed days before
D). Before 1, the first 2 and 3, the days from D on are removed from the kept days, so
each starts from the same store. Then, on a second throw-away database filled as
``bench/scrape.py`` fills it (relative to now, as ``serve`` reads: today's state runs,
each device's newest sample, last wills, transactions, yesterday not yet kept):

4. ``atmfleet serve`` on a free port: the time from its start until the first full
   refresh is on show (the exposition holds the device rows and every costlier part,
   ``atmfleet_exporter_part_timestamp_seconds``), then one plain GET /metrics, timed,
   its bytes and samples;
5. a Prometheus of our own (``bench/promrun.py``: the shipped
   ``exporters/prometheus/*.rules.yml``, its data in a temporary folder) scraping that
   serve: once every rule group has been evaluated after a successful scrape, each
   group's ``evaluationTime`` from /api/v1/rules (the round is their sum) and
   Prometheus's peak RSS.

The fills are not timed. It prints one table, a row per path and a column per fleet
size, and the growth per 10x of devices between neighbouring sizes (10.0 = linear; a
smaller figure, fixed costs such as the interpreter's start; a larger one, worse than
linear). ``--out`` saves the raw figures as JSON. Databases are dropped and processes
stopped at the end, also on Ctrl-C or an error. The machine may be shared: the load
average is printed and saved with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import itertools
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parent.parent
PATHS = ("uptime", "low-yield", "bulletin", "scrape", "rules")
#: The costlier parts serve computes apart from the device rows (docs/metrics.md); the
#: first full refresh is done when all are on show.
FULL_PARTS = frozenset({"day", "low_yield", "resource_warning"})
WAIT_S = 1800.0  # longest wait for any one event (100,000 devices on a loaded machine)

#: (key, label) of the table's rows, in order.
ROWS = (
    ("startup", "0. kpi --help (start-up only)"),
    ("uptime", "1. kpi uptime, one day"),
    ("lowyield_first", "2. kpi low-yield 30 d, D not kept"),
    ("lowyield_kept", "   kpi low-yield 30 d, all kept"),
    ("lowyield_next", "   kpi low-yield 30 d, D not kept, D-1 evaluated"),
    ("bulletin", "3. bulletin daily, 4 formats"),
    ("serve_full", "4. serve: start to first full"),
    ("scrape", "   serve: GET /metrics"),
    ("exposition", "   exposition MB, samples"),
    ("rules", "5. Prometheus: one rule round"),
    ("rules_longest", "   longest group"),
    ("prom_scrape", "   Prometheus's scrape of serve"),
)


class BenchError(RuntimeError):
    """A command failed, or an awaited event did not happen in time."""


# -- the table (pure; tests/test_cost_curve.py) -------------------------------------------


def parse_devices(text: str) -> list[int]:
    """``1000,10000`` -> [1000, 10000]: positive, strictly increasing."""
    counts = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    if not counts or any(n <= 0 for n in counts) or counts != sorted(set(counts)):
        raise argparse.ArgumentTypeError(f"positive increasing device counts, not {text!r}")
    return counts


def parse_paths(text: str) -> list[str]:
    paths = [x.strip() for x in text.split(",") if x.strip()]
    unknown = sorted(set(paths) - set(PATHS))
    if not paths or unknown:
        raise argparse.ArgumentTypeError(f"paths among {', '.join(PATHS)}, not {text!r}")
    return paths


def per_10x(a: float | None, b: float | None, na: int, nb: int) -> float | None:
    """How much ``b`` (at ``nb`` devices) is of ``a`` (at ``na``), scaled to a 10x step:
    10.0 is linear growth. None without both figures (no data is no ratio)."""
    if a is None or b is None or a <= 0 or b <= 0 or nb <= na:
        return None
    return float((b / a) ** (1.0 / math.log10(nb / na)))


def _main_figure(key: str, cell: dict[str, Any] | None) -> float | None:
    if not cell or cell.get("error"):
        return None
    value = cell.get("bytes") if key == "exposition" else cell.get("seconds")
    return None if value is None else float(value)


def format_cell(key: str, cell: dict[str, Any] | None) -> str:
    if not cell:
        return "–"
    if cell.get("error"):
        return "failed"
    if key == "exposition":
        if cell.get("bytes") is None:
            return "–"
        return f"{cell['bytes'] / 1e6:.1f} MB {cell.get('samples', 0):,}"
    seconds = cell.get("seconds")
    text = "–" if seconds is None else f"{seconds:.{3 if seconds < 1 else 2}f} s"
    if cell.get("rss_mib") is not None:
        text += f" {cell['rss_mib']:,.0f} MiB"
    return text


#: The commands whose seconds include the start-up (row 0): their growth is also shown net
#: of it.
NET_OF_STARTUP = frozenset(
    {"uptime", "lowyield_first", "lowyield_kept", "lowyield_next", "bulletin"}
)
RATIO_W = 20


def table(counts: Sequence[int], results: dict[int, dict[str, dict[str, Any]]]) -> str:
    """One row per path, a column per fleet size (seconds, peak RSS), and the growth per
    10x of devices between neighbouring sizes (for the commands also net of the start-up
    of row 0, when it was timed)."""
    width = max(
        22, *(len(format_cell(k, results.get(n, {}).get(k))) + 2 for n in counts for k, _ in ROWS)
    )
    label_w = max(len(label) for _, label in ROWS)
    steps = list(itertools.pairwise(counts))
    head = f"{'devices':<{label_w}}" + "".join(f"{n:>{width},}" for n in counts)
    head += "".join(f"{'x per 10x ' + _short(a) + '→' + _short(b):>{RATIO_W}}" for a, b in steps)
    lines = [head]
    startup = [_main_figure("startup", results.get(n, {}).get("startup")) for n in counts]
    for key, label in ROWS:
        cells = [results.get(n, {}).get(key) for n in counts]
        if all(c is None for c in cells):
            continue
        line = f"{label:<{label_w}}" + "".join(f"{format_cell(key, c):>{width}}" for c in cells)
        figures = [_main_figure(key, c) for c in cells]
        for i, (a, b) in enumerate(steps):
            r = per_10x(figures[i], figures[i + 1], a, b)
            text = "–" if r is None else f"{r:.1f}"
            if key in NET_OF_STARTUP and r is not None:
                net = per_10x(
                    _minus(figures[i], startup[i]), _minus(figures[i + 1], startup[i + 1]), a, b
                )
                if net is not None:
                    text += f" (net {net:.1f})"
            line += f"{text:>{RATIO_W}}"
        lines.append(line)
    return "\n".join(lines)


def _minus(value: float | None, fixed: float | None) -> float | None:
    if value is None or fixed is None:
        return None
    return value - fixed


def _short(n: int) -> str:
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


# -- processes -----------------------------------------------------------------------------


def atmfleet() -> list[str]:
    """The command as installed beside this interpreter, else the module."""
    script = Path(sys.executable).with_name("atmfleet")
    return [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]


def command_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATMFLEET_")}
    env["ATMFLEET_DATABASE_URL"] = url
    return env


def tail(path: Path, lines: int = 6) -> str:
    if not path.exists():
        return ""
    return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])


#: Runs ARGV and writes its peak RSS (KiB) to the file named first. A child's own
#: ``ru_maxrss`` would not do: Linux carries the parent's high-water mark over a
#: vfork+exec (what ``subprocess`` does), so a child of this process, whose peak holds a
#: whole fill, would report at least that (411 MiB for ``atmfleet kpi --help`` under a
#: parent that had touched 400 MiB, 53 MiB through this). ``python -S`` adds ~10 MiB.
LAUNCH = (
    "import os, sys\n"
    "pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def timed(args: list[str], url: str, log: Path) -> dict[str, Any]:
    """Run ``atmfleet ARGS``: wall seconds, its peak RSS (MiB), and the error if it failed."""
    load = os.getloadavg()[0]
    rss_file = log.with_suffix(".maxrss")
    argv = [sys.executable, "-S", "-c", LAUNCH, str(rss_file), *atmfleet(), *args]
    with log.open("wb") as out:
        t = time.perf_counter()
        proc = subprocess.Popen(
            argv, env=command_env(url), cwd=ROOT, stdout=out, stderr=out, start_new_session=True
        )
        try:
            proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the command
            proc.wait()
            raise
        took = time.perf_counter() - t
    rss = int(rss_file.read_text()) / 1024 if rss_file.exists() else None
    cell: dict[str, Any] = {
        "command": "atmfleet " + " ".join(args),
        "seconds": took,
        "rss_mib": rss,
        "load": load,
    }
    if proc.returncode != 0:
        cell["error"] = f"exit {proc.returncode}: {tail(log)}"
    return cell


def peak_rss_mib(pid: int) -> float | None:
    """A running process's peak resident set so far (VmHWM), MiB."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def until(
    check: Callable[[], Any],
    what: str,
    alive: subprocess.Popen[bytes],
    log: Path,
    every_s: float = 0.5,
    timeout_s: float = WAIT_S,
) -> Any:
    """Poll ``check`` until it returns something true (the event), while ``alive`` runs."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        if alive.poll() is not None:
            raise BenchError(f"{what}: the process exited ({alive.returncode}): {tail(log)}")
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(every_s)


@contextlib.contextmanager
def running(
    args: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=out)
    try:
        yield proc
    finally:
        stop(proc)


# -- the paths -----------------------------------------------------------------------------


@contextlib.contextmanager
def upgraded_database(admin_url: str, timezone: str) -> Iterator[str]:
    """A throw-away plain-PostgreSQL database with the current schema, even on a server
    where TimescaleDB is preloaded (the fills write txn_daily, a table only there)."""
    import psycopg
    from scratch import scratch_database

    from atmfleet.store.migrate import Flavour, upgrade

    with scratch_database(admin_url) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            upgrade(conn, timezone=timezone, flavour=Flavour.POSTGRES)
        yield url


def kpi_paths(
    n: int, admin_url: str, paths: list[str], tmp: Path, out: dict[str, dict[str, Any]]
) -> None:
    """Paths 1-3 at ``n`` devices, their figures put in ``out`` as they come."""
    import psycopg
    from kpi_db import DAY, fill, keep_days

    from rules.config import load_rules
    from rules.feed import Feed

    rules = load_rules()
    day = DAY.isoformat()

    def reset(conn: psycopg.Connection) -> None:
        conn.execute("DELETE FROM kpi_device_days WHERE day >= %s", (DAY,))
        conn.commit()

    with upgraded_database(admin_url, rules.timezone) as url, psycopg.connect(url) as conn:
        t = time.perf_counter()
        fill(conn, n, random.Random(1))
        keep_days(Feed(conn, rules), conn, DAY - timedelta(days=29), DAY - timedelta(days=1))
        conn.execute("ANALYZE")
        conn.commit()
        print(
            f"  {n:,} devices: filled (kpi_db) in {time.perf_counter() - t:.0f} s, not timed",
            flush=True,
        )

        def measure(key: str, args: list[str]) -> None:
            out[key] = timed(args, url, tmp / f"{key}-{n}.log")
            print(
                f"  {n:,} devices: {key:15} {format_cell(key, out[key])}"
                f"{'  ' + out[key]['error'] if 'error' in out[key] else ''}",
                flush=True,
            )

        # The fixed cost in every command's seconds: the interpreter and the kpi
        # commands' imports, no data read.
        # Best of three: one run is at the mercy of whatever else the machine does.
        runs = [timed(["kpi", "--help"], url, tmp / f"startup-{n}-{i}.log") for i in range(3)]
        out["startup"] = min(runs, key=lambda c: float(c["seconds"]))
        out["startup"]["all_seconds"] = [c["seconds"] for c in runs]
        print(
            f"  {n:,} devices: {'startup':15} {format_cell('startup', out['startup'])} (best of 3)",
            flush=True,
        )
        if "uptime" in paths:
            reset(conn)
            measure("uptime", ["kpi", "uptime", "--date", day])
        if "low-yield" in paths:
            reset(conn)
            measure("lowyield_first", ["kpi", "low-yield", "--date", day])
            row = conn.execute("SELECT count(*) FROM kpi_device_days WHERE day = %s", (DAY,))
            kept = (row.fetchone() or (0,))[0]
            conn.commit()
            out["lowyield_first"]["kept_rows"] = kept
            measure("lowyield_kept", ["kpi", "low-yield", "--date", day])
            if not kept:
                out["lowyield_kept"]["note"] = "the first run kept no day: not all kept"
                print(f"  {n:,} devices: the first low-yield run kept nothing for {day}")
            # The daily case: D-1 was evaluated the morning before (not kept then, so
            # computed and kept with the window sums it completed); D is not kept yet.
            conn.execute("DELETE FROM kpi_device_days WHERE day >= %s", (DAY - timedelta(days=1),))
            conn.commit()
            before = (DAY - timedelta(days=1)).isoformat()
            timed(["kpi", "low-yield", "--date", before], url, tmp / f"lowyield-before-{n}.log")
            measure("lowyield_next", ["kpi", "low-yield", "--date", day])
        if "bulletin" in paths:
            reset(conn)
            folder = tmp / f"bulletin-{n}"
            folder.mkdir()
            measure(
                "bulletin",
                ["bulletin", "daily", "--date", day, "--format", "all", "--out", str(folder)],
            )
            out["bulletin"]["files"] = sorted(p.name for p in folder.iterdir())


def _full(endpoint: str) -> bool:
    """The exposition holds the device rows (database up) and every costlier part."""
    try:
        req = urllib.request.Request(endpoint, headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            body = resp.read()
            if resp.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
    except OSError:
        return False
    if not re.search(rb"^atmfleet_exporter_database_up 1(\.0)?$", body, re.M):
        return False
    parts = set(
        re.findall(rb'^atmfleet_exporter_part_timestamp_seconds\{part="(\w+)"\}', body, re.M)
    )
    return {p.decode() for p in parts} >= FULL_PARTS


def serve_paths(
    n: int, admin_url: str, paths: list[str], tmp: Path, out: dict[str, dict[str, Any]]
) -> None:
    """Paths 4-5 at ``n`` devices, their figures put in ``out`` as they come."""
    import promrun
    import psycopg
    from scrape import fill

    from app.embedded import free_port
    from rules.config import load_rules

    rules = load_rules()
    with upgraded_database(admin_url, rules.timezone) as url:
        with psycopg.connect(url) as conn:
            t = time.perf_counter()
            fill(conn, n)
            print(
                f"  {n:,} devices: filled (scrape) in {time.perf_counter() - t:.0f} s, not timed",
                flush=True,
            )
        port = free_port()
        endpoint = f"http://127.0.0.1:{port}/metrics"
        log = tmp / f"serve-{n}.log"
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        serve_args = [*atmfleet(), "serve", "--host", "127.0.0.1", "--port", str(port)]
        with running(serve_args, log, env=command_env(url)) as serve:
            until(lambda: _full(endpoint), "serve's first full refresh", serve, log, every_s=1.0)
            out["serve_full"] = {
                "seconds": time.perf_counter() - t0,
                "load": load,
                "rss_mib": peak_rss_mib(serve.pid),
            }
            load = os.getloadavg()[0]
            t = time.perf_counter()
            with urllib.request.urlopen(endpoint, timeout=300) as resp:
                body = resp.read()
            took = time.perf_counter() - t
            samples = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
            out["scrape"] = {"seconds": took, "load": load}
            out["exposition"] = {"bytes": len(body), "samples": samples}
            del body
            print(
                f"  {n:,} devices: serve full after {out['serve_full']['seconds']:.1f} s; "
                f"GET /metrics {took:.2f} s, {out['exposition']['bytes'] / 1e6:.1f} MB, "
                f"{samples:,} samples",
                flush=True,
            )
            if "rules" in paths:
                out.update(rule_round(n, port, tmp, promrun))
            out["scrape"]["rss_mib"] = peak_rss_mib(serve.pid)


def rule_round(n: int, serve_port: int, tmp: Path, promrun: Any) -> dict[str, dict[str, Any]]:
    from app.embedded import free_port

    folder = tmp / f"prometheus-{n}"
    folder.mkdir()
    port = free_port()
    config = promrun.write_config(folder, {"atmfleet": [serve_port]})
    log = folder / "prometheus.log"
    load = os.getloadavg()[0]
    prom = promrun.start(folder, config, port)
    try:
        until(lambda: promrun.ready(port), "Prometheus to be ready", prom, log)
        scrape = until(
            lambda: promrun.last_good_scrape(port, "atmfleet"),
            "Prometheus's first successful scrape of serve",
            prom,
            log,
        )
        groups = until(
            lambda: promrun.round_after(port, scrape.ended),
            "a round of every rule group after that scrape",
            prom,
            log,
        )
        rss = peak_rss_mib(prom.pid)
    finally:
        stop(prom)
    longest = max(groups, key=lambda g: g.seconds)
    errors = sum(g.errors for g in groups)
    cell: dict[str, Any] = {
        "seconds": sum(g.seconds for g in groups),
        "rss_mib": rss,
        "load": load,
        "groups": {
            g.name: {"seconds": g.seconds, "rules": g.rules, "errors": g.errors, "file": g.file}
            for g in groups
        },
    }
    if errors:
        cell["rule_errors"] = errors
    print(
        f"  {n:,} devices: rule round {cell['seconds']:.2f} s over {len(groups)} groups "
        f"(longest {longest.name} {longest.seconds:.2f} s), Prometheus peak RSS "
        f"{rss or 0:.0f} MiB, {errors} rules in error",
        flush=True,
    )
    return {
        "rules": cell,
        "rules_longest": {"seconds": longest.seconds, "group": longest.name},
        "prom_scrape": {"seconds": scrape.seconds},
    }


# -- main ----------------------------------------------------------------------------------


def commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (modified)" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--devices",
        type=parse_devices,
        default=parse_devices("1000,10000,100000"),
        help="comma-separated fleet sizes, increasing",
    )
    parser.add_argument(
        "--paths",
        type=parse_paths,
        default=list(PATHS),
        help=f"comma-separated, among {','.join(PATHS)} (rules implies scrape)",
    )
    parser.add_argument("--out", type=Path, help="save the raw figures as JSON")
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument(
        "--show", type=Path, metavar="FILE.json", help="print the table of a saved run and end"
    )
    args = parser.parse_args()
    if args.show is not None:
        report(json.loads(args.show.read_text()))
        return
    signal.signal(signal.SIGTERM, _interrupt)  # finally blocks clean up
    started = datetime.now(UTC)
    figures: dict[str, Any] = {
        "commit": commit(),
        "started": started.isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "devices": args.devices,
        "paths": args.paths,
        "load_average": {},
        "results": {},
    }
    results: dict[int, dict[str, dict[str, Any]]] = {}
    failed = None
    with tempfile.TemporaryDirectory(prefix="atmfleet-costcurve-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            for n in args.devices:
                figures["load_average"][str(n)] = {"start": os.getloadavg()}
                results[n] = {}
                if {"uptime", "low-yield", "bulletin"} & set(args.paths):
                    kpi_paths(n, args.admin_url, args.paths, tmp, results[n])
                if {"scrape", "rules"} & set(args.paths):
                    serve_paths(n, args.admin_url, args.paths, tmp, results[n])
                figures["load_average"][str(n)]["end"] = os.getloadavg()
        except BenchError as exc:
            failed = str(exc)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: cleaned up on the way out
            failed = "interrupted: the table holds what was measured before"
        finally:
            figures["results"] = {str(n): r for n, r in results.items()}
            if args.out is not None:
                args.out.write_text(json.dumps(figures, indent=1) + "\n")
    report(figures)
    if failed:
        sys.exit(f"cost_curve: {failed}")


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def report(figures: dict[str, Any]) -> None:
    """The table and the load averages of a run's figures (as ``--out`` saves them)."""
    results = {int(n): r for n, r in figures["results"].items()}
    print()
    print(
        f"cost curve, commit {figures['commit']}, {figures['cpus']} CPUs, started "
        f"{figures['started']}; D = {_day()} for 1-3, now for 4-5; seconds (peak RSS)"
    )
    print(table(figures["devices"], results))
    for n, load in figures["load_average"].items():
        start, end = load["start"], load.get("end")
        print(
            f"load average (1, 5, 15 min) at {int(n):,} devices: start "
            f"{', '.join(f'{x:.1f}' for x in start)}"
            + (f"; end {', '.join(f'{x:.1f}' for x in end)}" if end else "")
        )
    for n, r in results.items():
        for key, cell in r.items():
            problem = cell.get("error") or cell.get("note")
            if cell.get("rule_errors"):
                problem = f"{cell['rule_errors']} rules in error"
            if problem:
                print(f"{n:,} {key}: {problem}")


def _day() -> str:
    from kpi_db import DAY

    return DAY.isoformat()


if __name__ == "__main__":
    main()
