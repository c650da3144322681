"""larder.offline.build_frame against the pandas code a data scientist would
write for the same features, on random data (no broker: the offline engine
in liblarder_offline.so).

- Plain fields: last write wins per key, joined with
  merge_asof(direction="backward") on the spine's instant.
- Time windows: rolling("1h") over each key's events and the spine's
  instants (NaN rows), read at the spine rows, so the window ends at the
  instant as Larder's does (it decays).
- Count windows: rolling(10) over each key's events, joined backward.

The one intentional difference: Larder's time windows are made of buckets
(here 1 minute), so events are stamped on bucket boundaries, where a bucket
window and pandas' (T - 1h, T] hold the same events for any instant T
(docs/offline.md, "Bucket resolution"). Empty time windows: Larder's sum
and count read 0, pandas' NaN (fillna(0)). Tolerance 1e-9 relative (plus
1e-9 absolute, for sums that cancel); float32 fields to float32 rounding."""

import os

import numpy as np
import pandas as pd
import pytest

import larder
import larder.offline as off

MINUTE = 60_000
HOUR = 60 * MINUTE
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
N, M = 10, 3

CONFIG = """\
segment: {name: offline-parity}
tables:
  - name: t
    key_max_len: 16
    capacity: 1000
    arena_chunks: 2000
    fields:
      - {name: v, type: float64}
      - {name: n, type: int64}
      - {name: f, type: float32}
      - {name: flag, type: bool}
      - {name: s, type: string, max_len: 8}
      - {name: emb, type: vector, dims: 3}
    aggregates:
      - {name: sum_1h, source: x, fn: sum, window: 1h, resolution: 1m}
      - {name: mean_1h, source: x, fn: mean, window: 1h, resolution: 1m}
      - {name: count_1h, source: x, fn: count, window: 1h, resolution: 1m}
      - {name: min_1h, source: x, fn: min, window: 1h, resolution: 1m}
      - {name: max_1h, source: x, fn: max, window: 1h, resolution: 1m}
      - {name: var_1h, source: x, fn: variance, window: 1h, resolution: 1m, ddof: 1}
      - {name: std0_1h, source: x, fn: stddev, window: 1h, resolution: 1m}
      - {name: sum_n, source: x, fn: sum, window: %(n)d events, min_periods: %(m)d}
      - {name: mean_n, source: x, fn: mean, window: %(n)d events}
      - {name: var_n, source: x, fn: var, window: %(n)d events, min_periods: %(m)d, ddof: 1}
      - {name: std_n, source: x, fn: std, window: %(n)d events, min_periods: %(m)d, ddof: 1}
      - {name: min_n, source: x, fn: min, window: %(n)d events, min_periods: %(m)d}
      - {name: max_n, source: x, fn: max, window: %(n)d events, min_periods: %(m)d}
      - {name: count_n, source: x, fn: count, window: %(n)d events, min_periods: %(m)d}
rabbitmq:
  url: amqp://guest@127.0.0.1:1/
  password_env: LARDER_OFFLINE_TEST_UNUSED
  queue: {name: q}
""" % {"n": N, "m": M}

TIME_WINDOWS = ["sum_1h", "mean_1h", "count_1h", "min_1h", "max_1h", "var_1h", "std0_1h"]
COUNT_WINDOWS = ["sum_n", "mean_n", "var_n", "std_n", "min_n", "max_n", "count_n"]


@pytest.fixture
def config(tmp_path):
    p = tmp_path / "offline.yaml"
    p.write_text(CONFIG)
    return str(p)


def random_data(seed, keys=40, spine_rows=400):
    rng = np.random.default_rng(seed)
    names = np.array(["ab", "cd", "ef", "日本"], dtype=object)
    parts = []
    for i in range(keys):
        n = int(rng.integers(1, 70))
        # Distinct minutes per key over 5 hours: one order for both, bucket
        # boundaries for the time windows.
        minutes = np.sort(rng.choice(300, size=n, replace=False))
        parts.append(pd.DataFrame({"key": "k%02d" % i, "event_time": T0 + minutes * MINUTE}))
    ev = pd.concat(parts, ignore_index=True)
    n = len(ev)
    ev["x"] = rng.normal(5.0, 10.0, n)
    ev["v"] = rng.normal(size=n)
    ev["n"] = rng.integers(-1000, 1000, n)
    ev["f"] = rng.normal(size=n).astype(np.float32)
    ev["flag"] = rng.integers(0, 2, n).astype(bool)
    ev["s"] = rng.choice(names, n)
    ev["emb"] = list(rng.normal(size=(n, 3)))
    ev = ev.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # any order: the engine sorts
    spine = pd.DataFrame({
        "key": rng.choice(["k%02d" % i for i in range(keys + 2)], spine_rows),  # 2 keys without events
        # Any millisecond, from before the first event to after the last window.
        "timestamp": pd.to_datetime(T0 - HOUR + rng.integers(0, 7 * HOUR, spine_rows), unit="ms"),
        "label": rng.integers(0, 2, spine_rows),
    })
    return ev, spine


def close(got, want, rtol=1e-9, atol=1e-9):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    both_nan = np.isnan(got) & np.isnan(want)
    ok = both_nan | (np.abs(got - want) <= rtol * np.abs(want) + atol)
    return ok


def assert_close(frame, name, want, **tol):
    got = frame[name].astype("float64").to_numpy()
    ok = close(got, want, **tol)
    bad = np.flatnonzero(~ok)
    assert not len(bad), "%s: %d of %d rows differ, e.g. row %d: larder %r, pandas %r" % (
        name, len(bad), len(ok), bad[0], got[bad[0]], want[bad[0]])


def pandas_plain_and_count_windows(ev, spine):
    """merge_asof of each event's values and count-window aggregates onto the spine."""
    ev = ev.sort_values(["key", "event_time"], kind="stable").reset_index(drop=True)
    g = ev.groupby("key", sort=True)["x"]
    w = g.rolling(N, min_periods=M)
    ev["sum_n"] = w.sum().to_numpy()
    ev["mean_n"] = g.rolling(N).mean().to_numpy()
    ev["var_n"] = w.var().to_numpy()
    ev["std_n"] = w.std().to_numpy()
    ev["min_n"] = w.min().to_numpy()
    ev["max_n"] = w.max().to_numpy()
    ev["count_n"] = w.count().to_numpy()
    ev["ts"] = pd.to_datetime(ev["event_time"], unit="ms")
    sp = spine.reset_index().rename(columns={"index": "row"}).sort_values("timestamp", kind="stable")
    joined = pd.merge_asof(sp, ev.sort_values("ts", kind="stable"), left_on="timestamp", right_on="ts", by="key",
                           direction="backward")
    return joined.sort_values("row").reset_index(drop=True)


def pandas_time_windows(ev, spine):
    """rolling("1h") over each key's events and spine instants together; the
    spine rows (x = NaN, after the events of the same instant) read the
    window (T - 1h, T]."""
    a = pd.DataFrame({"key": ev["key"], "ts": pd.to_datetime(ev["event_time"], unit="ms"), "x": ev["x"],
                      "row": -1})
    b = pd.DataFrame({"key": spine["key"], "ts": spine["timestamp"], "x": np.nan, "row": np.arange(len(spine))})
    both = pd.concat([a, b], ignore_index=True)
    both["is_spine"] = both["row"] >= 0
    both = both.sort_values(["key", "ts", "is_spine"], kind="stable").reset_index(drop=True)
    r = both.set_index("ts").groupby("key", sort=True)["x"].rolling("1h")
    out = {
        "sum_1h": r.sum().fillna(0.0), "mean_1h": r.mean(), "count_1h": r.count().fillna(0.0),
        "min_1h": r.min(), "max_1h": r.max(), "var_1h": r.var(), "std0_1h": r.std(ddof=0),
    }
    res = pd.DataFrame({k: v.to_numpy() for k, v in out.items()})
    res["row"] = both["row"].to_numpy()
    return res[res["row"] >= 0].sort_values("row").reset_index(drop=True)


def test_frame_equals_pandas(config):
    ev, spine = random_data(20261207)
    frame = off.build_frame(config, ev, spine)

    # The spine's columns and index first, in spine order; then the fields.
    assert list(frame.columns[:3]) == ["key", "timestamp", "label"]
    assert frame.index.equals(spine.index)
    assert (frame["label"].to_numpy() == spine["label"].to_numpy()).all()
    assert frame.attrs["rejected_events"] == 0
    assert frame.attrs["counters"]["events"] == len(ev)
    assert list(frame.columns[3:]) == ["v", "n", "f", "flag", "s", "emb"] + TIME_WINDOWS + COUNT_WINDOWS + [
        "_found", "_event_time_ms", "_computed_at_ms"]
    assert str(frame["n"].dtype) == "Int64" and str(frame["flag"].dtype) == "boolean"
    assert frame["f"].dtype == np.float32 and frame["v"].dtype == np.float64
    assert str(frame["count_1h"].dtype) == "Int64" and str(frame["_computed_at_ms"].dtype) == "Int64"

    want = pandas_plain_and_count_windows(ev, spine)
    found = want["ts"].notna().to_numpy()
    assert found.any() and not found.all()
    assert (frame["_found"].to_numpy() == found).all()
    assert (frame["_event_time_ms"].to_numpy(dtype=np.float64, na_value=np.nan)[found] ==
            want["event_time"].to_numpy()[found]).all()
    assert frame["_event_time_ms"][~found].isna().all()
    # Plain fields: exactly the last event's values.
    assert_close(frame, "v", want["v"], rtol=0, atol=0)
    assert_close(frame, "n", want["n"], rtol=0, atol=0)
    assert_close(frame, "f", want["f"].astype(np.float32), rtol=0, atol=0)
    assert (frame["flag"][found].to_numpy(dtype=bool) == want["flag"][found].to_numpy(dtype=bool)).all()
    assert frame["flag"][~found].isna().all()
    assert list(frame["s"][found]) == list(want["s"][found]) and frame["s"][~found].isna().all()
    emb = np.stack(frame["emb"][found].to_list())
    assert emb.dtype == np.float32
    np.testing.assert_array_equal(emb, np.stack(want["emb"][found].to_list()).astype(np.float32))
    assert frame["emb"][~found].isna().all()

    # Count windows: pandas' rolling(N) at each key's newest event before the
    # instant; no event yet: not valid (NaN), as pandas' join gives.
    for name in COUNT_WINDOWS:
        assert_close(frame, name, want[name])

    # Time windows end at the spine's instant.
    tw = pandas_time_windows(ev, spine)
    tw.loc[~found, TIME_WINDOWS] = np.nan  # a key not written yet reads nothing, not an empty window
    for name in TIME_WINDOWS:
        assert_close(frame, name, tw[name])
    # The random instants cover every case: windows holding events, windows
    # that emptied (decayed after the key's last event), keys without events.
    count = frame["count_1h"].to_numpy(dtype=np.float64, na_value=np.nan)
    assert ((count > 1) & found).any() and ((count == 0) & found).any() and (~found).any()
    # Every row is computed for its own instant: a read at T reads as of T.
    at = spine["timestamp"].to_numpy().astype("datetime64[ms]").astype(np.int64)
    assert (frame["_computed_at_ms"].to_numpy(dtype=np.float64, na_value=np.nan)[found] == at[found]).all()


def test_dict_of_numpy_columns_gives_the_same_frame(config):
    ev, spine = random_data(7, keys=10, spine_rows=50)
    frame = off.build_frame(config, ev, spine)
    ev_cols = {c: ev[c].to_numpy() for c in ev.columns}
    ev_cols["emb"] = np.stack(ev["emb"].to_list())  # a 2-D array: one row per event
    sp_cols = {"key": spine["key"].to_numpy(),
               "timestamp": spine["timestamp"].to_numpy().astype("datetime64[ms]").astype(np.int64),
               "label": spine["label"].to_numpy()}
    other = off.build_frame(config, ev_cols, sp_cols)
    for name in frame.attrs["fields"] + ["_found", "_event_time_ms", "_computed_at_ms"]:
        a, b = frame[name], other[name]
        if name in ("emb",):
            assert [None if x is None else x.tolist() for x in a] == [None if x is None else x.tolist() for x in b]
        else:
            pd.testing.assert_series_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_names=False)


def test_partitions_union_equals_one_frame(config):
    ev, spine = random_data(11, keys=30, spine_rows=200)
    whole = off.build_frame(config, ev, spine)
    parts = [off.build_frame(config, ev, spine, partition=(i, 4)) for i in range(4)]
    assert sum(len(p) for p in parts) == len(whole)
    assert all(0 < len(p) < len(whole) for p in parts)
    # A key belongs to one partition.
    assert not set.intersection(*[set(p["key"]) for p in parts])
    union = pd.concat(parts).sort_index()
    assert union.index.equals(whole.index)
    pd.testing.assert_frame_equal(union.drop(columns=["emb"]), whole.drop(columns=["emb"]))
    assert off.build_frame(config, ev, spine, partition="1/4").index.equals(parts[1].index)


def test_arrival_time_orders_the_replay(config):
    # The same key written twice; the older write arrives last. By event time
    # the newer value wins whatever the order (last write wins), but a spine
    # instant between the two arrivals sees only what had arrived.
    ev = pd.DataFrame({"key": ["a", "a"], "event_time": [T0 + 2 * MINUTE, T0 + MINUTE], "v": [2.0, 1.0],
                       "arrival_time": [T0 + 5 * MINUTE, T0 + 10 * MINUTE]})
    spine = pd.DataFrame({"key": ["a"] * 4, "timestamp": [T0 + 3 * MINUTE, T0 + 5 * MINUTE, T0 + 7 * MINUTE,
                                                          T0 + 11 * MINUTE]})
    f = off.build_frame(config, ev, spine)
    # Before its arrival the first write does not exist: never an event later than the instant.
    assert f["_found"].tolist() == [False, True, True, True]
    assert f["v"].tolist()[1:] == [2.0, 2.0, 2.0]
    # Without arrival times, arrival is the event time.
    f = off.build_frame(config, ev.drop(columns=["arrival_time"]), spine)
    assert f["_found"].tolist() == [True] * 4
    # The same through arrival_time= (an array).
    f2 = off.build_frame(config, ev.drop(columns=["arrival_time"]), spine, arrival_time=ev["arrival_time"].to_numpy())
    assert f2["_found"].tolist() == [False, True, True, True]


def test_deletes_ids_and_refusals(config):
    ev = pd.DataFrame({
        "key": ["a", "a", "a", "a", "b", "b"],
        "event_time": T0 + np.array([1, 2, 3, 4, 1, 1]) * MINUTE,
        "op": ["upsert", "upsert", "delete", "upsert", "upsert", "upsert"],
        "id": ["e1", "e2", "e3", "e4", "e5", "e5"],  # e5 twice: a redelivery
        "x": [1.0, 2.0, np.nan, 4.0, 5.0, 5.0],
    })
    spine = pd.DataFrame({"key": ["a", "a", "a", "b"],
                          "timestamp": T0 + np.array([2, 3, 4, 2]) * MINUTE})
    f = off.build_frame(config, ev, spine)
    assert f["_found"].tolist() == [True, False, True, True]
    # A delete forgets the key's events: the aggregates start again.
    assert f["sum_1h"].tolist()[0] == 3 and f["sum_1h"][2] == 4
    assert f["count_1h"][3] == 1  # the duplicate id is not counted twice
    assert f.attrs["counters"]["duplicates"] == 1

    # An event the sidecar would dead-letter (a key longer than key_max_len)
    # is counted, and the frame says so.
    bad = pd.concat([ev, pd.DataFrame({"key": ["x" * 40], "event_time": [T0], "op": ["upsert"], "id": ["e9"],
                                       "x": [1.0]})], ignore_index=True)
    with pytest.warns(UserWarning, match="refused"):
        f = off.build_frame(config, bad, spine)
    assert f.attrs["rejected_events"] == 1


def test_clear_errors(config):
    ev = pd.DataFrame({"key": ["a"], "event_time": [T0], "x": [1.0], "label": [1]})
    spine = pd.DataFrame({"key": ["a"], "timestamp": [T0]})
    with pytest.raises(larder.InvalidArgumentError, match="'label' is no input"):
        off.build_frame(config, ev, spine)
    with pytest.raises(larder.InvalidArgumentError, match="an aggregate the sidecar computes"):
        off.build_frame(config, ev.drop(columns=["label"]).assign(sum_1h=1.0), spine)
    with pytest.raises(larder.InvalidArgumentError, match="no 'timestamp' column"):
        off.build_frame(config, ev.drop(columns=["label"]), spine.rename(columns={"timestamp": "ts"}))
    with pytest.raises(larder.InvalidArgumentError, match="the spine has a column 'v'"):
        off.build_frame(config, ev.drop(columns=["label"]), spine.assign(v=1))
    with pytest.raises(larder.NotFoundError, match="missing.yaml"):
        off.build_frame(os.path.join(os.path.dirname(config), "missing.yaml"), ev.drop(columns=["label"]), spine)
    with pytest.raises(off.OfflineError, match="no table"):
        off.build_frame(config, ev.drop(columns=["label"]), spine, table="nope")



def test_table_columns_and_aware_times(tmp_path):
    # Two tables: the spine names one, the other's events are left out; event
    # times and instants may be aware datetimes in any zone.
    config = tmp_path / "two.yaml"
    config.write_text("tables:\n"
                      "  - {name: a, capacity: 100, fields: [{name: v, type: float64}]}\n"
                      "  - {name: b, capacity: 100, fields: [{name: w, type: int64}]}\n")
    t = pd.Timestamp(T0, unit="ms", tz="UTC")
    ev = pd.DataFrame({"table": ["a", "b", "a"], "key": ["k", "k", "k"],
                       "event_time": [t, t, t + pd.Timedelta(minutes=1)], "v": [1.0, np.nan, 2.0]})
    spine = pd.DataFrame({"table": ["a", "a"], "key": ["k", "k"],
                          "timestamp": [(t + pd.Timedelta(seconds=30)).tz_convert("Europe/Berlin"),
                                        (t + pd.Timedelta(minutes=1)).tz_convert("America/New_York")]})
    f = off.build_frame(str(config), ev, spine)
    assert f["v"].tolist() == [1.0, 2.0]
    assert f["_event_time_ms"].tolist() == [T0, T0 + MINUTE]
    assert f.attrs["counters"]["events"] == 2  # table b's event is not read
    with pytest.raises(larder.InvalidArgumentError, match="2 tables"):
        off.build_frame(str(config), ev, spine.assign(table=["a", "b"]))
    with pytest.raises(larder.InvalidArgumentError, match="has 2 tables"):
        off.build_frame(str(config), ev, spine.drop(columns=["table"]))
