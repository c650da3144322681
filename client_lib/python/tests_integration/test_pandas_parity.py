"""Count windows, last_n sequences and ddof against pandas: random events go
through the real broker and larder-sidecar, and the values read from the
segment equal pandas' rolling(N, min_periods=M) at each key's newest event
(docs/aggregates.md, "pandas expression -> Larder config").

Tolerance: 1e-9 relative, plus 1e-12 absolute for values near zero (the
sidecar recomputes from the stored values; pandas keeps running Kahan sums and
Welford updates, so both round differently); last_n to float32 rounding.
Where pandas' running variance loses digits (a mean a million times its
spread), the value is checked against exact rational arithmetic instead, to
1e-12, and pandas' own error is bounded at 1e-6."""

from fractions import Fraction

import numpy as np
import pandas as pd

import larder
from conftest import wait_for

N, M, SEQ = 10, 3, 20

TABLE_YAML = """\
  - name: roll
    key_max_len: 16
    capacity: 1000
    arena_chunks: 1000  # var_1h keeps 60 buckets: every key here is busy enough to hold a chunk
    fields: [{name: note, type: int64}]
    aggregates:
      - {name: sum_n, source: x, fn: sum, window: %(n)d events, min_periods: %(m)d}
      - {name: mean_n, source: x, fn: mean, window: %(n)d events, min_periods: %(m)d}
      - {name: mean_full, source: x, fn: mean, window: %(n)d events}
      - {name: var_n, source: x, fn: var, window: %(n)d events, min_periods: %(m)d, ddof: 1}
      - {name: var0_n, source: x, fn: variance, window: %(n)d events, min_periods: %(m)d}
      - {name: std_n, source: x, fn: std, window: %(n)d events, min_periods: %(m)d, ddof: 1}
      - {name: std0_n, source: x, fn: stddev, window: %(n)d events, min_periods: %(m)d, ddof: 0}
      - {name: min_n, source: x, fn: min, window: %(n)d events, min_periods: %(m)d}
      - {name: max_n, source: x, fn: max, window: %(n)d events, min_periods: %(m)d}
      - {name: count_n, source: x, fn: count, window: %(n)d events, min_periods: %(m)d}
      - {name: first_n, source: x, fn: first, window: %(n)d events, min_periods: 1}
      - {name: last_n1, source: x, fn: last, window: %(n)d events, min_periods: 1}
      - {name: seq, source: x, fn: last_n, n: %(seq)d}
      - {name: var_1h, source: x, fn: variance, window: 1h, ddof: 1}
""" % {"n": N, "m": M, "seq": SEQ}


def close(got, want):
    if np.isnan(want):
        return got is None
    return got is not None and abs(got - want) <= 1e-9 * abs(want) + 1e-12


def exact_var(values, ddof):
    """The variance of the floats `values` in exact rational arithmetic."""
    xs = [Fraction(v) for v in values]
    if len(xs) <= ddof:
        return float("nan")
    mean = sum(xs) / len(xs)
    return float(sum((x - mean) ** 2 for x in xs) / (len(xs) - ddof))


def test_count_windows_sequences_and_ddof_equal_pandas(sidecar_factory):
    sc = sidecar_factory(TABLE_YAML)
    seg = sc.start()
    rng = np.random.default_rng(20261207)
    keys = ["k%03d" % i for i in range(60)]
    rows = []
    t0 = larder.now_unix_ms() - 20 * 60_000
    for i, key in enumerate(keys):
        n = int(rng.integers(1, 3 * SEQ))  # below min_periods, between, and beyond N and n events
        offset = rng.choice([0.0, 1e3, 1e6])  # far from zero: cancellation in the spread
        times = t0 + rng.choice(10 * 60_000, size=n, replace=False)  # distinct: one order for both
        xs = offset + rng.normal(scale=rng.choice([1e-3, 1.0, 50.0]), size=n)
        if i % 7 == 0:
            xs = np.round(xs)  # ties for min and max
        for t, x in zip(times, xs):
            rows.append((key, int(t), float(x)))
    df = pd.DataFrame(rows, columns=["key", "t", "x"])
    # Published out of event-time order: late events are placed in order,
    # and those older than a key's N newest are dropped (in no last window).
    shuffled = df.sample(frac=1.0, random_state=7).reset_index(drop=True)
    shuffled["eid"] = ["e%d" % i for i in range(len(shuffled))]
    r = larder.publish(shuffled, "roll", "key", "t", config=sc.config, exchange=sc.exchange, id="eid")
    assert r.ok and r.published_rows == len(df), r
    roll = seg.table("roll")

    def settled():
        s = roll.stats()
        return s["aggregate_events"] + s["late_dropped"] >= len(df)

    wait_for(settled, 120, "%d events" % len(df))

    checked = 0
    pandas_rounding = 0  # spreads where pandas' running update, not Larder, is off by more than 1e-9
    for key, g in df.sort_values("t", kind="stable").groupby("key"):
        x = g["x"].reset_index(drop=True)
        w = x.rolling(N, min_periods=M)
        want = {
            "sum_n": w.sum(), "mean_n": w.mean(), "mean_full": x.rolling(N).mean(),
            "var_n": w.var(), "var0_n": w.var(ddof=0), "std_n": w.std(), "std0_n": w.std(ddof=0),
            "min_n": w.min(), "max_n": w.max(), "count_n": w.count(),
            "first_n": x.rolling(N, min_periods=1).apply(lambda a: a[0], raw=True),
            "last_n1": x.rolling(N, min_periods=1).apply(lambda a: a[-1], raw=True),
        }
        row = roll.get(key)
        assert row.ok, key
        window = x.to_numpy()[-N:] if len(x) >= M else []
        spreads = {"var_n": (1, 1), "var0_n": (0, 1), "std_n": (1, 0.5), "std0_n": (0, 0.5)}
        for name, series in want.items():
            expected = float(series.iloc[-1])
            got = row.get(name)
            got = None if got is None else float(got)
            if not close(got, expected) and name in spreads and len(window) > 0:
                ddof, power = spreads[name]
                exact = exact_var(window, ddof) ** power
                assert got is not None and abs(got - exact) <= 1e-12 * abs(exact), (key, name, got, exact)
                assert abs(expected - exact) <= 1e-6 * abs(exact), (key, name, "pandas", expected, exact)
                pandas_rounding += 1
            else:
                assert close(got, expected), (key, name, got, expected, len(x))
            checked += 1
        # last_n: newest first, NaN past the key's events, float32.
        tail = x.iloc[::-1].to_numpy()[:SEQ]
        expected_seq = np.full(SEQ, np.nan, dtype=np.float32)
        expected_seq[:len(tail)] = tail.astype(np.float32)
        np.testing.assert_array_equal(row["seq"], expected_seq, err_msg=key)
        # A time window with ddof 1: every event is inside the hour, so it is
        # the sample variance of all of them.
        assert close(row.get("var_1h"), float(x.var())), (key, row.get("var_1h"), x.var())
        checked += 2
    assert checked == len(keys) * (len(want) + 2)
    print("%d values checked; %d spreads matched exact arithmetic where pandas differed by more than 1e-9"
          % (checked, pandas_rounding))
    s = roll.stats()
    assert s["aggregate_events"] + s["late_dropped"] == len(df)
    # The stream exercised both paths of a late event: put in its place, and
    # (older than the SEQ newest events the key's store holds) left out of
    # every count window. The time window takes the latter, so the sidecar
    # counts them as folded events, not late_dropped.
    inserted = dropped = 0
    seen = {}
    for key, t in zip(shuffled["key"], shuffled["t"]):
        newer = sum(1 for u in seen.setdefault(key, []) if u > t)
        dropped += newer >= SEQ
        inserted += 0 < newer < SEQ
        seen[key].append(t)
    assert inserted > 0 and dropped > 0, (inserted, dropped)
