"""The forecast's hour weights worked out a block of devices at a time equal the whole
fleet's at once (``cash.store.weights`` against ``coverage``), bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from cash.store import coverage, weights


@pytest.mark.parametrize("block", [1, 3, 64, 2048])
def test_blocks_give_the_same_weights_bit_for_bit(block: int) -> None:
    rnd = np.random.default_rng(16)
    n, hours = 200, 96
    k = 3000
    rows = rnd.integers(0, n, k)
    rows[:50] = n - 1  # one device with many intervals, a few devices with none
    rows[rows % 17 == 5] = 3
    a = rnd.uniform(-5, hours + 5, k)
    b = a + rnd.choice([0.0, 0.01, 0.4, 1.0, 3.7, 30.0], k)
    a[::97] = np.floor(a[::97])  # on the hour
    want = coverage(rows, a, b, n, hours).astype(np.float32)
    got = weights(rows, a, b, n, hours, block=block)
    assert got.dtype == np.float32 and got.shape == (n, hours)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_no_devices_and_no_intervals() -> None:
    empty = np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
    assert weights(*empty, 0, 24).shape == (0, 24)
    assert np.array_equal(weights(*empty, 5, 24, block=2), coverage(*empty, 5, 24))
