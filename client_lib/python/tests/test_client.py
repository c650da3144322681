"""The Python client against segments written by the C++ writer."""

import math
import os
import random
import struct
import subprocess
import sys

import numpy as np
import pytest

import larder
from conftest import run_writer, skip_or_fail
from expected import age_minutes, item, item_key, user, user_key


@pytest.fixture
def users(demo):
    seg = larder.open("demo", demo)
    yield seg.table("users")
    seg.close()


@pytest.fixture
def items(demo):
    seg = larder.open("demo", demo)
    yield seg.table("items")
    seg.close()


def test_schema_is_visible(users):
    assert users.field_names == ["clicks_1h", "spend_usd", "is_premium", "country", "embedding"]
    f = users.field("embedding")
    assert (f.type, f.count) == (larder.FieldType.VECTOR, 16)
    assert users.field("country").count == 8
    with pytest.raises(larder.NotFoundError, match="has no field 'nope'; it has: clicks_1h"):
        users.field("nope")


def test_typed_values(users, items):
    row = users.get("u000004")
    assert row.status == larder.Status.OK and row.ok and row.found and row
    expect = user(4)
    assert row["clicks_1h"] == expect["clicks_1h"] and type(row["clicks_1h"]) is int
    assert row["spend_usd"] == expect["spend_usd"] and type(row["spend_usd"]) is float
    assert row["is_premium"] is False and users.get("u000003")["is_premium"] is True
    assert row["country"] == "JP" and type(row["country"]) is str
    emb = row["embedding"]
    assert emb.dtype == np.float32 and emb.shape == (16,)
    np.testing.assert_array_equal(emb, expect["embedding"])
    assert not emb.flags.writeable
    it = items.get(b"i00012")  # bytes keys too
    assert it.to_dict() == item(12)
    assert type(it["ctr"]) is float
    assert it.key == b"i00012"


def test_every_row_matches_what_the_writer_wrote(users, items):
    for k in range(1, 501):
        row = users.get(user_key(k))
        expect = user(k)
        assert row.ok, (k, row.status)
        assert set(row.keys()) == set(expect), k
        for name, value in expect.items():
            if name == "embedding":
                np.testing.assert_array_equal(row[name], value)
            else:
                assert row[name] == value, (k, name)
        assert items.get(item_key(k)).to_dict() == item(k)


def test_missing_fields_are_absent_and_invalid(users, items):
    row = users.get("u000077")  # 77 = 7 * 11: no embedding, no country
    assert row.ok
    assert not row.valid("embedding") and not row.valid("country")
    assert row.valid("clicks_1h")
    assert "embedding" not in row and row.get("embedding") is None and row.get("country", "?") == "?"
    with pytest.raises(KeyError, match="never written|has no value"):
        row["embedding"]
    with pytest.raises(KeyError):
        row.valid("no_such_field")
    assert not items.get("i00009").valid("ctr")
    # get_many: NaN (or the missing value asked for) where a field has no value.
    b = users.get_many(["u000077", "u000013"], fields=["spend_usd", "embedding"])
    assert not math.isnan(b["spend_usd"][0]) and math.isnan(b["spend_usd"][1])
    assert np.isnan(b["embedding"][0]).all() and not np.isnan(b["embedding"][1]).any()
    b = users.get_many(["u000013"], fields=["spend_usd"], missing=-1.0)
    assert b.values[0, 0] == -1.0


def test_statuses(users):
    assert users.get("u999999").status == larder.Status.NOT_FOUND
    missing = users.get("u999999")
    assert not missing and not missing.found and missing.event_time_ms is None and missing.age_ms is None
    assert len(missing) == 0 and missing.get("clicks_1h") is None
    assert users.get("x" * 33).status == larder.Status.INVALID_KEY  # key_max_len is 32
    assert users.get("").status == larder.Status.INVALID_KEY
    # Event time of key k is write time - (k % 10) minutes.
    fresh, old = users.get("u000010", max_age_ms=30_000), users.get("u000013", max_age_ms=30_000)
    assert fresh.status == larder.Status.OK
    assert old.status == larder.Status.STALE and old.found and not old.ok
    assert old["clicks_1h"] == user(13)["clicks_1h"]  # a stale row is still filled
    assert 3 * 60_000 <= old.age_ms < 3 * 60_000 + 60_000
    assert old.event_time_ms + old.age_ms == pytest.approx(larder.now_unix_ms(), abs=1000)
    assert users.get("u000013", max_age_ms=1 << 40).status == larder.Status.OK  # int64 ages
    b = users.get_many(["u000010", "u000013", "u999999", "y" * 40], max_age_ms=30_000)
    assert list(b.status) == [0, 2, 1, 4]
    assert list(b.found) == [True, True, False, False] and list(b.ok) == [True, False, False, False]
    assert b.event_time_ms[2] == 0 and b.age_ms()[2] == -1
    assert b.values[1, 0] == user(13)["clicks_1h"] and np.isnan(b.values[2]).all()


def test_ages(users):
    now = larder.now_unix_ms()
    b = users.get_many([user_key(k) for k in range(1, 21)])
    ages = b.age_ms(now)
    minutes = np.array([age_minutes(k) for k in range(1, 21)])
    # Written moments ago; each key's age is its offset plus that.
    assert ((ages - minutes * 60_000) >= 0).all() and ((ages - minutes * 60_000) < 60_000).all()


def test_get_many_agrees_with_get_on_random_keys(users):
    rng = random.Random(20261126)
    print("seed 20261126")
    fields = ["clicks_1h", "spend_usd", "is_premium", "embedding"]
    for trial in range(30):
        n = rng.choice([1, 2, 63, 64, 65, 200, 256, 700])
        ks = [user_key(rng.randint(1, 600)) if rng.random() < 0.9 else "zz%d" % rng.randint(0, 9) for _ in range(n)]
        form = trial % 4
        arg = ks if form == 0 else [k.encode() for k in ks] if form == 1 else np.array(ks, dtype="S") \
            if form == 2 else np.array(ks)
        b = users.get_many(arg, fields=fields)
        assert b.values.shape == (n, 3) and b["embedding"].shape == (n, 16) and len(b) == n
        assert b.columns == ("clicks_1h", "spend_usd", "is_premium")
        for i, key in enumerate(ks):
            row = users.get(key)
            assert b.status[i] == row.status, key
            if not row.found:
                assert np.isnan(b.values[i]).all() and np.isnan(b["embedding"][i]).all()
                continue
            assert b.event_time_ms[i] == row.event_time_ms
            for j, name in enumerate(b.columns):
                v = row.get(name)
                assert (math.isnan(b.values[i, j]) if v is None else b.values[i, j] == float(v)), (key, name)
            if row.valid("embedding"):
                np.testing.assert_array_equal(b["embedding"][i], row["embedding"])
            else:
                assert np.isnan(b["embedding"][i]).all()


def test_get_many_key_forms_and_defaults(users, items):
    b = users.get_many([])
    assert b.values.shape == (0, 3) and b.status.shape == (0,)
    b = users.get_many(["u000001", b"u000002"])  # mixed str and bytes
    assert list(b.status) == [0, 0]
    b = users.get_many([b"u000001", b"u0\x0000002"])  # a key holding a NUL byte
    assert list(b.status) == [0, 1]
    b = users.get_many(["u000001"])  # default: every field, strings too
    assert b.columns == ("clicks_1h", "spend_usd", "is_premium") and set(b.vectors) == {"embedding"}
    assert set(b.strings) == {"country"} and b["country"][0] == user(1).get("country")
    b = items.get_many(["i00001", "i00002"], fields=("price", "ctr"))
    assert b.values.dtype == np.float64
    assert b["price"].tolist() == [item(1)["price"], item(2)["price"]]
    assert b["ctr"][0] == pytest.approx(item(1)["ctr"])
    b = users.get_many(["u000001"], fields=["country"])
    assert b.columns == () and b["country"].dtype == object
    with pytest.raises(larder.NotFoundError):
        users.get_many(["u000001"], fields=["nope"])
    with pytest.raises(TypeError, match="dtype 'S' \\(bytes\\) or 'U' \\(str\\), not int64"):
        users.get_many(np.array([1, 2]))
    with pytest.raises(larder.InvalidArgumentError, match="not one key"):
        users.get_many("u000001")


def test_open_errors(seg_dir, demo):
    with pytest.raises(larder.NotFoundError) as e:
        larder.open("no-such-segment", seg_dir)
    assert "no-such-segment" in str(e.value) and e.value.code == 2
    assert isinstance(e.value, larder.LarderError)
    seg = larder.open("demo", demo)
    with pytest.raises(larder.NotFoundError, match="users"):
        seg.table("nope")  # names the tables there are
    with pytest.raises(larder.InvalidArgumentError):
        larder.open("../etc/passwd", seg_dir)
    seg.close()
    seg.close()  # idempotent


def _patch(path, offset, fmt, value):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


def test_version_mismatch_names_both_versions(demo):
    path = os.path.join(demo, "demo")
    with open(path, "rb") as f:
        f.seek(8)  # SegmentHeader.layout_version
        (version,) = struct.unpack("<I", f.read(4))
    _patch(path, 8, "<I", version + 1)
    with pytest.raises(larder.VersionMismatchError,
                       match="v%d.*v%d.*upgrade the client" % (version + 1, version)) as e:
        larder.open("demo", demo)
    assert e.value.code == 4 and e.value.message


def test_segment_still_being_created(demo):
    _patch(os.path.join(demo, "demo"), 112, "<I", 0)  # SegmentHeader.state = creating
    with pytest.raises(larder.NotReadyError):
        larder.open("demo", demo)


def test_permission_denied_is_a_permission_error(demo):
    if os.geteuid() != 0:
        skip_or_fail("needs root to read as user nobody")
    code = ("import larder\n"
            "try:\n"
            "    larder.open('demo', %r)\n"
            "except PermissionError as e:\n"
            "    assert isinstance(e, larder.PermissionDeniedError) and isinstance(e, larder.LarderError)\n"
            "    print('refused:', e)\n" % demo)

    def drop():
        os.setgid(65534)
        os.setuid(65534)

    pkg = os.path.dirname(os.path.dirname(larder.__file__))
    env = dict(os.environ, PYTHONPATH=pkg)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=drop, env=env,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "refused:" in out.stdout and "permission denied" in out.stdout


def test_segment_info(demo):
    with larder.open("demo", demo) as seg:
        info = seg.info()
        assert info["layout_version"] == 5 and info["state"] == 1 and info["state"] is larder.SegmentState.READY
        assert info["writer_pid"] == 0  # the writer tool has exited
        assert not seg.writer_alive()
    with pytest.raises(larder.InvalidArgumentError, match="closed"):
        seg.info()


def test_sync_state_and_positions(demo):
    with larder.open("demo", demo) as seg:
        assert seg.state is larder.SyncState.UNKNOWN  # a plain writer reports nothing
        assert seg.sync() == {"state": larder.SyncState.UNKNOWN, "source_id": "", "changed_unix_ns": 0,
                              "partitions": []}
    run_writer("sync", "--segment", "demo", "--dir", demo)
    with larder.open("demo", demo) as seg:
        assert seg.state is larder.SyncState.CATCHING_UP
        s = seg.sync()
        assert s["state"] is larder.SyncState.CATCHING_UP
        assert s["source_id"] == "amqp / stream features.stream"
        assert s["changed_unix_ns"] > 0
        assert s["partitions"] == [
            {"partition": 0, "next_offset": 1234, "skip_updates": 2, "target": 5000, "first_retained": None},
            {"partition": 1, "next_offset": None, "skip_updates": 0, "target": None, "first_retained": 77},
        ]
    run_writer("sync", "--segment", "demo", "--dir", demo, "--seed", 3)
    with larder.open("demo", demo) as seg:
        assert seg.state is larder.SyncState.INCOMPLETE
        seg.close()
        with pytest.raises(larder.InvalidArgumentError, match="closed"):
            seg.state


def test_rows_outlive_their_table(demo):
    seg = larder.open("demo", demo)
    table = seg.table("users")
    row = table.get("u000001")
    b = seg.table("users").get_many(["u000001"])
    seg.close()
    assert row["clicks_1h"] == user(1)["clicks_1h"] and b.values[0, 0] == user(1)["clicks_1h"]
    with pytest.raises(larder.InvalidArgumentError):
        seg.table("users")
    with pytest.raises(larder.InvalidArgumentError, match="closed"):
        table.get("u000001")
    with pytest.raises(larder.InvalidArgumentError, match="closed"):
        table.get_many(["u000001"])


def test_library_search_order(monkeypatch):
    from larder import _native
    monkeypatch.setenv("LARDER_LIBRARY", "/nonexistent/liblarder.so")
    paths, names = _native.candidates()
    assert paths[0] == "/nonexistent/liblarder.so" and names[0] == "liblarder.so"
    assert paths[1].endswith(os.path.join("larder", "liblarder.so"))
    assert os.path.exists(larder.library_path())


def test_offline_library_search_order(monkeypatch):
    # The same search as liblarder.so's (_libsearch.py), with its own name,
    # variable and build directory.
    from larder import _libsearch, _offline_native
    monkeypatch.setenv("LARDER_OFFLINE_LIBRARY", "/nonexistent/liblarder_offline.so")
    monkeypatch.setenv("LARDER_BUILD_DIR", "/build-dir")
    paths, names = _offline_native.candidates()
    assert paths[0] == "/nonexistent/liblarder_offline.so"
    assert paths[1].endswith(os.path.join("larder", "liblarder_offline.so"))
    assert paths[2] == "/build-dir/offline/liblarder_offline.so"
    assert names == ["liblarder_offline.so", "liblarder_offline.so.0"]
    with pytest.raises(OSError, match="LARDER_OFFLINE_LIBRARY=/nonexistent/liblarder_offline.so does not exist"):
        _libsearch.find("liblarder_offline.so", "LARDER_OFFLINE_LIBRARY", "offline", "larder_offline_shared")


def test_open_options_and_stats(demo):
    seg = larder.open("demo", demo)
    info = seg.info()
    assert info["state"] == 1 and info["table_count"] == 2 and info["writer_pid"] == 0
    assert info["segment_bytes"] > 0 and info["writer_sessions"] >= 1 and info["created_unix_ns"] > 0
    assert info["sync_state"] == larder.SyncState.UNKNOWN
    assert seg.table_names == ["users", "items"]
    fp = info["schema_fingerprint"]
    assert larder.open("demo", demo, expected_schema_fingerprint=fp).table("users").get("u000001").ok
    with pytest.raises(larder.SchemaMismatchError, match="%016x" % (fp ^ 1)):
        larder.open("demo", demo, expected_schema_fingerprint=fp ^ 1)
    assert larder.open("demo", demo, max_retries=1).table("users").get("u000002").ok
    assert larder.abi_version() == (1, 2)

    users = seg.table("users")
    st = users.stats()
    assert st["capacity"] == 20000 and st["live_keys"] == 500 and st["tombstones"] == 0
    assert st["slot_count"] >= st["capacity"] and st["upserts"] >= 500
    now = larder.now_unix_ms()
    assert 0 < st["max_event_time_ms"] <= now and 0 < st["last_apply_unix_ns"] // 1_000_000 <= now
    row = users.get("u000042")
    assert row.stored_key == b"u000042" and row.event_time_ms > 0 and row.apply_unix_ns > 0
    assert users.get("u999999").stored_key is None
    seg.close()
    with pytest.raises(larder.InvalidArgumentError, match="closed"):
        users.stats()
    # A row read before close keeps its table handle: its values and times stay readable.
    assert row.stored_key == b"u000042" and row["clicks_1h"] == user(42)["clicks_1h"]
