"""The backtest of bench/cash_backtest.py on a small simulated fleet: deterministic for a
seed, and the forecast beats the seasonal-naive baseline on both figures. (The full run,
1,000 devices over a month, is the benchmark itself.)"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from bench.cash_backtest import backtest, cash_fleet, observe, table
from rules.config import parse_rules
from simulator.config import make_config

pytestmark = pytest.mark.slow

RULES = parse_rules("cash: {history_days: 14, min_history_days: 7}")
FIRST = date(2027, 1, 4)  # a week with the 10th's pay days after it
DAYS = 7


@pytest.fixture(scope="module")
def observed():  # type: ignore[no-untyped-def]
    tz = RULES.tz
    start = datetime.combine(FIRST - timedelta(days=14), datetime.min.time(), tz).astimezone(UTC)
    end = datetime.combine(FIRST + timedelta(days=DAYS + 2), datetime.min.time(), tz).astimezone(
        UTC
    )
    inv = cash_fleet(40, 3, FIRST - timedelta(days=14))
    return observe(inv, make_config({}), 3, start, end)


def test_forecast_beats_the_seasonal_naive_baseline(observed) -> None:  # type: ignore[no-untyped-def]
    model, base = backtest(observed, RULES, FIRST, DAYS)
    text, _ = table(model, base)
    assert model.device_days == base.device_days > 200, text
    assert model.mape is not None and base.mape is not None
    assert model.mape < 0.8 * base.mape, text
    assert model.cash_outs[12.0] == base.cash_outs[12.0] > 5, text
    assert (model.hit_share(12.0) or 0) >= (base.hit_share(12.0) or 0), text


def test_the_backtest_is_deterministic(observed) -> None:  # type: ignore[no-untyped-def]
    first = backtest(observed, RULES, FIRST, 2)
    again = backtest(observed, RULES, FIRST, 2)
    assert table(*first)[0] == table(*again)[0]
