"""The inventory ``atmfleet serve`` holds (read a block at a time, its repeated values
held once) is the feed's: equal models with the same fields set, on the stored fleet of
tests/test_serve.py."""

from __future__ import annotations

import psycopg
import pytest

from exporters import metrics
from exporters.metrics import _compact, read_inventory
from rules.feed import Feed
from tests.test_serve import store_fleet


@pytest.mark.parametrize("block", [1, 2, 5000])
def test_serve_reads_the_feeds_inventory(
    database_url: str, run_id: str, block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = store_fleet(database_url, run_id)
    monkeypatch.setattr(metrics, "INVENTORY_BLOCK", block)
    with psycopg.connect(fleet.url) as conn:
        want = Feed(conn, fleet.rules).inventory()
        got = read_inventory(conn)
        compacted = _compact(Feed(conn, fleet.rules).inventory())
    assert len(want.devices) > 2
    for inventory in (got, compacted):
        assert inventory == want
        assert inventory.subbranches == want.subbranches
        assert inventory.branches == want.branches
        for a, b in zip(inventory.devices, want.devices, strict=True):
            assert type(a) is type(b)
            assert list(a.__dict__.items()) == list(b.__dict__.items())
            assert a.model_fields_set == b.model_fields_set
            assert a.model_dump(exclude_unset=True) == b.model_dump(exclude_unset=True)
        for a, b in zip(
            (*inventory.subbranches, *inventory.branches),
            (*want.subbranches, *want.branches),
            strict=True,
        ):
            assert type(a) is type(b)
            assert list(a.__dict__.items()) == list(b.__dict__.items())
            assert a.model_fields_set == b.model_fields_set
    # one fields-set for the fleet's devices, one for its branches
    assert len({id(d.__pydantic_fields_set__) for d in got.devices}) == 1
    assert len({id(b.__pydantic_fields_set__) for b in got.branches}) == 1
