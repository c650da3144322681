"""build_frame's replay order: key by key (the default) and arrival order
give the same frame, through pandas DataFrames as users pass them (no
broker). The C++ test OfflineOrder covers more of the writer's cases."""

import numpy as np
import pandas as pd
import pytest

import larder
import larder.offline as off

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z

CONFIG = """\
tables:
  - name: t
    key_max_len: 16
    capacity: 100
    allowed_lateness: 20s
    arena_chunks: 4000
    fields:
      - {name: v, type: float64}
      - {name: s, type: string, max_len: 8}
    aggregates:
      - {name: sum_10s, source: x, fn: sum, window: 10s, resolution: 1s}
      - {name: var_1m, source: x, fn: variance, window: 1m, resolution: 1s}
      - {name: max_5m, source: x, fn: max, window: 5m, resolution: 10s}
      - {name: mean_4, source: x, fn: mean, window: 4 events, min_periods: 1}
      - {name: last3, source: x, fn: last_n, n: 3}
"""


def _data(seed):
    rng = np.random.default_rng(seed)
    n = 6000
    arrival = T0 + np.cumsum(rng.integers(0, 700, n))
    late = rng.random(n) < 0.25
    event_time = arrival - np.where(late, rng.integers(0, 30_000, n), rng.integers(0, 500, n))
    events = pd.DataFrame({
        "key": ["k%d" % k for k in rng.integers(0, 30, n)],
        "event_time": event_time,
        "arrival_time": arrival,
        "op": np.where(rng.random(n) < 0.03, "delete", "upsert"),
        "x": rng.normal(size=n) * np.where(rng.random(n) < 0.02, 1e6, 1.0),
        "v": rng.normal(size=n),
        "s": rng.choice(["fr", "de", "it"], n),
    })
    spine = pd.DataFrame({
        "key": ["k%d" % k for k in rng.integers(0, 33, 1500)],
        "timestamp": np.where(rng.random(1500) < 0.3, rng.choice(arrival, 1500),
                              rng.integers(T0, int(arrival[-1]), 1500)),
        "label": rng.integers(0, 2, 1500),
    })
    return events, spine


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "larder.yaml"
    path.write_text(CONFIG)
    return str(path)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_key_by_key_frame_equals_arrival_order_frame(config, seed):
    events, spine = _data(seed)
    by_key = off.build_frame(config, events, spine)
    arrival = off.build_frame(config, events, spine, order="arrival")
    assert by_key["_found"].sum() > 500
    assert arrival.attrs["counters"] == by_key.attrs["counters"]
    assert arrival.attrs["counters"]["late"] > 0 and arrival.attrs["counters"]["stale"] > 0
    # Variance to rounding (docs/backfill.md, "Refresh"); every other column
    # bit for bit.
    np.testing.assert_allclose(by_key["var_1m"].to_numpy(), arrival["var_1m"].to_numpy(), rtol=1e-9, atol=0)
    rest = [c for c in arrival.columns if c not in ("var_1m", "last3")]
    pd.testing.assert_frame_equal(by_key[rest], arrival[rest], check_exact=True)
    for a, b in zip(by_key["last3"], arrival["last3"]):
        assert (a is None and b is None) or np.array_equal(a, b, equal_nan=True)


def test_an_unknown_order_is_refused(config):
    events, spine = _data(4)
    with pytest.raises(larder.InvalidArgumentError):
        off.build_frame(config, events, spine, order="sorted")
