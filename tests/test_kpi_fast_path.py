"""The feed's fast paths equal the reference on a small random fleet in the store.

- timelines from runs read as columns per device (``runs_by_device``) equal
  ``build_timeline`` of ``timeline_inputs`` (runs as StateRun values, row by row);
- uptime with the memoised scheduled spans equals ``device_uptime`` over
  ``scheduled_spans`` for every device;
- low-yield from the kept days' sums (``kept_sums``) equals the evaluation of every
  device's days one by one, with some days kept and some computed, devices commissioned
  and decommissioned inside the window, both ways of counting days;
- the inventory's devices equal ``Device.model_construct`` of their rows.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest

from atmfleet.inventory import Branch, BranchKind, Device, DeviceType, Placement, SubBranch, Tier
from atmfleet.store.migrate import upgrade
from rules.config import DaysCounted, Rules, load_rules
from rules.feed import DeviceInputs, Feed, _low_yield_by_day, low_yield_for, timelines, uptime_for
from rules.lowyield import WindowSums
from rules.timeline import build_timeline, from_ms
from rules.uptime import UptimePolicy, WindowSpans, day_span, device_uptime, scheduled_spans

pytestmark = pytest.mark.integration

RULES = load_rules()
DAY = date(2026, 11, 20)
H = 3_600_000
STATES = ("in_service", "in_service", "degraded", "fault", "cash_out", "supervisor",
          "planned_maintenance", "comms_down", "closed", "powered_off")  # fmt: skip
TYPES = (DeviceType.ATM, DeviceType.CRS, DeviceType.DEPOSIT, DeviceType.SMART_TELLER,
         DeviceType.INQUIRY)  # fmt: skip


def filled(request: pytest.FixtureRequest, n: int = 40) -> Iterator[psycopg.Connection]:
    """A connection to a database (plain PostgreSQL or TimescaleDB, as the fixture's
    parameter says) upgraded and filled with ``n`` devices (:func:`fill`, seed 16), as
    :func:`fill` left it.

    Plain PostgreSQL: one filled database per module and ``n`` (``filled_stores`` in
    conftest.py), brought back before each test to what :func:`fill` wrote
    (:class:`FilledStore`). TimescaleDB: a new database per test (keeping a day refreshes
    the ``txn_daily`` aggregate, which cannot be put back).
    """
    if request.param == "postgres":
        store: FilledStore = request.getfixturevalue("filled_stores")(n)
        with psycopg.connect(store.url) as c:
            store.restore(c)
            yield c
            c.rollback()
            store.check_unchanged(c)
        return
    url = request.getfixturevalue("timescale_url")
    with psycopg.connect(url, autocommit=True) as c:
        upgrade(c, timezone=RULES.timezone)
    with psycopg.connect(url) as c:
        fill(c, random.Random(16), n=n)
        yield c


class FilledStore:
    """A database filled once (:func:`fill`), shared by the tests of a module.

    The tests write only to ``CHANGED`` (the days they keep, the collector outages they
    remove or add, a run in a state the timeline does not know): those tables, their
    rows and identity sequences, are put back before each test as :func:`fill` left
    them; every other table is checked unchanged after each test.
    """

    #: In restore's order: the rules of the kept days before the days (whose insert
    #: trigger keeps their newest day there).
    CHANGED = ("kpi_kept_rules", "kpi_device_days", "collector_outages", "state_runs")

    def __init__(self, url: str, n: int) -> None:
        self.url = url
        with psycopg.connect(url, autocommit=True) as c:
            upgrade(c, timezone=RULES.timezone)
        with psycopg.connect(url) as c:
            fill(c, random.Random(16), n=n)
            self.rows = {t: self._copy_out(c, t) for t in self.CHANGED}
            self.sequences = c.execute(
                "SELECT s.schemaname || '.' || s.sequencename, s.last_value FROM pg_sequences s"
                " WHERE s.schemaname = current_schema()"
            ).fetchall()
            self.digest = self._digest(c)
            c.commit()

    @staticmethod
    def _copy_out(c: psycopg.Connection, table: str) -> bytes:
        with c.cursor().copy(f"COPY {table} TO STDOUT") as copy:
            return b"".join(bytes(block) for block in copy)

    def _digest(self, c: psycopg.Connection) -> dict[str, str]:
        tables = c.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema ="
            " current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name"
        ).fetchall()
        out = {}
        for (table,) in tables:
            if table in self.CHANGED:
                continue
            row = c.execute(
                f"SELECT count(*) || ' ' || md5(coalesce(string_agg(t::text, E'\\n'"
                f" ORDER BY t::text), '')) FROM {table} t"
            ).fetchone()
            assert row is not None
            out[table] = str(row[0])
        return out

    def restore(self, c: psycopg.Connection) -> None:
        c.execute(f"TRUNCATE {', '.join(self.CHANGED)}")
        for table, data in self.rows.items():
            with c.cursor().copy(f"COPY {table} FROM STDIN") as copy:
                copy.write(data)
        for name, last in self.sequences:
            if last is None:
                c.execute("SELECT setval(%s, 1, false)", (name,))
            else:
                c.execute("SELECT setval(%s, %s)", (name, last))
        c.commit()

    def check_unchanged(self, c: psycopg.Connection) -> None:
        """Every table but ``CHANGED`` as :func:`fill` left it."""
        assert self._digest(c) == self.digest, "a test changed a table restore() does not"
        c.commit()


@pytest.fixture(params=["postgres", pytest.param("timescale", marks=pytest.mark.timescale)])
def conn(request: pytest.FixtureRequest) -> Iterator[psycopg.Connection]:
    yield from filled(request)


def fill(conn: psycopg.Connection, rng: random.Random, n: int = 40) -> None:
    tz = RULES.tz
    conn.execute("INSERT INTO subbranches VALUES ('S1', 's1', 1), ('S2', 's2', 3)")
    conn.execute(
        "INSERT INTO branches (id, name, subbranch, kind) VALUES"
        " ('B1', 'b1', 'S1', 'outlet'), ('B2', 'b2', 'S2', 'outlet')"
    )
    lo = day_span(DAY - timedelta(days=1), tz)[0]
    hi = day_span(DAY + timedelta(days=1), tz)[1]
    # Rows gathered per table and sent with executemany (one pipeline per table, in the
    # order drawn): the same rows as one INSERT each, without a round trip per row.
    devices: list[tuple[object, ...]] = []
    runs: list[tuple[object, ...]] = []
    presence: list[tuple[object, ...]] = []
    events: list[tuple[object, ...]] = []
    for i in range(n):
        dev = f"D{i:03d}"
        kind = TYPES[i % len(TYPES)]
        commissioned = DAY - timedelta(days=rng.choice((400, 400, 400, 10, 0, -1)))
        gone = DAY - timedelta(days=rng.choice((5, 1))) if i % 9 == 4 else None
        window = rng.choice((None, None, "24x7", "mon-fri 09:00-17:00"))
        hb = rng.choice((60, 60, 300))
        devices.append(
            (dev, f"B{i % 2 + 1}", kind.value, list(Placement)[i % 3].value, commissioned,
             gone, window, kind in (DeviceType.CRS, DeviceType.DEPOSIT), hb),
        )  # fmt: skip
        if i % 11 == 3:
            continue  # never heard from
        t, seq = lo - rng.randrange(0, 4) * H, 0
        while t < hi:
            length = rng.randrange(0, 8 * H)
            samples = length // (hb * 1000) + 1
            state = rng.choice(STATES)
            runs.append(
                (dev, from_ms(t), seq, from_ms(t + length), seq + samples - 1, state, hb,
                 samples),
            )  # fmt: skip
            seq += samples
            t += length + rng.choice((hb * 1000, hb * 1000, 20 * 60_000, 5 * H))
            if rng.random() < 0.1:
                at = from_ms(t - rng.randrange(1, 10) * 60_000)
                online = rng.random() < 0.5
                presence.append((dev, "online" if online else "offline", at, at, not online))
            if rng.random() < 0.05:
                since = from_ms(t - 2 * H)
                events.append((dev, seq, from_ms(t), from_ms(t), since))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO devices (id, branch, type, placement, vendor, model, commissioned,"
            " decommissioned, service_window, deposit_capable, heartbeat_s)"
            " VALUES (%s, %s, %s, %s, 'V', 'M', %s, %s, %s, %s, %s)",
            devices,
        )
        cur.executemany("INSERT INTO state_runs VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", runs)
        cur.executemany("INSERT INTO presence VALUES (%s, %s, %s, %s, 's', %s)", presence)
        cur.executemany(
            "INSERT INTO events (device_id, seq, ts, received_at, event, severity, since)"
            " VALUES (%s, %s, %s, %s, 'power_restored', 'info', %s)",
            events,
        )
    conn.execute(
        "INSERT INTO collector_outages (started_at, ended_at, detected_by) VALUES (%s, %s, 'test')",
        (from_ms(lo + 30 * H), from_ms(lo + 31 * H + 17 * 60_000)),
    )
    for i, (device, branch) in enumerate((("D001", None), (None, "B2"))):
        conn.execute(
            "INSERT INTO planned_stops (device_id, branch_id, starts_at, ends_at, reason,"
            " requester, approver, status, approved_at)"
            " VALUES (%s, %s, %s, %s, 'works', 'r', 'a', 'approved', now())",
            (device, branch, from_ms(lo + (26 + i) * H), from_ms(lo + (29 + i) * H)),
        )
    # txn_daily as the trigger (or the aggregate) leaves it: through transactions.
    rows = []
    for i in range(0, n, 2):
        for d in range(30):
            at = datetime.combine(DAY - timedelta(days=d), datetime.min.time(), tzinfo=tz)
            for k in range(rng.randrange(0, 4)):
                ts = at + timedelta(hours=12, minutes=k)
                rows.append((f"D{i:03d}", d * 10 + k, ts, ts, f"t{i}-{d}-{k}"))
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO transactions (device_id, seq, ts, received_at, txn_id, type,"
            " financial, amount, currency, fee, result, duration_ms, on_us)"
            " VALUES (%s, %s, %s, %s, %s, 'withdrawal', true, 100, 'CNY', 0, 'ok', 30000,"
            " true)",
            rows,
        )
    conn.commit()


def test_inventory_devices_are_model_construct_of_their_rows(conn: psycopg.Connection) -> None:
    feed = Feed(conn, RULES)
    devices = feed.inventory().devices
    rows = feed._rows("inventory_devices")
    assert len(devices) == len(rows) == 40
    for got, (i, b, t, p, v, m, c, dc, w, dep, hb) in zip(devices, rows, strict=True):
        want = Device.model_construct(
            id=i, branch=b, type=DeviceType(t), placement=Placement(p), vendor=v, model=m,
            commissioned=c, decommissioned=dc, service_window=w, deposit_capable=dep,
            heartbeat_s=hb,
        )  # fmt: skip
        assert got == want
        assert list(got.__dict__.items()) == list(want.__dict__.items())
        assert got.model_fields_set == want.model_fields_set
        assert hash(got) == hash(want)


def test_inventory_branches_are_model_construct_of_their_rows(conn: psycopg.Connection) -> None:
    feed = Feed(conn, RULES)
    inventory = feed.inventory()
    pairs = [
        (got, SubBranch.model_construct(id=i, name=n, tier=Tier(t)))
        for got, (i, n, t) in zip(
            inventory.subbranches, feed._rows("inventory_subbranches"), strict=True
        )
    ] + [
        (got, Branch.model_construct(id=i, name=n, subbranch=s, kind=BranchKind(k), parent=p))
        for got, (i, n, s, k, p) in zip(
            inventory.branches, feed._rows("inventory_branches"), strict=True
        )
    ]
    assert len(inventory.subbranches) >= 1 and len(inventory.branches) > 1
    for got, want in pairs:
        assert type(got) is type(want)
        assert got == want
        assert list(got.__dict__.items()) == list(want.__dict__.items())
        assert got.model_fields_set == want.model_fields_set
        assert hash(got) == hash(want)
        assert got.model_copy(update={"name": "x"}).name == "x"
        assert got.name != "x"  # the copy's update left the shared fields-set alone
        assert got.model_fields_set == want.model_fields_set
    # one fields-set for all branches, one for all sub-branches (not one each)
    assert len({id(b.__pydantic_fields_set__) for b in inventory.branches}) == 1
    assert len({id(s.__pydantic_fields_set__) for s in inventory.subbranches}) == 1


def test_timelines_and_uptime_equal_the_reference(conn: psycopg.Connection) -> None:
    feed = Feed(conn, RULES)
    devices = feed.inventory().devices
    tz = RULES.tz
    for horizon_h in (10, 60):  # inside the day (the rest not counted yet), or past it
        lo, hi = day_span(DAY - timedelta(days=1), tz)[0], day_span(DAY, tz)[1]
        horizon = lo + horizon_h * H
        inputs, outages = feed.timeline_inputs(lo, hi, horizon)
        empty = DeviceInputs()
        lines = timelines(feed, devices, lo, hi, horizon)
        up = uptime_for(feed, devices, DAY - timedelta(days=1), DAY, horizon)
        windows, policy = WindowSpans(tz), UptimePolicy.from_rules(RULES)
        labels = set()
        for d in devices:
            got = inputs.get(d.id, empty)
            want = build_timeline(
                got.runs, lo, hi, horizon=horizon, presence=got.presence, power=got.power,
                outages=outages, timeout_factor=RULES.heartbeat.timeout_factor,
                default_heartbeat_s=d.heartbeat_s, stops=got.stops,
            )  # fmt: skip
            assert lines[d.id] == want, d.id
            assert up.timelines[d.id] == want, d.id
            labels |= {label for _a, _b, label in want}
            for day in (DAY - timedelta(days=1), DAY):
                spans = scheduled_spans(d, day, RULES, windows, horizon)
                assert up.per_device[d.id][day] == device_uptime(want, spans, policy), d.id
        assert len(labels) >= 8  # the fleet is varied enough to mean something


def _flags_both_ways(conn: psycopg.Connection, rules: Rules, horizon: int) -> None:
    feed = Feed(conn, rules)
    inventory = feed.inventory()
    devices = inventory.devices
    before = conn.execute("SELECT count(*) FROM kpi_device_days").fetchone()
    fast = low_yield_for(feed, inventory, devices, DAY, horizon)
    # Forget what the fast path kept, so the reference starts from the same store.
    conn.execute("DELETE FROM kpi_device_days WHERE computed_at > %s", (MARK,))
    conn.commit()
    assert conn.execute("SELECT count(*) FROM kpi_device_days").fetchone() == before
    reference = _low_yield_by_day(Feed(conn, rules), inventory, devices, DAY, horizon)
    assert fast == reference
    assert {f.status for f in fast} >= {"low", "ok", "exempt", "not_evaluated"}
    conn.execute("DELETE FROM kpi_device_days WHERE computed_at > %s", (MARK,))
    conn.commit()


MARK = datetime(2000, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("counted", list(DaysCounted))
def test_low_yield_from_sums_equals_the_days_one_by_one(
    conn: psycopg.Connection, counted: DaysCounted
) -> None:
    low = RULES.low_yield.model_copy(
        update={"days_counted": counted, "min_monitored_days": 3, "ramp_up_days": 5}
    )
    rules = RULES.model_copy(update={"low_yield": low})
    feed = Feed(conn, rules)
    rng = random.Random(7)
    values = []
    for d in feed.inventory().devices:
        for back in range(1, 30):
            if rng.random() < 0.8:  # most days kept, the others computed
                s = rng.choice((0, 8 * H, 24 * H))
                values.append(
                    (d.id, DAY - timedelta(days=back),
                     (rng.randrange(0, s + 1) if s else 0, s, rng.randrange(0, 150)))
                )  # fmt: skip
    feed.keep_days(feed.fingerprint(), values)
    conn.execute("UPDATE kpi_device_days SET computed_at = %s", (MARK,))
    conn.commit()
    tz = rules.tz
    for horizon in (day_span(DAY, tz)[0] + 10 * H, day_span(DAY, tz)[1] + 2 * 86_400_000):
        _flags_both_ways(conn, rules, horizon)


def test_kept_sums_puts_the_transactions_settings_back(conn: psycopg.Connection) -> None:
    """``kept_sums`` raises work_mem and turns JIT off for its own statement only: the
    rest of the transaction runs with the settings it had (here: set by the caller)."""
    feed = Feed(conn, RULES)
    conn.execute("SET LOCAL work_mem = '3MB'")
    conn.execute("SET LOCAL jit = on")
    fp = feed.fingerprint()
    feed.keep_days(fp, [("D000", DAY - timedelta(days=2), (H, 2 * H, 7))])
    conn.execute("SET LOCAL work_mem = '3MB'")  # keep_days committed: a new transaction
    conn.execute("SET LOCAL jit = on")
    got = feed.kept_sums(fp, DAY - timedelta(days=29), DAY, True)
    assert got["D000"][0] == WindowSums(1, H, 2 * H, 1, 7)
    assert got["D000"][1] == 1 << 27
    assert conn.execute(
        "SELECT current_setting('work_mem'), current_setting('jit')"
    ).fetchone() == (
        "3MB",
        "on",
    )
    conn.rollback()
