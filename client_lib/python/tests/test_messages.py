"""What the Python API says when it is used wrongly: every error names what
exists and what to do, enums print their names, and get_many returns
string fields."""

import math
import os

import numpy as np
import pytest

import larder
from expected import item, user, user_key


@pytest.fixture
def seg(demo):
    s = larder.open("demo", demo)
    yield s
    s.close()


def test_unknown_field_in_a_row_lists_the_fields(seg):
    row = seg.table("users").get("u000004")
    with pytest.raises(KeyError) as e:
        row["amout"]
    assert isinstance(e.value, larder.FieldNotFoundError) and isinstance(e.value, larder.NotFoundError)
    assert str(e.value) == ("table 'users' has no field 'amout'; it has: clicks_1h, spend_usd, is_premium, "
                            "country, embedding")
    with pytest.raises(larder.FieldNotFoundError, match="has no field 'amout'; it has: clicks_1h"):
        row.valid("amout")
    assert row.get("amout") is None  # a mapping's get: no error


def test_a_field_without_a_value_says_so_and_how_to_default(seg):
    row = seg.table("users").get("u000077")  # 77 = 7 * 11: no embedding
    with pytest.raises(KeyError) as e:
        row["embedding"]
    assert isinstance(e.value, larder.NoValueError)
    assert str(e.value) == ("table 'users': field 'embedding' has no value for key 'u000077' (status OK); "
                            "row.get('embedding') returns None instead")


def test_unknown_table_lists_the_tables(seg):
    with pytest.raises(larder.NotFoundError) as e:
        seg.table("user")
    assert "has no table \"user\" (tables: users, items)" in str(e.value)
    assert 'Use segment.table("<one of them>")' in str(e.value)


def test_segment_not_found_names_the_directory_and_dir(seg_dir, demo):
    with pytest.raises(larder.NotFoundError) as e:
        larder.open("features", seg_dir)
    msg = str(e.value)
    assert msg == ("no segment 'features' in %r (segments there: demo). Is the sidecar running with segment.name "
                   "'features'? If its segment.dir is another directory, pass it: "
                   "larder.open('features', dir=\"/path/to/dir\")" % seg_dir)
    assert "ClientOptions" not in msg and e.value.code == 2
    missing = os.path.join(seg_dir, "nope")
    with pytest.raises(larder.NotFoundError, match="cannot list the directory .*nope.*dir=") as e:
        larder.open("features", missing)


def test_segment_not_found_in_an_empty_directory(seg_dir):
    with pytest.raises(larder.NotFoundError, match=r"\(no Larder segment is there\)"):
        larder.open("features", seg_dir)


def test_key_types_name_what_is_accepted(seg):
    cards = seg.table("users")
    with pytest.raises(TypeError) as e:
        cards.get(7)
    assert str(e.value) == ("table 'users': a key is str or bytes, not int (7). Keys are the strings producers "
                            "sent; for a number, pass its text as the producer wrote it, e.g. str(7)")
    with pytest.raises(TypeError, match="a key is str or bytes, not NoneType"):
        cards.get(None)
    with pytest.raises(TypeError, match="a key is str or bytes, not int"):
        cards.get_many([user_key(1), 7], fields=["clicks_1h"])
    with pytest.raises(TypeError, match="a key is str or bytes, not float"):
        cards.get_many([1.5])  # the row path (string fields) checks too
    with pytest.raises(TypeError, match="e.g. keys.astype\\(str\\)"):
        cards.get_many(np.arange(3), fields=["clicks_1h"])
    with pytest.raises(TypeError, match="name is a str, not int"):
        seg.table(3)
    assert cards.get(user_key(1)).ok and cards.get(user_key(1).encode()).ok


def test_enums_print_their_names(seg):
    assert str(larder.Status.STALE) == "STALE" and f"{larder.Status.STALE}" == "STALE"
    assert "%s" % larder.Status.NOT_FOUND == "NOT_FOUND"
    assert f"{larder.Status.STALE:d}" == "2" and int(larder.Status.STALE) == 2 and larder.Status.STALE == 2
    assert str(larder.SyncState.CATCHING_UP) == "CATCHING_UP"
    assert str(larder.FieldType.VECTOR) == "VECTOR"
    info = seg.info()
    assert info["state"] is larder.SegmentState.READY and str(info["state"]) == "READY"
    # The writer tool detached: a stopped writer stores STOPPED.
    assert info["connection"] is larder.ConnectionState.STOPPED and str(info["connection"]) == "STOPPED"
    assert info["state"] == 1  # still the number
    row = seg.table("users").get("nope")
    assert str(row.status) == "NOT_FOUND"


def test_get_many_returns_string_fields(seg):
    users, items = seg.table("users"), seg.table("items")
    keys = [user_key(k) for k in range(1, 60)] + ["zz-missing"]
    b = users.get_many(keys, fields=["clicks_1h", "country", "embedding", "spend_usd"], max_age_ms=0)
    assert b.columns == ("clicks_1h", "spend_usd") and list(b.strings) == ["country"]
    assert b["country"].dtype == object and b["country"].shape == (len(keys),)
    for i, key in enumerate(keys):
        row = users.get(key)
        assert b.status[i] == row.status
        assert b["country"][i] == row.get("country"), key  # None where missing
        if not row.found:
            assert b.event_time_ms[i] == 0 and np.isnan(b.values[i]).all() and np.isnan(b["embedding"][i]).all()
            continue
        assert b.event_time_ms[i] == row.event_time_ms
        for name in b.columns:
            v = row.get(name)
            assert (math.isnan(b[name][i]) if v is None else b[name][i] == float(v)), (key, name)
        if row.valid("embedding"):
            np.testing.assert_array_equal(b["embedding"][i], row["embedding"])
        else:
            assert np.isnan(b["embedding"][i]).all()
    assert b["country"][10] is None and user(11).get("country") is None  # 11: never written
    # Every key form, and the default (every field) on a table of strings.
    for form in (keys, [k.encode() for k in keys], np.array(keys, dtype="S"), np.array(keys)):
        assert list(users.get_many(form, fields=["country"])["country"]) == list(b["country"])
    bi = items.get_many(["i00001", "i00002"])
    assert list(bi["category"]) == [item(1)["category"], item(2)["category"]]
    with pytest.raises(larder.FieldNotFoundError, match="this batch has no field 'countri'; it holds: clicks_1h"):
        b["countri"]
