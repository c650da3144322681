#!/usr/bin/env python3
"""larder.offline.build_frame against the equivalent pandas code, on the
same data, in the same run.

    /usr/bin/python3 bench/python/bench_offline.py [--events 200000] [--keys 10000] [--spine 20000]
                                                   [--coarse]

The data: --events events of --keys keys over one day (a float `amount`
each), and a spine of --spine (key, instant) rows. The features: sum, mean
and count of `amount` over 5 minutes, 1 hour and 1 day (3 aggregates x 3
windows), each ending at the spine's instant.
  - larder: build_frame from DataFrames (column conversion, the engine's
            replay and reads, the DataFrame out);
  - pandas: what one writes without it: the events and the spine's instants
            (amount NaN) in one frame sorted by key and time,
            groupby("key").rolling(window) sum/mean/count for each window,
            the spine's rows taken back in spine order.
Prints events/s of each and the ratio, and the largest relative difference
between the two frames' counts (which agree exactly where the window's
bucket edges and pandas' (T - w, T] hold the same events: the bench stamps
events on whole minutes, so at the default resolution only the 1-day
window, 24-minute buckets, may differ, and with --coarse the 1 h window
too; docs/offline.md, "Bucket resolution").
"""

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "client_lib", "python"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import larder.offline  # noqa: E402

WINDOWS = [("5m", "5min"), ("1h", "1h"), ("1d", "1d")]
COARSE = {"5m": "1m", "1h": "10m", "1d": "3h"}
FNS = ["sum", "mean", "count"]
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MIN = 60_000

CONFIG = """\
tables:
  - name: users
    key_max_len: 16
    capacity: %(capacity)d
    arena_chunks: %(chunks)d
    fields: [{name: tier, type: int64}]
    aggregates:
%(aggregates)s
"""


def data(events, keys, spine_rows, seed=1):
    rng = np.random.default_rng(seed)
    ev = pd.DataFrame({
        "key": np.char.add("u", rng.integers(0, keys, events).astype(str)).astype(object),
        "event_time": T0 + rng.integers(0, 24 * 60, events) * MIN,
        "amount": rng.lognormal(3.0, 1.0, events),
    })
    spine = pd.DataFrame({
        "key": np.char.add("u", rng.integers(0, keys, spine_rows).astype(str)).astype(object),
        "timestamp": T0 + rng.integers(0, 25 * 60 * MIN, spine_rows),
    })
    return ev, spine


def with_pandas(ev, spine):
    a = pd.DataFrame({"key": ev["key"], "ts": ev["event_time"], "x": ev["amount"], "row": -1})
    b = pd.DataFrame({"key": spine["key"], "ts": spine["timestamp"], "x": np.nan, "row": np.arange(len(spine))})
    both = pd.concat([a, b], ignore_index=True)
    both["ts"] = pd.to_datetime(both["ts"], unit="ms")
    both["is_spine"] = both["row"] >= 0
    both = both.sort_values(["key", "ts", "is_spine"], kind="stable")
    g = both.set_index("ts").groupby("key", sort=True)["x"]
    rows = both["row"].to_numpy()
    take = rows >= 0
    order = np.argsort(rows[take], kind="stable")
    out = pd.DataFrame(index=spine.index)
    for name, offset in WINDOWS:
        r = g.rolling(offset)
        for fn in FNS:
            v = getattr(r, fn)().to_numpy()[take][order]
            out["%s_%s" % (fn, name)] = np.nan_to_num(v) if fn != "mean" else v
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--spine", type=int, default=20_000)
    ap.add_argument("--coarse", action="store_true", help="buckets of 1 min, 10 min and 3 h")
    ap.add_argument("--order", choices=("key", "arrival"), default="key",
                    help="the replay order of build_frame (docs/backfill.md, \"Order of the replay\")")
    args = ap.parse_args()

    aggregates = "\n".join("      - {name: %s_%s, source: amount, fn: %s, window: %s%s}"
                           % (fn, name, fn, name, ", resolution: " + COARSE[name] if args.coarse else "")
                           for name, _ in WINDOWS for fn in FNS)
    ev, spine = data(args.events, args.keys, args.spine)
    with tempfile.TemporaryDirectory() as d:
        config = os.path.join(d, "bench.yaml")
        with open(config, "w") as f:
            f.write(CONFIG % {"capacity": max(1000, args.keys * 2), "chunks": max(1000, args.keys * 4),
                              "aggregates": aggregates})
        t = time.perf_counter()
        frame = larder.offline.build_frame(config, ev, spine, table="users", order=args.order)
        larder_s = time.perf_counter() - t
    t = time.perf_counter()
    want = with_pandas(ev, spine)
    pandas_s = time.perf_counter() - t

    got_count = frame["count_1h"].to_numpy(dtype=np.float64, na_value=0.0)
    exact = np.abs(got_count - want["count_1h"].to_numpy()).max()
    mask = frame["_found"].to_numpy()
    rel = np.abs(frame["sum_5m"].to_numpy(dtype=np.float64)[mask] - want["sum_5m"].to_numpy()[mask]) / \
        np.maximum(np.abs(want["sum_5m"].to_numpy()[mask]), 1e-300)
    print("events %d, keys %d, spine rows %d, 3 aggregates x 3 windows, %s buckets"
          % (args.events, args.keys, args.spine, "coarse" if args.coarse else "default"))
    print("larder build_frame (order %s): %.3f s, %.0f events/s" % (args.order, larder_s, args.events / larder_s))
    print("pandas rolling:     %.3f s, %.0f events/s" % (pandas_s, args.events / pandas_s))
    print("ratio larder / pandas: %.1fx" % (pandas_s / larder_s))
    print("check: count_1h largest difference %g, sum_5m largest relative difference %.3g (found rows)"
          % (exact, rel.max() if len(rel) else 0.0))


if __name__ == "__main__":
    main()
