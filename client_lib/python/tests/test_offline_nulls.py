"""Missing values in build_frame's events mean what larder.publish makes of
them (docs/offline.md, "Events"): NaN/None/NA of an input every reader of
which is a transform that takes a missing value (impute, ordinal, one_hot)
is sent as null, and the engine imputes it as the sidecar imputes a JSON
null; any other missing value leaves the member out. No broker: the
offline engine in liblarder_offline.so, and publish's own message builder.

The config's rabbitmq section has no password_env: the engine reads no
source."""

import ctypes
import json

import numpy as np
import pandas as pd
import pytest

import larder.offline as off

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z

CONFIG = """\
tables:
  - name: t
    key_max_len: 16
    capacity: 64
    fields:
      - {name: amount, type: float64, from: amount_in, transform: [{impute: {value: 7.0}}]}
      - {name: tier_idx, type: int64, from: tier, transform: [{ordinal: {categories: [gold, silver, ~]}}]}
      - {name: tier_none, type: bool, from: tier, transform: [{one_hot: {categories: [gold, silver, ~], index: 2}}]}
      - {name: size_idx, type: int64, from: size, transform: [{ordinal: {categories: [1, 2, 3], unknown_value: -1}}]}
      - {name: v, type: float64}
    aggregates:
      - {name: x_sum, source: x, fn: sum, window: 1h, resolution: 1m}
rabbitmq:
  url: amqp://larder@127.0.0.1:5672/
  queue: {name: offline-nulls}
"""

INPUTS = ["amount_in", "tier", "size", "v", "x"]


@pytest.fixture
def config(tmp_path):
    p = tmp_path / "nulls.yaml"
    p.write_text(CONFIG)
    return str(p)


def events():
    """k1 sends values, then every input missing; k2 and k3 leave some out."""
    return pd.DataFrame({
        "key": ["k1", "k1", "k2", "k3"],
        "event_time": [T0, T0 + 60_000, T0, T0],
        "amount_in": pd.array([3.0, None, None, 1.0], dtype="Float64"),
        "tier": ["gold", None, np.nan, "silver"],
        "size": [2.0, np.nan, 3.0, np.nan],
        "v": [1.5, np.nan, np.nan, 2.0],
        "x": [1.0, np.nan, 4.0, 2.0],
    })


def test_missing_inputs_are_imputed_as_online(config):
    spine = pd.DataFrame({"key": ["k1", "k1", "k2", "k3"], "timestamp": [T0, T0 + 60_000, T0, T0]})
    frame = off.build_frame(config, events(), spine)
    assert frame.attrs["rejected_events"] == 0
    assert frame["_found"].all()
    # NaN and NA sent as null: imputed (not NaN, not k1's previous 3.0).
    assert frame["amount"].tolist() == [3.0, 7.0, 7.0, 1.0]
    # None and NaN of a string input: null, the null category's position.
    assert frame["tier_idx"].tolist() == [0, 2, 2, 1]
    assert frame["tier_none"].tolist() == [False, True, True, False]
    # A null that is no category: unknown_value.
    assert frame["size_idx"].tolist() == [1, -1, 2, -1]
    # A plain field and an aggregate's raw source take no null: left out.
    assert frame["v"][1] == 1.5 and np.isnan(frame["v"][2])
    assert frame["x_sum"].tolist() == [1.0, 1.0, 4.0, 2.0]


def test_a_null_the_transform_refuses_is_refused_as_online(tmp_path):
    # No null category and no unknown_value: the sidecar dead-letters the
    # message publish sends (bad_value); the engine refuses the event.
    p = tmp_path / "strict.yaml"
    p.write_text("tables:\n  - name: t\n    capacity: 8\n    fields:\n"
                 "      - {name: size_idx, type: int64, from: size, transform: [{ordinal: {categories: [1, 2, 3]}}]}\n")
    ev = pd.DataFrame({"key": ["k", "k"], "event_time": [T0, T0 + 1], "size": [2.0, np.nan]})
    with pytest.warns(UserWarning, match="bad_value"):
        frame = off.build_frame(str(p), ev, pd.DataFrame({"key": ["k"], "timestamp": [T0 + 1]}))
    assert frame.attrs["rejected_events"] == 1
    assert frame["size_idx"].tolist() == [1]


def present_bytes(config, ev):
    """What build_frame passes for each input: {name: [0 not sent, 1 sent,
    2 sent as null] per event}."""
    from larder import _offline_native as _o
    from larder.publish import TableSchema
    schema = TableSchema.from_config(config, "t")
    cols, n = off._columns(ev, "events")
    out = {}
    for name in INPUTS:
        col = _o.Column()
        keep = []
        off._input_column(col, name, cols[name], schema, keep)
        if not col.present:
            out[name] = [1] * n
        else:
            out[name] = list(np.ctypeslib.as_array(ctypes.cast(col.present, ctypes.POINTER(ctypes.c_uint8)),
                                                   shape=(n,)))
    return out


def published(config, ev):
    """What larder.publish sends for each input: the same, read from the
    JSON of its messages (nan="omit": a missing value it does not send as
    null is left out)."""
    from larder.publish import TableSchema, build_messages
    schema = TableSchema.from_config(config, "t")
    bodies, _, errors, _ = build_messages(ev, "t", "key", "event_time", schema, nan="omit", now_ms=T0)
    assert not errors, errors
    updates = [u for b in bodies for u in json.loads(b)]
    assert len(updates) == len(ev)
    return {name: [0 if name not in u["fields"] else 2 if u["fields"][name] is None else 1 for u in updates]
            for name in INPUTS}


def test_null_and_left_out_rows_are_publishs(config):
    ev = events()
    want = published(config, ev)
    assert want["amount_in"] == [1, 2, 2, 1] and want["v"] == [1, 0, 0, 1]  # the cases are all there
    assert present_bytes(config, ev) == want
    # A dict of NumPy columns: the same.
    d = {k: (v.to_numpy(dtype=object, na_value=None) if k == "amount_in" else v.to_numpy()) for k, v in ev.items()}
    assert present_bytes(config, d) == want
