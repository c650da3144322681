"""larder.offline: training frames from the sidecar's own feature engine.

    import larder.offline
    frame = larder.offline.build_frame("larder.yaml", events, spine)

For each row of the spine (key, timestamp, labels...) the frame holds what a
reader would have read at that instant: the table's fields and aggregates as
the sidecar's engine (the same decode -> transform -> aggregate -> last write
wins path) computes them from the events, replayed with a clock of their own
instead of the wall clock. Never an event that arrived after the instant;
windows end at the instant as they end at "now" online. See docs/offline.md.

The work runs in liblarder_offline.so (offline/include/larder/offline.h):
this module turns each column into one NumPy buffer with vectorised
operations (strings: one encode, one join, their lengths' cumulative sum),
makes one call, and wraps the answer in a DataFrame. Nothing here loops over
events in Python.
"""

import ctypes
import os
import warnings

import numpy as np

from .errors import InvalidArgumentError, LarderError, NotFoundError

# Output columns after the fields (names start with "_": a field name cannot,
# docs/sidecar.md, so they never collide with a field).
FOUND = "_found"
EVENT_TIME = "_event_time_ms"
COMPUTED_AT = "_computed_at_ms"

_ERR_LEN = 1024

# The layout's FieldType values (shm_layout, larder.FieldType).
_INT64, _FLOAT64, _FLOAT32, _BOOL, _VECTOR, _STRING = 1, 2, 3, 4, 5, 6


class OfflineError(LarderError):
    """The offline engine refused the config, the events or the spine; the
    message is the engine's (it names the problem)."""


def build_frame(config, events, spine, *, arrival_time=None, partition=None, table=None, key="key",
                event_time="event_time", timestamp="timestamp", id="id", op="op",  # noqa: A002 - the column's name
                order="key"):
    """The point-in-time frame of `spine` over `events` (a pandas DataFrame).

    config: path of a sidecar config (the YAML larder-sidecar reads); its
      tables, fields, transforms and aggregates define the features, its
      sources are ignored.
    events: a pandas DataFrame or a dict of NumPy columns, one row per event:
      `key`, `event_time` (datetime64, naive = UTC, or int ms since the
      epoch), and optionally `table` (rows of other tables than the spine's
      are left out), `op` ("upsert"/"delete", 0/1 or a bool that is True for
      a delete), `id` (the event's id, for dedup as the sidecar does) and
      the arrival column; every other column is an input of the table, by
      its name in message format v1. NaN / None / NA as larder.publish
      sends them: as null for an input whose every reader is a transform
      that takes a missing value (impute, ordinal, one_hot), which the
      engine then imputes as the sidecar does; for any other input the
      event does not send it (publish's nan="omit").
    spine: a DataFrame or dict of columns with `key`, `timestamp` (as
      event_time) and any label columns, copied through; an optional
      `table` column names one table.
    arrival_time: when each event reached the writer, which orders the
      replay: None uses the events' "arrival_time" column if they have
      one, else the event time; a column name; or an array (one per event).
    partition: None (every key), or (i, n) / "i/n": only the keys of
      partition i of n by the table's key hash, as larder-backfill
      --partition; the frame then holds the spine rows of that partition
      only (in spine order, with their index), so the frames of partitions
      0..n-1 together hold every row once.
    table: the table (default: the spine's `table` column, else the
      config's only table).
    key, event_time, timestamp, id, op: the names of those columns.
    order: "key" (the default) replays key after key, each key's events and
      reads in the order arrival order gives them: the same frame, faster
      on many keys; "arrival" replays every event in arrival order, as the
      sidecar applies them (the reference; docs/backfill.md, "Order of the
      replay").

    Returns a DataFrame: the spine's columns and index, then one column per
    field of the table in schema order, named as the field, then `_found`
    (bool), `_event_time_ms` and `_computed_at_ms` (Int64, NA where not
    found; `_computed_at_ms` matches Row.computed_at_ms of an online read).
    Field dtypes: int64 -> Int64 and bool -> boolean (pandas' nullable
    types, NA where not valid), float64/float32 -> float64/float32 with NaN,
    string -> object with None, vector -> object column of float32 arrays
    (None where not valid; np.stack(frame[name]) makes the matrix).
    ``frame.attrs["rejected_events"]`` counts the events the engine refused
    as the sidecar would dead-letter them (a warning says so when > 0);
    ``frame.attrs["counters"]`` has the replay's counts of the table's
    events: events, applied, stale, duplicates, late, rejected.
    """
    import pandas as pd

    from . import _offline_native as _o
    from .publish import TableSchema

    if not os.path.isfile(str(config)):
        raise NotFoundError("no sidecar config %s: build_frame reads the tables, fields and aggregates of the YAML "
                            "larder-sidecar --config reads" % config)
    spine_cols, spine_n = _columns(spine, "spine")
    ev_cols, ev_n = _columns(events, "events")
    for name, cols, what in ((key, spine_cols, "spine"), (timestamp, spine_cols, "spine"), (key, ev_cols, "events"),
                             (event_time, ev_cols, "events")):
        if name not in cols:
            raise InvalidArgumentError("the %s have no %r column; they have: %s" % (what, name, ", ".join(cols)))
    table = _table_name(config, table, spine_cols)
    try:
        schema = TableSchema.from_config(config, table)
    except LookupError as e:
        raise OfflineError(str(e)) from None

    special = {key, event_time, "table", id, op}
    arrival_name = None
    if arrival_time is None:
        if "arrival_time" in ev_cols:
            arrival_name = "arrival_time"
    elif isinstance(arrival_time, str):
        if arrival_time not in ev_cols:
            raise InvalidArgumentError("arrival_time=%r: the events have no such column" % arrival_time)
        arrival_name = arrival_time
    else:
        arrival_name = "\0arrival"  # a name no column has
        ev_cols[arrival_name] = np.asarray(arrival_time)
        if len(ev_cols[arrival_name]) != ev_n:
            raise InvalidArgumentError("arrival_time has %d values for %d events" % (len(ev_cols[arrival_name]), ev_n))
    special.add(arrival_name)

    # Events of the spine's table only: tables share nothing in the engine.
    if "table" in ev_cols:
        keep = _str_array(ev_cols["table"], "events column 'table'") == table
        if not keep.all():
            ev_cols = {k: v[keep] for k, v in ev_cols.items()}
            ev_n = int(keep.sum())
    arrival = None if arrival_name is None else ev_cols[arrival_name]

    keep_alive = []  # every buffer the engine reads, alive until the call returns
    ev = _o.Events()
    ev.table = table.encode()
    ev.n = ev_n
    ev.keys, ev.key_offsets = _strings(ev_cols[key], "events column %r" % key, keep_alive, keys=True)
    ev.event_time_ms = _ptr(_times_ms(ev_cols[event_time], "events column %r" % event_time), keep_alive)
    ev.arrival_ms = None if arrival is None else _ptr(_times_ms(arrival, "arrival_time"), keep_alive)
    ev.op = None if op not in ev_cols else _ptr(_ops(ev_cols[op], op), keep_alive)
    if id in ev_cols:
        ids = ev_cols[id]
        if _missing(ids).any():
            raise InvalidArgumentError("events column %r: event %d has no id (every event has one, or the column is "
                                       "left out)" % (id, int(np.flatnonzero(_missing(ids))[0])))
        ev.ids, ev.id_offsets = _strings(ids, "events column %r" % id, keep_alive, keys=True)
    inputs = [name for name in ev_cols if name not in special]
    columns = (_o.Column * max(1, len(inputs)))()
    for i, name in enumerate(inputs):
        _input_column(columns[i], name, ev_cols[name], schema, keep_alive)
    ev.columns = columns
    ev.column_count = len(inputs)

    sp = _o.Spine()
    sp.table = ev.table
    sp.n = spine_n
    sp.keys, sp.key_offsets = _strings(spine_cols[key], "spine column %r" % key, keep_alive, keys=True)
    sp.at_ms = _ptr(_times_ms(spine_cols[timestamp], "spine column %r" % timestamp), keep_alive)

    part, parts = _partition(partition)
    orders = {"key": _o.ORDER_BY_KEY, "arrival": _o.ORDER_ARRIVAL}
    if order not in orders:
        raise InvalidArgumentError("order=%r: \"key\" or \"arrival\"" % (order,))
    err = ctypes.create_string_buffer(_ERR_LEN)
    engine = ctypes.c_void_p()
    if _o.larder_offline_open(str(config).encode(), part, parts, ctypes.byref(engine), err, _ERR_LEN) != 0:
        raise OfflineError(err.value.decode("utf-8", "replace"))
    frame = ctypes.c_void_p()
    try:
        _o.larder_offline_set_order(engine, orders[order])
        rc = _o.larder_offline_build(engine, ctypes.byref(ev), 1, ctypes.byref(sp), ctypes.byref(frame), err,
                                     _ERR_LEN)
    finally:
        _o.larder_offline_close(engine)
    if rc != 0:
        raise OfflineError(err.value.decode("utf-8", "replace"))
    try:
        out = _frame(_o, frame, spine, spine_cols, spine_n, pd)
    finally:
        _o.larder_offline_frame_free(frame)
    return out


def _frame(_o, frame, spine, spine_cols, spine_n, pd):
    n = _o.larder_offline_frame_rows(frame)
    index = _array(_o.larder_offline_frame_spine_index(frame), np.int64, n)
    if n > spine_n or (n and (index.min() < 0 or index.max() >= spine_n)):
        raise OfflineError("the engine answered %d rows for a spine of %d" % (n, spine_n))
    whole = n == spine_n
    if hasattr(spine, "columns") and hasattr(spine, "iloc"):
        out = spine.copy() if whole else spine.iloc[index].copy()
    else:
        out = pd.DataFrame(spine_cols if whole else {k: v[index] for k, v in spine_cols.items()})
    names = []
    cols = {}
    for f in range(_o.larder_offline_frame_field_count(frame)):
        name = _o.larder_offline_frame_field_name(frame, f).decode()
        if name in out.columns:
            raise InvalidArgumentError("the spine has a column %r, and so does the table: rename the spine's"
                                       % name)
        names.append(name)
        ftype = _o.larder_offline_frame_field_type(frame, f)
        dim = _o.larder_offline_frame_field_dim(frame, f)
        valid = _array(_o.larder_offline_frame_valid(frame, f), np.uint8, n).astype(bool)
        values = _o.larder_offline_frame_values(frame, f)
        if ftype == _INT64:
            col = pd.arrays.IntegerArray(_array(values, np.int64, n), ~valid)
        elif ftype == _BOOL:
            col = pd.arrays.BooleanArray(_array(values, np.uint8, n).astype(bool), ~valid)
        elif ftype in (_FLOAT64, _FLOAT32):
            col = _array(values, np.float64 if ftype == _FLOAT64 else np.float32, n)
            col[~valid] = np.nan
        elif ftype == _VECTOR:
            mat = _array(values, np.float32, n * dim).reshape(n, dim)
            col = np.empty(n, dtype=object)
            col[:] = list(mat)  # one view per row of the copy; a list, so NumPy keeps each row an array
            col[~valid] = None
        elif ftype == _STRING:
            offsets = _array(_o.larder_offline_frame_string_offsets(frame, f), np.int64, n + 1)
            data = ctypes.string_at(values, int(offsets[-1])) if n and offsets[-1] else b""
            text = data.decode("utf-8", "replace")
            col = np.empty(n, dtype=object)
            if text.isascii():  # byte offsets are character offsets
                col[:] = [text[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]
            else:
                col[:] = [data[a:b].decode("utf-8", "replace") for a, b in zip(offsets[:-1].tolist(),
                                                                                offsets[1:].tolist())]
            col[~valid] = None
        else:
            raise OfflineError("field %r has type %d, which this package does not know: upgrade it" % (name, ftype))
        cols[name] = col
    found = _array(_o.larder_offline_frame_found(frame), np.uint8, n).astype(bool)
    for name in (FOUND, EVENT_TIME, COMPUTED_AT):
        if name in out.columns:
            raise InvalidArgumentError("the spine has a column %r, which the frame adds: rename the spine's" % name)
    cols[FOUND] = found
    cols[EVENT_TIME] = pd.arrays.IntegerArray(_array(_o.larder_offline_frame_event_time_ms(frame), np.int64, n), ~found)
    cols[COMPUTED_AT] = pd.arrays.IntegerArray(_array(_o.larder_offline_frame_computed_at_ms(frame), np.int64, n),
                                               ~found)
    # One concat, not a column at a time (pandas copies a frame it has
    # fragmented into many blocks).
    attrs = dict(out.attrs)
    out = pd.concat([out, pd.DataFrame(cols, index=out.index)], axis=1)
    out.attrs.update(attrs)
    rejected = int(_o.larder_offline_frame_rejected(frame))
    out.attrs["rejected_events"] = rejected
    out.attrs["fields"] = names
    out.attrs["counters"] = dict({name: int(fn(frame)) for name, fn in _o.counters.items()}, rejected=rejected)
    if rejected:
        first = (_o.larder_offline_frame_first_rejection(frame) or b"").decode("utf-8", "replace")
        warnings.warn("larder.offline: %d event(s) refused as the sidecar would dead-letter them (first: %s); "
                      "frame.attrs['rejected_events'] counts them" % (rejected, first), stacklevel=3)
    return out


def _array(address, dtype, count):
    """A copy of `count` values of `dtype` at `address` (the frame's memory
    goes with the frame)."""
    if count == 0:
        return np.zeros(0, dtype=dtype)
    if not address:
        raise OfflineError("the engine returned no buffer for %d values" % count)
    size = np.dtype(dtype).itemsize * count
    return np.frombuffer((ctypes.c_char * size).from_address(address), dtype=dtype).copy()


# ---------------------------------------------------------------------------
# Columns to buffers


def _columns(data, what):
    """({name: NumPy array}, n) of a DataFrame or a dict of columns. Pandas'
    nullable types become object arrays with None where NA."""
    if hasattr(data, "columns") and hasattr(data, "iloc"):
        cols = {}
        for name in data.columns:
            s = data[name]
            dt = str(s.dtype)
            if dt.startswith("datetime64[") and getattr(s.dt, "tz", None) is not None:
                s = s.dt.tz_convert("UTC").dt.tz_localize(None)
            if dt in ("Int64", "Int32", "Int16", "Int8", "UInt64", "UInt32", "UInt16", "UInt8", "Float64",
                      "Float32", "boolean"):
                a = s.to_numpy(dtype=object, na_value=None)
            else:
                a = s.to_numpy()
            cols[str(name)] = a
        return cols, len(data)
    if isinstance(data, dict):
        cols = {}
        n = None
        for name, values in data.items():
            a = values if isinstance(values, np.ndarray) else np.asarray(values)
            if a.ndim == 0:
                raise InvalidArgumentError("%s column %r is a scalar; a column has one value per row" % (what, name))
            if n is None:
                n = len(a)
            elif len(a) != n:
                raise InvalidArgumentError("%s column %r has %d values, the others %d" % (what, name, len(a), n))
            cols[str(name)] = a
        return cols, n or 0
    raise TypeError("%s: a pandas DataFrame or a dict of columns, not %s" % (what, type(data).__name__))


def _table_name(config, table, spine_cols):
    if table is not None:
        return str(table)
    if "table" in spine_cols:
        names = np.unique(_str_array(spine_cols["table"], "spine column 'table'"))
        if len(names) != 1:
            raise InvalidArgumentError("the spine names %d tables (%s): one table per frame, select the rows of one"
                                       % (len(names), ", ".join(names[:5])))
        return str(names[0])
    from .publish import _load_yaml
    tables = [t.get("name") for t in (_load_yaml(config).get("tables") or [])]
    if len(tables) != 1:
        raise InvalidArgumentError("%s has %d tables (%s): say which with table= or a spine column 'table'"
                                   % (config, len(tables), ", ".join(map(str, tables))))
    return str(tables[0])


def _missing(a):
    """Rows with no value: NaN, None, NaT, pandas.NA."""
    if a.dtype.kind == "f":
        return np.isnan(a) if a.ndim == 1 else np.isnan(a).all(axis=tuple(range(1, a.ndim)))
    if a.dtype.kind in "mM":
        return np.isnat(a)
    if a.dtype.kind != "O":
        return np.zeros(len(a), dtype=bool)
    import pandas as pd
    return np.asarray(pd.isna(a), dtype=bool) if a.ndim == 1 else np.zeros(len(a), dtype=bool)


def _str_array(a, what):
    if a.dtype.kind in "US":
        return a.astype(str)
    if a.dtype.kind == "O":
        if _missing(a).any():
            raise InvalidArgumentError("%s: row %d has no value" % (what, int(np.flatnonzero(_missing(a))[0])))
        return a.astype(str)
    return a.astype(str)


def _ptr(a, keep_alive):
    a = np.ascontiguousarray(a)
    if not len(a):
        a = np.zeros(1, dtype=a.dtype)  # a valid address for an empty column
    keep_alive.append(a)
    return a.ctypes.data


def _strings(a, what, keep_alive, keys=False):
    """(data address, offsets address) of a column of strings: each value
    UTF-8 encoded once, one join, offsets from the lengths (map() keeps the
    loops in C). Integers become their decimal text, as publish() sends
    them. keys: every row needs a value."""
    n = len(a)
    if a.dtype.kind in "iu":
        values = list(map(str, a.tolist()))
    elif a.dtype.kind == "U":
        values = a.tolist()
    elif a.dtype.kind == "S":
        values = None
        encoded = a.tolist()
    elif a.dtype.kind == "O":
        values = a.tolist()
    else:
        raise InvalidArgumentError("%s holds %s, not strings" % (what, a.dtype))
    if values is not None:
        try:
            encoded = list(map(str.encode, values))
        except TypeError:
            miss = _missing(a)
            if keys and miss.any():
                raise InvalidArgumentError("%s: row %d has no value" % (what, int(np.flatnonzero(miss)[0]))) from None
            bad = next((i for i, v in enumerate(values) if not isinstance(v, (str, int, np.integer))
                        or isinstance(v, (bool, np.bool_))), None)
            if bad is not None:
                raise InvalidArgumentError("%s: row %d holds %s, not a string"
                                           % (what, bad, type(values[bad]).__name__)) from None
            encoded = [str(v).encode() for v in values]  # strings mixed with integers: rare, one pass per row
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = b"".join(encoded)
    keep_alive.append(data)
    keep_alive.append(offsets)
    return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value, offsets.ctypes.data


def _times_ms(a, what):
    """int64 ms since the epoch of a datetime64 (naive: UTC) or integer
    column."""
    a = np.asarray(a)
    kind = a.dtype.kind
    if kind in "iu":
        return a.astype(np.int64)
    if kind == "M":
        if np.isnat(a).any():
            raise InvalidArgumentError("%s: row %d is NaT" % (what, int(np.flatnonzero(np.isnat(a))[0])))
        return a.astype("datetime64[ms]").astype(np.int64)
    if kind == "f":
        bad = ~np.isfinite(a) | (np.floor(a) != a)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InvalidArgumentError("%s: row %d is %r; a time in ms is an integer" % (what, i, float(a[i])))
        return a.astype(np.int64)
    if kind == "O":  # Timestamps, datetimes, strings: pandas parses them (aware ones to UTC)
        import pandas as pd
        try:
            t = pd.to_datetime(a, utc=True)
        except (TypeError, ValueError) as e:
            raise InvalidArgumentError("%s: %s" % (what, e)) from None
        if t.isna().any():
            raise InvalidArgumentError("%s: row %d has no time" % (what, int(np.flatnonzero(t.isna())[0])))
        return t.tz_localize(None).to_numpy().astype("datetime64[ms]").astype(np.int64)
    raise InvalidArgumentError("%s: times are datetime64 or integer ms since the epoch, not %s" % (what, a.dtype))


def _ops(a, name):
    """uint8 per event: 0 upsert, 1 delete."""
    kind = a.dtype.kind
    if kind == "b":
        return a.astype(np.uint8)
    if kind in "iu":
        if ((a != 0) & (a != 1)).any():
            raise InvalidArgumentError("events column %r: 0 (upsert) or 1 (delete), got %d"
                                       % (name, int(a[(a != 0) & (a != 1)][0])))
        return a.astype(np.uint8)
    if kind in "UO":
        deletes = a == "delete"
        bad = ~deletes & (a != "upsert")
        if np.any(bad):
            raise InvalidArgumentError("events column %r: \"upsert\" or \"delete\", got %r at row %d"
                                       % (name, a[np.flatnonzero(bad)[0]], int(np.flatnonzero(bad)[0])))
        return np.asarray(deletes, dtype=np.uint8)
    raise InvalidArgumentError("events column %r: \"upsert\"/\"delete\", 0/1 or bool, not %s" % (name, a.dtype))


def _input_column(col, name, a, schema, keep_alive):
    """Fills one larder_offline_column from the column `a`, typed by what
    the table's schema expects of the input `name` (a stored field, or an
    input of a transform or an aggregate)."""
    from . import _offline_native as _o
    from .publish import _null_rows
    spec = schema.columns.get(name)
    if spec is None:
        if schema.allow_unknown:
            spec = None  # passed on as its values' type; the engine ignores it as the sidecar does
        else:
            raise InvalidArgumentError("events column %r is no input of table %r (its inputs: %s); drop it, or give "
                                       "its name with key=, event_time=, id=, op= or arrival_time="
                                       % (name, schema.name, ", ".join(c for c, s in schema.columns.items()
                                                                       if s.kind != "refused")))
    elif spec.kind == "refused":
        raise InvalidArgumentError("events column %r: %s" % (name, spec.reason))
    col.name = name.encode()
    keep_alive.append(col.name)
    miss = _missing(a)
    present = None if not miss.any() else ~miss
    # A missing value as larder.publish sends it (docs/offline.md): null for
    # an input every reader of which takes one, by publish's own schema and
    # test of the rows; else the member is left out.
    null = None
    if present is not None and spec is not None and spec.nullable:
        null = _null_rows(a) & miss
    want = None if spec is None else spec.type  # int64, float64, float32, bool, string, vector; number, source
    kind = a.dtype.kind
    if a.ndim == 2 or want == "vector":
        if a.ndim == 2:
            mat = np.asarray(a, dtype=np.float64)
        else:
            dim = spec.count or next((len(v) for v, m in zip(a.tolist(), miss.tolist()) if not m), 0)
            mat = np.zeros((len(a), dim), dtype=np.float64)
            if (~miss).any():
                try:
                    rows = np.stack(a[~miss]).astype(np.float64)
                except ValueError as e:
                    raise InvalidArgumentError("events column %r: vectors of different lengths (%s)" % (name, e)) \
                        from None
                if rows.ndim != 2 or rows.shape[1] != dim:
                    raise InvalidArgumentError("events column %r: vectors of %s values, the input takes %d"
                                               % (name, rows.shape[1:] or "scalar", dim))
                mat[~miss] = rows
        col.type = _o.FLOAT64_LIST
        col.dim = mat.shape[1]
        col.data = _ptr(mat.reshape(-1), keep_alive)
    elif want == "string" or kind in "US" or (kind == "O" and _holds(a, miss, str)):
        col.type = _o.STRING
        filled = a if present is None else np.where(miss, "", a)
        col.data, col.offsets = _strings(filled, "events column %r" % name, keep_alive)
    elif kind == "b" or (kind == "O" and _holds(a, miss, (bool, np.bool_))):
        if want not in (None, "bool", "source", "number"):
            raise InvalidArgumentError("events column %r holds bools; the input takes %s" % (name, want))
        col.type = _o.BOOL
        col.data = _ptr(np.where(miss, False, a).astype(np.uint8), keep_alive)
    elif kind in "iufO":
        if kind == "O":
            try:
                a = np.where(miss, 0, a).astype(np.float64 if not _holds(a, miss, (int, np.integer)) else np.int64)
            except (TypeError, ValueError):
                raise InvalidArgumentError("events column %r holds values that are not numbers" % name) from None
            kind = a.dtype.kind
        if want == "int64":
            if kind == "f":
                filled = np.where(miss, 0.0, a)
                if (np.floor(filled) != filled).any() or (np.abs(filled) >= 2.0 ** 63).any():
                    i = int(np.flatnonzero((np.floor(filled) != filled) | (np.abs(filled) >= 2.0 ** 63))[0])
                    raise InvalidArgumentError("events column %r: the field is int64, row %d holds %r"
                                               % (name, i, float(a[i])))
                a = filled.astype(np.int64)
            col.type = _o.INT64
            col.data = _ptr(a.astype(np.int64), keep_alive)
        elif kind in "iu" and want in (None, "source"):
            # An integer as JSON sends it: a distinct count hashes it as an integer.
            col.type = _o.INT64
            col.data = _ptr(a.astype(np.int64), keep_alive)
        else:
            col.type = _o.FLOAT64
            col.data = _ptr(np.where(miss, 0.0, a).astype(np.float64) if present is not None else
                            a.astype(np.float64), keep_alive)
    else:
        raise InvalidArgumentError("events column %r: %s values are no input type (numbers, bools, strings, vectors)"
                                   % (name, a.dtype))
    if present is not None:
        present = present.astype(np.uint8)  # 1 sent, 0 not sent
        if null is not None:
            present[null] = _o.SENT_AS_NULL
    col.present = None if present is None else _ptr(present, keep_alive)


def _holds(a, miss, types):
    """Whether every present value of the object column `a` is of `types`
    (type checks in C: map over the values)."""
    values = a[~miss].tolist()
    return bool(values) and all(map(isinstance, values, [types] * len(values)))


def _partition(partition):
    if partition is None:
        return 0, 1
    if isinstance(partition, str):
        try:
            i, n = (int(p) for p in partition.split("/"))
        except ValueError:
            raise InvalidArgumentError("partition=%r: write it as \"i/n\", e.g. \"0/4\"" % partition) from None
    else:
        i, n = partition
    if not (0 < n <= 1 << 16 and 0 <= i < n):
        raise InvalidArgumentError("partition %d/%d: 0 <= i < n" % (i, n))
    return int(i), int(n)
