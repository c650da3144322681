"""Online/offline parity: an event log goes through the real broker into a
live larder-sidecar; every key is read with the client, with the instant
its values were computed for (Row.computed_at_ms); then
larder.offline.build_frame answers the same (key, instant) pairs from the
same log, with the sidecar's config. The values must be identical, bit for
bit: the arrival order is the same (one publish, one queue, applied in
order online; the same input order offline).

The log has deletes, a stale write, late events (inside and beyond the
allowed lateness), a redelivered event id, transforms, time windows, count
windows, last_n, a window that decays to empty before the read, and
missing values (NaN, None) of inputs whose transforms take them, which
publish sends as JSON null and build_frame passes as null.

Why this is deterministic (docs/offline.md, "Where online and offline can
differ"): offline every event arrives at t_pub, the wall clock just before
publishing, which is before every online apply. The clock at apply then
differs between the two by the seconds the test takes, so no event time is
within minutes of an edge where that could change an outcome: lateness
(1 h), the end of each window at the read instants. The reads wait (on the
writer's refresh counter, not a sleep) until the 2 s window has passed every
event, and then no bucket of any key leaves a window until long after the
test: each row's values and its computed_at_ms describe the same instant."""

import numpy as np
import pandas as pd

import larder
import larder.offline
from conftest import wait_for

TABLE_YAML = """\
  - name: p
    key_max_len: 16
    capacity: 1000
    arena_chunks: 1000
    allowed_lateness: 1h
    fields:
      - {name: amount, type: float64}
      - {name: amount_log, type: float64, from: amount, transform: [{clip: {min: 0, max: 1000}}, log1p]}
      - {name: country, type: string, max_len: 4}
      - {name: country_idx, type: int64, from: country, transform: [{vocabulary: {values: [US, DE, FR]}}]}
      - {name: amount_imp, type: float64, from: amount_in, transform: [{impute: {value: 7.0}}, {clip: {max: 100}}]}
      - {name: tier_idx, type: int64, from: tier,
         transform: [{ordinal: {categories: [gold, silver, ~], unknown_value: -1}}]}
      - {name: tier_oh, type: vector, dims: 3, from: tier,
         transform: [{one_hot: {categories: [gold, silver, ~], handle_unknown: ignore}}]}
    aggregates:
      - {name: sum_1h, source: amount, fn: sum, window: 1h}
      - {name: mean_1h, source: amount, fn: mean, window: 1h}
      - {name: count_1h, source: amount, fn: count, window: 1h}
      - {name: var_1h, source: amount, fn: variance, window: 1h, ddof: 1}
      - {name: max_10m, source: amount, fn: max, window: 10m, resolution: 10s}
      - {name: last_1h, source: amount, fn: last, window: 1h}
      - {name: countries_1h, source: country, fn: distinct_count, window: 1h}
      - {name: sum_2s, source: amount, fn: sum, window: 2s, resolution: 100ms}
      - {name: sum_5, source: amount, fn: sum, window: 5 events, min_periods: 1}
      - {name: std_5, source: amount, fn: std, window: 5 events, min_periods: 2, ddof: 1}
      - {name: seq, source: amount, fn: last_n, n: 4}
"""

MIN = 60_000
SENTINEL = "zz-end"


def event_log(t_pub, seed=20261207):
    """The log, in publish order: (key, event_time, amount, country, id,
    delete, amount_in, tier); amount_in is NaN and tier None now and then."""
    rng = np.random.default_rng(seed)
    rows = []
    draw = object()

    def add(key, t, amount=None, country=None, eid=None, delete=False, amount_in=draw, tier=draw):
        if amount is None and not delete:
            amount = float(rng.normal(50.0, 40.0))
        if country is None and not delete:
            country = str(rng.choice(["US", "DE", "FR", "BR"]))
        if amount_in is draw:
            amount_in = np.nan if delete or rng.random() < 0.3 else float(rng.normal(50.0, 40.0))
        if tier is draw:
            tier = None if delete else [None, "gold", "silver", "bronze"][int(rng.integers(0, 4))]
        rows.append((key, int(t), amount, country, eid or "e%d" % len(rows), delete, amount_in, tier))

    # Event times stay out of the minutes around every edge the test's
    # duration could move: the 10 m and 1 h window starts and the lateness.
    def quiet_time():
        while True:
            t = t_pub - int(rng.integers(1, 50 * MIN))
            if not (t_pub - 12 * MIN < t < t_pub - 8 * MIN):
                return t

    for i in range(30):
        key = "k%02d" % i
        for t in np.sort([quiet_time() for _ in range(int(rng.integers(1, 15)))]):
            add(key, t)
    # Out of order, inside the lateness: counted in its own bucket.
    for i in range(0, 30, 3):
        add("k%02d" % i, t_pub - 30 * MIN - int(rng.integers(0, MIN)))
    # Beyond the lateness (3 h old): no aggregate takes them; the row's
    # fields do when nothing newer was written (k40 has nothing else).
    add("k01", t_pub - 3 * 60 * MIN)
    add("k40", t_pub - 3 * 60 * MIN)
    # A redelivery: the same id twice, counted once.
    add("k02", t_pub - 20 * MIN, eid="dup-1")
    rows.append(rows[-1])
    # Deletes: one rewritten after its delete, one left deleted, and a write
    # older than a delete (stale: ignored).
    add("d1", t_pub - 40 * MIN)
    add("d1", t_pub - 30 * MIN, delete=True)
    add("d1", t_pub - 25 * MIN)
    add("d2", t_pub - 40 * MIN)
    add("d2", t_pub - 30 * MIN, delete=True)
    add("d2", t_pub - 35 * MIN)
    # Decay: events inside the 2 s window when published, out of it at the read.
    add("dk", t_pub - 1500, amount=7.0)
    add("dk", t_pub - 500, amount=5.0)
    # Missing values last: imputed, the null category.
    add("n1", t_pub - 20 * MIN, amount_in=3.0, tier="gold")
    add("n1", t_pub - 15 * MIN, amount_in=np.nan, tier=None)
    return pd.DataFrame(rows, columns=["key", "event_time", "amount", "country", "id", "delete", "amount_in", "tier"])


def test_offline_frame_equals_online_reads(sidecar_factory):
    sc = sidecar_factory(TABLE_YAML)
    seg = sc.start()
    table = seg.table("p")

    t_pub = larder.now_unix_ms()  # before any apply: every event's offline arrival
    log = event_log(t_pub)
    ups = log[~log["delete"]]
    r = larder.publish(log, "p", "key", "event_time", config=sc.config, exchange=sc.exchange, id="id",
                       delete="delete", nan="omit")
    assert r.ok and r.published_rows == len(log), r
    # One queue, applied in order: once the sentinel (published after the
    # log was confirmed) reads back, the whole log has been applied.
    end = pd.DataFrame({"key": [SENTINEL], "event_time": [t_pub - 45 * MIN], "amount": [1.0], "country": ["US"],
                        "id": ["end"], "amount_in": [1.0], "tier": ["gold"]})
    r = larder.publish(end, "p", "key", "event_time", config=sc.config, exchange=sc.exchange, id="id")
    assert r.ok, r
    wait_for(lambda: table.get(SENTINEL).ok, 60, "the log to be applied")
    # Every 2 s window has passed its events.
    wait_for(lambda: table.stats()["refreshed_through_ms"] >= t_pub + 2_200, 60, "the 2 s windows to pass")

    keys = sorted(set(log["key"])) + [SENTINEL]
    fields = [f.name for f in table.fields]
    online = {}
    spine_keys, spine_at = [], []
    for key in keys:
        row = table.get(key)
        at = row.computed_at_ms if row.found else larder.now_unix_ms()
        online[key] = (row.found, row.event_time_ms if row.found else None, at,
                       {name: row.get(name) for name in fields} if row.found else None)
        spine_keys.append(key)
        spine_at.append(at)
    s = table.stats()
    assert s["duplicates"] == 1 and s["late_dropped"] >= 2 and s["stale_ignored"] >= 1, s

    events = pd.concat([log, end.assign(delete=False)], ignore_index=True)
    events["op"] = np.where(events["delete"], "delete", "upsert")
    events = events.drop(columns=["delete"])
    events["arrival_time"] = t_pub
    spine = pd.DataFrame({"key": spine_keys, "timestamp": spine_at})
    frame = larder.offline.build_frame(sc.config, events, spine)
    assert frame.attrs["rejected_events"] == 0
    assert frame.attrs["counters"]["duplicates"] == 1

    checked = 0
    for i, key in enumerate(keys):
        found, event_time, at, values = online[key]
        got = frame.iloc[i]
        assert bool(got["_found"]) == found, key
        if not found:
            assert all(pd.isna(got[name]) if not isinstance(got[name], np.ndarray) else False for name in fields), key
            continue
        assert int(got["_event_time_ms"]) == event_time, key
        assert int(got["_computed_at_ms"]) == at, key
        for name in fields:
            want, have = values[name], got[name]
            if want is None:
                assert have is None or (not isinstance(have, np.ndarray) and pd.isna(have)), (key, name, have)
            elif isinstance(want, np.ndarray):
                assert isinstance(have, np.ndarray) and have.dtype == np.float32, (key, name, have)
                assert have.tobytes() == want.tobytes(), (key, name, have, want)  # bit for bit, NaN padding too
            elif isinstance(want, float):
                assert np.float64(have).tobytes() == np.float64(want).tobytes(), (key, name, have, want)
            else:
                assert have == want, (key, name, have, want)
            checked += 1
    assert checked > 30 * len(fields) // 2
    print("%d values of %d keys identical online and offline" % (checked, len(keys)))

    # The log exercised what it claims: a deleted key, a window that decayed
    # (offline at t_pub the 2 s window held both events; at the read, none).
    assert not online["d2"][0] and online["d1"][0]
    assert online["dk"][3]["sum_2s"] == 0.0 and online["dk"][3]["sum_1h"] == 12.0
    assert online["n1"][3]["amount_imp"] == 7.0 and online["n1"][3]["tier_idx"] == 2
    assert online["n1"][3]["tier_oh"].tolist() == [0.0, 0.0, 1.0]
    early = larder.offline.build_frame(
        sc.config, events, pd.DataFrame({"key": ["dk"], "timestamp": [t_pub]}))
    assert early["sum_2s"][0] == 12.0
    assert len(ups) > 100
