"""Field groups from Python: per-group event times and ages on Row and Batch,
per-group max_age_ms on get and get_many, over the "groups" segment the C++
writer tool writes (client_lib/python/tests/writer_tool.cc, write_grouped_cards)."""

import numpy as np
import pytest

import larder
from conftest import run_writer

DAY = 24 * 3600 * 1000


@pytest.fixture
def cards(seg_dir):
    at = larder.now_unix_ms()
    run_writer("write", "--segment", "cards", "--dir", seg_dir, "--schema", "groups", "--at-ms", at)
    seg = larder.open("cards", dir=seg_dir)
    yield seg.table("cards"), at
    seg.close()


def test_groups_and_their_fields(cards):
    t, _ = cards
    assert t.groups == ("profile", "activity", "default")
    assert t.group_fields("profile") == ["credit_limit"]
    assert t.group_fields("activity") == ["last_amount", "tx_count"]
    assert t.group_fields("default") == ["country"]
    with pytest.raises(larder.GroupNotFoundError, match="profile, activity, default"):
        t.group_fields("billing")


def test_older_update_of_one_group_applies_and_each_group_has_its_age(cards):
    t, at = cards
    row = t.get("card:1")
    assert row.ok
    assert row["credit_limit"] == 3000.0  # three days older than the activity
    assert row["last_amount"] == 12.5
    assert row.event_time_ms == at - 1000
    assert row.group_event_time_ms("profile") == at - 3 * DAY
    assert row.group_event_time_ms("activity") == at - 1000
    assert row.group_event_time_ms("default") is None  # never written
    assert row.group_age_ms("default") is None
    age = row.group_age_ms("profile")
    assert 3 * DAY <= age < 3 * DAY + 600_000
    row2 = t.get("card:2")
    assert row2["last_amount"] == 1.0 and row2["credit_limit"] == 500.0
    assert row2.group_event_time_ms("activity") == at - 3 * DAY
    with pytest.raises(larder.GroupNotFoundError):
        row.group_event_time_ms("billing")


def test_delete_clears_older_groups_only(cards):
    t, at = cards
    row = t.get("card:3")
    assert row.ok
    assert not row.valid("credit_limit")
    assert row["last_amount"] == 7.0
    assert row.group_event_time_ms("profile") == at - 3000
    assert not t.get("card:4").found


def test_per_group_max_age(cards):
    t, _ = cards
    assert t.get("card:1", max_age_ms={"activity": 3_600_000}).status == larder.Status.OK
    stale = t.get("card:1", max_age_ms={"profile": 3_600_000})
    assert stale.status == larder.Status.STALE
    assert stale["credit_limit"] == 3000.0  # filled, as a stale row is
    assert t.get("card:1", max_age_ms={"default": 3_600_000}).status == larder.Status.STALE  # never written
    with pytest.raises(larder.GroupNotFoundError):
        t.get("card:1", max_age_ms={"billing": 1})


def test_get_many_has_a_column_per_group(cards):
    t, at = cards
    keys = ["card:1", "card:2", "card:3", "card:4", "card:9"]
    b = t.get_many(keys, fields=["credit_limit", "last_amount"])
    assert b.groups == ("profile", "activity", "default")
    assert list(b.status) == [0, 0, 0, 1, 1]
    np.testing.assert_array_equal(b.group_event_time_ms("profile"), [at - 3 * DAY, at - 1000, at - 3000, 0, 0])
    np.testing.assert_array_equal(b.group_event_time_ms("activity"), [at - 1000, at - 3 * DAY, at - 2000, 0, 0])
    np.testing.assert_array_equal(b.group_event_time_ms("default"), [0, 0, at - 3000, 0, 0])
    ages = b.group_age_ms("profile", now_ms=at)
    np.testing.assert_array_equal(ages, [3 * DAY, 1000, 3000, -1, -1])
    # Bounds per group, and the values still come from the same read.
    b2 = t.get_many(keys, fields=["credit_limit"], max_age_ms={"profile": 3_600_000})
    assert list(b2.status) == [2, 0, 0, 1, 1]
    assert b2["credit_limit"][0] == 3000.0
    # The string path (a per-key loop) carries the group times too.
    b3 = t.get_many(keys, fields=["country", "last_amount"], max_age_ms={"activity": 3_600_000})
    assert list(b3.status) == [0, 2, 0, 1, 1]
    np.testing.assert_array_equal(b3.group_event_time_ms("activity"), [at - 1000, at - 3 * DAY, at - 2000, 0, 0])


def test_a_table_without_groups(demo):
    seg = larder.open("demo", dir=demo)
    users = seg.table("users")
    assert users.groups == ()
    b = users.get_many(["u000001"])
    assert b.groups == ()
    with pytest.raises(larder.GroupNotFoundError):
        users.get("u000001", max_age_ms={"activity": 1})
    with pytest.raises(larder.GroupNotFoundError):
        users.get_many(["u000001"], max_age_ms={"activity": 1})
