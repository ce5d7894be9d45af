"""``atmfleet serve`` before and after a change, side by side, on the same database.

    python bench/serve_compare.py --before /path/to/old/checkout [--devices 1000,10000,100000]

For each fleet size: one throw-away database filled as bench/scrape.py fills it (not
timed: the inventory, today's state runs, newest samples, last wills, transactions, 30
days of txn_daily and kept closed days up to the day before yesterday, so yesterday is
not kept yet), then, for the BEFORE checkout and for this one in turn, a child process
importing that checkout's code (PYTHONPATH) runs ``start_serving`` as ``atmfleet serve``
does and reports:

- port open: seconds until ``start_serving`` returned with ``/metrics`` answering;
- first full: seconds from the start until the exposition holds the device rows,
  today's times per branch and the low-yield share;
- refresh: the next two refreshes of the device rows as the refresh thread runs them
  (best and worst: incremental where the checkout has it, and nothing arrived since);
- refresh, full: one more that reads every device again (where the checkout tells them
  apart; the other checkout's refreshes are all full);
- refresh, half heard from: one more after a new state sample (a heartbeat) for every
  other device, as a live fleet with 60 s heartbeats shows a refresh every 30 s (the
  samples are deleted again afterwards, so the other checkout reads the same store);
- refresh, all heard from: one more after a heartbeat of every device, as a live fleet
  shows each refresh once it has run for the late window (60 s) and a refresh;
- scrape: one plain HTTP GET of /metrics, its bytes and samples;
- peak RSS of the child.

Each child first keeps the closed days up to the day before yesterday under its own
fingerprint (not timed), so both read 29 kept days and compute yesterday. The two
children run one after the other on a shared machine: compare the ratio, not the
seconds alone.

Each child also writes the exposition it served after its first full refresh; the two
are compared line for line, leaving out what depends on the instant it was made (the
refresh and part timestamps and durations, today's times so far, the cash-out forecast),
and the result is printed last ("exposition equal": the count of lines compared).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.request import urlopen

import psycopg

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


KEEP = """
INSERT INTO kpi_device_days (fingerprint, device_id, day, available_ms, scheduled_ms, financial)
SELECT %(fp)s, id, d::date, 86400000 - s, 86400000, f
FROM generate_series((now() AT TIME ZONE %(tz)s)::date - 30,
                     (now() AT TIME ZONE %(tz)s)::date - 2, INTERVAL '1 day') AS d
CROSS JOIN (SELECT id, (floor(random() * 4) * 1800000)::int8 AS s,
                   floor(random() * 120)::int8 AS f FROM devices ORDER BY id) dev
"""


#: Families whose values depend on the instant of the refresh (two children run minutes
#: apart): left out of the equality check.
INSTANT = (
    "atmfleet_exporter_scrape_duration_seconds",
    "atmfleet_exporter_refresh_timestamp_seconds",
    "atmfleet_exporter_part_timestamp_seconds",
    "atmfleet_day_scheduled_seconds",
    "atmfleet_day_available_seconds",
    "atmfleet_day_unknown_seconds",
    "atmfleet_day_resource_warning_seconds",
    "atmfleet_cash_forecast_timestamp_seconds",
    "atmfleet_cash_forecast_duration_seconds",
    "atmfleet_device_cash_out_forecast",
    "atmfleet_device_deposit_full_forecast",
)

#: A new state sample, received now, for every other device (what a live fleet's
#: heartbeats add between two refreshes); HEARD_SEQ marks them for deletion.
HEARD_SEQ = 1 << 40
HEARD = f"""
INSERT INTO state_samples (device_id, seq, ts, received_at, state, heartbeat_s, components,
                           cash_units, faults)
SELECT device_id, seq + {HEARD_SEQ}, now(), now(), state, heartbeat_s, components,
       cash_units, faults
FROM (SELECT DISTINCT ON (device_id) * FROM state_samples
      ORDER BY device_id, ts DESC, seq DESC) newest
WHERE hashtext(device_id) % 2 = 0
"""
#: Then one more for every device, as a live fleet shows each refresh once it has been
#: on for the late window (60 s) and a refresh: all heard from.
HEARD_ALL = HEARD.replace(f"seq + {HEARD_SEQ}", f"seq + {2 * HEARD_SEQ}").replace(
    "WHERE hashtext(device_id) % 2 = 0", ""
)


def _instant(line: bytes) -> bool:
    name = line.split(b" ", 3)[2] if line.startswith(b"# ") else line.split(b"{", 1)[0]
    return name.split(b" ", 1)[0].decode().startswith(INSTANT)


def comparable(body: bytes) -> list[bytes]:
    """The lines of an exposition that do not depend on the instant it was made."""
    return [line for line in body.splitlines() if not _instant(line)]


def scan(endpoint: str, out: Path | None = None) -> dict:
    """One GET of ``endpoint`` read line by line (the measured process never holds the
    whole body, so its peak RSS is serve's own): its bytes, samples per family, and
    (``out``) its :func:`comparable` lines written there."""
    families: dict[str, int] = {}
    size, up = 0, False
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(out.open("wb")) if out is not None else None
        first = True
        for line in stack.enter_context(urlopen(endpoint, timeout=60)):
            size += len(line)
            line = line.rstrip(b"\n")
            up = up or line == b"atmfleet_exporter_database_up 1.0"
            if line and not line.startswith(b"#"):
                name = line.split(b"{", 1)[0].split(b" ", 1)[0].decode()
                families[name] = families.get(name, 0) + 1
            if sink is not None and not _instant(line):
                sink.write(line if first else b"\n" + line)
                first = False
    return {"bytes": size, "families": families, "up": up}


class ChildPeaks:
    """The largest VmHWM (/proc) of this process's own child processes while it runs
    (the costlier parts' and the cash-out forecast's), sampled every 0.1 s: unlike
    ``RUSAGE_CHILDREN``, which can carry the parent's high-water mark over a spawn."""

    def __init__(self) -> None:
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        me = str(os.getpid())
        while not self._stop.wait(0.1):
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    status = (proc / "status").read_text()
                except OSError:
                    continue
                fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
                if fields.get("PPid", "").strip() == me and "VmHWM" in fields:
                    self.peak_mib = max(self.peak_mib, int(fields["VmHWM"].split()[0]) / 1024)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_mib


def child(url: str, dump: Path) -> None:
    """Runs in the child: the checkout on PYTHONPATH is the one measured."""
    from exporters.metrics import start_serving
    from rules.config import load_rules
    from rules.feed import Feed

    rules = load_rules()
    # The closed days up to the day before yesterday kept under this checkout's
    # fingerprint (its rules model may differ from the other's), as bench/scrape.py's
    # fill keeps them, with a fixed seed: the same values for both checkouts. Not timed.
    with psycopg.connect(url) as conn:
        conn.execute("DELETE FROM kpi_device_days")
        conn.execute("SELECT setseed(0.42)")
        conn.execute(KEEP, {"fp": Feed(conn, rules).fingerprint(), "tz": rules.timezone})
        conn.execute("ANALYZE kpi_device_days")
    peaks = ChildPeaks()
    t0 = time.perf_counter()
    serving = start_serving(url, rules, port=0, refresh_s=3600, day_refresh_s=3600)
    endpoint = f"http://127.0.0.1:{serving.port}/metrics"
    urlopen(endpoint, timeout=60).read()
    port_open = time.perf_counter() - t0
    full = None
    while time.perf_counter() - t0 < 1800:
        got = scan(endpoint, dump)
        if (
            got["up"]
            and got["families"].get("atmfleet_lowyield_evaluated_devices")
            and got["families"].get("atmfleet_day_scheduled_seconds")
        ):
            full = time.perf_counter() - t0
            break
        time.sleep(0.2)
    refreshes = []
    for _ in range(2):
        t = time.perf_counter()
        serving.exporter.refresh()
        refreshes.append(time.perf_counter() - t)
    source = serving.source
    full_s = None
    if hasattr(source, "forget_rows"):  # a checkout with incremental refreshes
        source.forget_rows()
        t = time.perf_counter()
        serving.exporter.refresh()
        full_s = time.perf_counter() - t
    with psycopg.connect(url) as conn:
        heard = conn.execute(HEARD).rowcount
    t = time.perf_counter()
    serving.exporter.refresh()
    heard_s = time.perf_counter() - t
    heard_read = getattr(source, "last_rows", ("full", None))
    with psycopg.connect(url) as conn:
        conn.execute(HEARD_ALL)
    t = time.perf_counter()
    serving.exporter.refresh()
    all_s = time.perf_counter() - t
    all_read = getattr(source, "last_rows", ("full", None))
    with psycopg.connect(url) as conn:
        conn.execute("DELETE FROM state_samples WHERE seq >= %s", (HEARD_SEQ,))
    t = time.perf_counter()
    got = scan(endpoint)
    scrape_s = time.perf_counter() - t
    families = got["families"]
    samples = sum(families.values())
    timings = dict(serving.source.timings)
    serving.close()
    children_hwm = peaks.stop()
    print(
        json.dumps(
            {
                "port_open_s": port_open,
                "first_full_s": full,
                "refresh_s": refreshes,
                "refresh_full_s": full_s,
                "refresh_heard_s": heard_s,
                "heard": heard,
                "heard_read": heard_read,
                "refresh_all_s": all_s,
                "all_read": all_read,
                "scrape_s": scrape_s,
                "bytes": got["bytes"],
                "samples": samples,
                "families": families,
                "reads_s": timings,
                "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                # the largest child that ended (the cash-out forecast's process, if any)
                "child_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                "child_hwm_mib": children_hwm,
            }
        )
    )


def run_child(tree: Path, url: str, dump: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, str(HERE / "serve_compare.py"), "--before", ".", "--child", url,
         "--dump", str(dump)],
        env=env, capture_output=True, text=True, check=False, cwd=tree,
    )  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"child in {tree} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout of the old code")
    parser.add_argument("--devices", default="100000", help="comma-separated fleet sizes")
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--per-branch", type=int, default=50, help="devices per branch")
    parser.add_argument("--url", help="an already filled database to use (kept)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--dump", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        # bench/ is first on the path (the script's folder): its cash.py is not cash/.
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
        child(args.child, args.dump)
        return
    sys.path.insert(0, str(HERE))
    from scrape import fill
    from scratch import upgraded_database

    from atmfleet.store.migrate import Flavour
    from rules.config import load_rules

    rules = load_rules()
    rows = []
    equal: list[tuple[int, int | None]] = []

    def both(n: int, url: str) -> None:
        got = {}
        with tempfile.TemporaryDirectory(prefix="serve_compare") as tmp:
            for label, tree in (("before", args.before.resolve()), ("after", ROOT)):
                load = os.getloadavg()[0]
                got[label] = run_child(tree, url, Path(tmp) / label)
                got[label]["load"] = load
                print(f"  {n} devices, {label}: {json.dumps(got[label])}", flush=True)
            b, a = ((Path(tmp) / k).read_bytes().split(b"\n") for k in ("before", "after"))
        if b == a:
            equal.append((n, len(a)))
        else:
            equal.append((n, None))
            for x, y in zip(b, a, strict=False):
                if x != y:
                    print(f"  first difference:\n    before: {x[:200]!r}\n    after:  {y[:200]!r}")
                    break
            print(f"  lines: before {len(b)}, after {len(a)}")
        rows.append((n, got))

    for n in [int(x) for x in args.devices.split(",")]:
        if args.url:  # filled already (by bench/scrape.py's fill, n devices)
            both(n, args.url)
            continue
        with upgraded_database(args.admin_url, rules.timezone, Flavour.POSTGRES) as url:
            with psycopg.connect(url) as conn:
                fill(conn, n, args.per_branch)
            both(n, url)
    print()
    print(f"{'devices':>8} {'measure':<28} {'before':>12} {'after':>12} {'ratio':>7}")
    for n, got in rows:
        b, a = got["before"], got["after"]
        lines = [
            ("port open (s)", b["port_open_s"], a["port_open_s"]),
            ("first full refresh (s)", b["first_full_s"], a["first_full_s"]),
            ("refresh, best (s)", min(b["refresh_s"]), min(a["refresh_s"])),
            ("refresh, worst (s)", max(b["refresh_s"]), max(a["refresh_s"])),
            # a checkout without forget_rows: each of its refreshes reads every device
            (
                "refresh, full (s)",
                b.get("refresh_full_s") or max(b["refresh_s"]),
                a.get("refresh_full_s") or 0,
            ),
            ("refresh, half heard from (s)", b["refresh_heard_s"], a["refresh_heard_s"]),
            ("refresh, all heard from (s)", b.get("refresh_all_s", 0), a.get("refresh_all_s", 0)),
            ("scrape, plain (s)", b["scrape_s"], a["scrape_s"]),
            ("exposition (MB)", b["bytes"] / 1e6, a["bytes"] / 1e6),
            ("samples", b["samples"], a["samples"]),
            ("peak RSS (MiB)", b["rss_mib"], a["rss_mib"]),
            ("peak RSS of a child (MiB)", b.get("child_rss_mib", 0), a.get("child_rss_mib", 0)),
            ("VmHWM of a child (MiB)", b.get("child_hwm_mib", 0), a.get("child_hwm_mib", 0)),
            ("load average at start", b["load"], a["load"]),
        ]
        for name, x, y in lines:
            ratio = f"{x / y:7.1f}" if x and y else "      –"
            print(f"{n:>8} {name:<28} {x:>12.2f} {y:>12.2f} {ratio}")
    print()
    n, got = rows[-1]
    print(f"series per family at {n} devices (after):")
    for name, count in sorted(got["after"]["families"].items(), key=lambda kv: -kv[1]):
        print(f"  {count:>8}  {name}")
    print()
    for n, lines in equal:
        verdict = f"equal ({lines} lines compared)" if lines is not None else "DIFFERENT"
        print(
            f"{n:>8} devices: exposition before and after (instant-dependent families out): {verdict}"
        )
    if any(lines is None for _, lines in equal):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
