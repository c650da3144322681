"""The two ages of a row (docs/python.md, "Two ages"): since its newest event
and since the writer last brought its values up to date.

larder-test-writer's "cards" schema drives the writer's clock itself, so the
bounds below sit hours away from the ages they separate."""

import numpy as np
import pytest

import larder
from conftest import run_writer

HOUR = 3_600_000


def cards(seg_dir, stopped_ms=0):
    run_writer("write", "--segment", "cards", "--dir", seg_dir, "--schema", "cards", "--stopped-ms", stopped_ms)
    return larder.open("cards", seg_dir).table("cards")


def test_quiet_key_is_stale_by_event_and_current_by_computation(seg_dir):
    t = cards(seg_dir)
    by_event = t.get("card:1", max_age_ms=HOUR)
    assert by_event.status == larder.Status.STALE  # no transaction in the last hour
    assert by_event["txn_24h"] == 1 and by_event["credit_limit"] == 5000  # still filled
    assert by_event.age_ms >= 2 * HOUR

    row = t.get("card:1", max_age_ms=HOUR, age_of="computed")
    assert row.status == larder.Status.OK
    assert row["txn_24h"] == 1
    # Computed at the writer's last refresh, two hours after the transaction.
    assert row.computed_at_ms - row.event_time_ms == 2 * HOUR
    assert row.computed_at_ms == t.stats()["refreshed_through_ms"]
    assert row.computed_age_ms < row.age_ms
    assert row.computed_age_ms == pytest.approx(larder.now_unix_ms() - row.computed_at_ms, abs=1000)
    # The instant comes with every read, whatever the bound.
    assert t.get("card:1").computed_at_ms == row.computed_at_ms
    assert t.get("card:9").computed_at_ms is None and t.get("card:9").computed_age_ms is None

    keys = ["card:1", "card:2", "card:9"]
    for fields in (["txn_24h", "credit_limit"], None):  # None includes the string: the per-key path
        b = t.get_many(keys, fields=fields, max_age_ms=HOUR)
        assert list(b.status) == [2, 0, 1]
        b = t.get_many(keys, fields=fields, max_age_ms=HOUR, age_of="computed")
        assert list(b.status) == [0, 0, 1]
        assert list(b.computed_at_ms) == [row.computed_at_ms, row.computed_at_ms, 0]
        assert list(b.event_time_ms) == [row.event_time_ms, row.computed_at_ms, 0]
        assert b["txn_24h"][0] == 1
        ages = b.computed_age_ms(row.computed_at_ms + 5)
        assert list(ages) == [5, 5, -1]
    with pytest.raises(larder.InvalidArgumentError, match="'event' or 'computed'"):
        t.get("card:1", max_age_ms=HOUR, age_of="apply")
    with pytest.raises(larder.InvalidArgumentError, match="'event' or 'computed'"):
        t.get_many(keys, age_of="apply")


def test_stopped_writer_fails_the_computed_bound(seg_dir):
    # The writer's last refresh was two hours ago: the computed-at instant
    # stopped there.
    t = cards(seg_dir, stopped_ms=2 * HOUR)
    r = t.get("card:2", max_age_ms=HOUR, age_of="computed")
    assert r.status == larder.Status.STALE
    assert r.computed_at_ms == r.event_time_ms == t.stats()["refreshed_through_ms"]
    assert t.get("card:2", max_age_ms=3 * HOUR, age_of="computed").ok
    b = t.get_many(["card:1", "card:2"], max_age_ms=HOUR, age_of="computed")
    assert list(b.status) == [2, 2]


def test_without_aggregates_computation_is_the_apply(demo):
    users = larder.open("demo", demo).table("users")
    row = users.get("u000009")  # its event is 9 minutes before its apply
    assert row.computed_at_ms == row.apply_unix_ns // 1_000_000
    assert row.computed_at_ms - row.event_time_ms >= 9 * 60_000 - 1000
    # A bound 4.5 minutes above the computed age now separates the two ages
    # for the next 4.5 minutes.
    bound = larder.now_unix_ms() - row.computed_at_ms + 270_000
    assert users.get("u000009", max_age_ms=bound, age_of="computed").ok
    assert users.get("u000009", max_age_ms=bound).status == larder.Status.STALE
    b = users.get_many(np.array([b"u000009", b"u000010"]), fields=["clicks_1h"], age_of="computed")
    assert b.computed_at_ms[0] == row.computed_at_ms and b.computed_at_ms[1] > 0
    assert users.stats()["refreshed_through_ms"] == 0
