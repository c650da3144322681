"""larder.publish: validate rows against a table's schema and publish them
to RabbitMQ in message format v1 (docs/message-format.md), with publisher
confirms. See docs/python.md, "Publishing rows".

    report = larder.publish(df, table="cards", key="card_id", event_time="ts",
                            config="fraud.yaml")
    print(report)    # rows, messages, confirmed, returned, nacked

Validation happens before anything is sent, against the schema of the
sidecar config (``config=``) or of a live segment (``segment=``): a bad row
either stops the call (PublishValidationError lists every bad row) or, with
``on_error="skip"``, is left out and reported. What the sidecar would
dead-letter is refused here, so one bad row cannot take its message's other
updates with it (a message is applied all or nothing).

Messages are built column by column: each column is checked with NumPy and
turned into JSON text in one pass, rows are joined from those texts, and
rows are cut into messages of at most ``max_message_bytes`` and
``max_updates_per_message`` updates.
"""

import datetime
import json
import math
import os
import ssl
import time
import urllib.parse

import numpy as np

from .errors import LarderError

try:
    from json.encoder import encode_basestring_ascii as _quote  # C-accelerated where available
except ImportError:  # pragma: no cover
    _quote = json.dumps

_MAX_EVENT_TIME_MS = 253402300799999  # 9999-12-31T23:59:59.999Z, the format's bound
_MIN_EVENT_TIME_MS = 946684800000  # 2000-01-01, the sidecar's default min_event_time
_FUTURE_SKEW_MS = 5 * 60 * 1000  # the sidecar's default max_future_skew
_FLOAT32_MAX = 3.4028234663852886e38
_INT64_MIN, _INT64_MAX = -(2 ** 63), 2 ** 63 - 1
# The sidecar stores float32 fields and vectors as float32: 9 significant
# digits give back the same float32, in about half the bytes of a double's
# repr, and %-formatting is the fastest text Python makes of a float.
_F32 = "%.9g"

# 1 MiB: far below RabbitMQ's max_message_size (128 MiB by default) and the
# sidecar's 32-bit offsets into a message, small enough that a redelivered
# message costs little, large enough that a thousand typical updates share one.
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
DEFAULT_MAX_UPDATES_PER_MESSAGE = 1000


class PublishValidationError(LarderError, ValueError):
    """Rows that the sidecar would refuse; nothing was sent. ``errors`` is
    the list of RowError, every bad row and column."""

    code = 1

    def __init__(self, errors, table):
        self.errors = errors
        rows = len({e.row for e in errors})
        lines = ["%d bad row(s) for table %r, nothing sent (on_error=\"skip\" sends the others):" % (rows, table)]
        lines += ["  " + str(e) for e in errors[:20]]
        if len(errors) > 20:
            lines.append("  ... and %d more" % (len(errors) - 20))
        super().__init__("\n".join(lines))


class RowError:
    """One problem: the row's position in the input (0-based), the column
    (or "" for the row as a whole) and why."""

    __slots__ = ("row", "column", "reason")

    def __init__(self, row, column, reason):
        self.row = int(row)
        self.column = column
        self.reason = reason

    def __repr__(self):
        return "RowError(%d, %r, %r)" % (self.row, self.column, self.reason)

    def __str__(self):
        return "row %d, column %r: %s" % (self.row, self.column, self.reason)

    def __eq__(self, other):
        return isinstance(other, RowError) and (self.row, self.column, self.reason) == (other.row, other.column,
                                                                                         other.reason)

    def __hash__(self):
        return hash((self.row, self.column, self.reason))


class PublishReport:
    """What publish() did. Rows are input rows; ``published_rows`` were
    confirmed by the broker and routed to at least one queue."""

    def __init__(self, rows):
        self.rows = rows
        self.skipped = []  # RowError of the rows left out (on_error="skip")
        self.skipped_rows = 0
        self.messages = 0
        self.confirmed_messages = 0
        self.published_rows = 0
        self.returned_messages = 0  # unroutable: no queue bound to the exchange with that routing key
        self.returned_rows = 0
        self.nacked_messages = 0  # the broker refused to take the message
        self.nacked_rows = 0
        self.bytes = 0

    @property
    def ok(self):
        """Every row that was not skipped reached a queue."""
        return self.published_rows + self.skipped_rows == self.rows

    def __repr__(self):
        return ("PublishReport(rows=%d, published_rows=%d, skipped_rows=%d, messages=%d, confirmed=%d, "
                "returned=%d (%d rows), nacked=%d (%d rows), bytes=%d)"
                % (self.rows, self.published_rows, self.skipped_rows, self.messages, self.confirmed_messages,
                   self.returned_messages, self.returned_rows, self.nacked_messages, self.nacked_rows, self.bytes))

    __str__ = __repr__


# ---------------------------------------------------------------------------
# Schema: what each column may hold


class _Column:
    """What a column name means for a table. kind: "field" (stored as is),
    "input" (read by a transform or an aggregate: a number, a string for a
    vocabulary or string categories, a vector for a projection), or
    "refused" (reason says why a message may not send it). nullable: every
    reader is a transform that takes a missing value, so NaN/None is sent as
    JSON null."""

    __slots__ = ("name", "kind", "type", "count", "reason", "nullable")

    def __init__(self, name, kind, ftype, count=0, reason="", nullable=False):
        self.name, self.kind, self.type, self.count, self.reason = name, kind, ftype, count, reason
        self.nullable = nullable


def _step_name(step):
    return step if isinstance(step, str) else next(iter(step), "") if isinstance(step, dict) else ""


def _string_categories(params):
    return any(isinstance(c, str) for c in (params or {}).get("categories") or [])


def _chain_input(steps):
    """(JSON type the chain reads: "number", "string" or "vector", its vector
    length, whether it takes null) of a `transform:` list (transform.h)."""
    names = [_step_name(s) for s in steps]
    first = 1 if names and names[0] == "impute" else 0
    kind, count = "number", 0
    if names and names[0] == "project":
        p = steps[0]["project"] or {}
        kind, count = "vector", len(p.get("mean") or (p.get("components") or [[]])[0])
    elif first < len(names):
        s = steps[first]
        if names[first] == "vocabulary" or (names[first] in ("ordinal", "one_hot")
                                            and _string_categories(s.get(names[first]) if isinstance(s, dict)
                                                                   else None)):
            kind = "string"
    nullable = bool(names) and names[0] in ("impute", "ordinal", "one_hot")
    return kind, count, nullable


class TableSchema:
    """The part of a table's schema a producer needs: key_max_len, what each
    column may be, and the event-time bounds the sidecar applies."""

    def __init__(self, name, key_max_len, columns, allow_unknown=False, min_event_time_ms=_MIN_EVENT_TIME_MS,
                 max_future_skew_ms=_FUTURE_SKEW_MS, source=""):
        self.name = name
        self.key_max_len = key_max_len
        self.columns = {c.name: c for c in columns}
        self.allow_unknown = allow_unknown
        self.min_event_time_ms = min_event_time_ms
        self.max_future_skew_ms = max_future_skew_ms  # None: off
        self.source = source

    @classmethod
    def from_config(cls, path, table):
        return _config_schema(_load_yaml(path), table, path)

    @classmethod
    def from_segment(cls, segment, table, dir=None):  # noqa: A002 - mirrors larder.open
        from .client import FieldType, Segment
        seg = segment if isinstance(segment, Segment) else Segment(segment, dir)
        t = seg.table(table)
        n_agg = t.stats()["aggregates"]
        names = {FieldType.INT64: "int64", FieldType.FLOAT64: "float64", FieldType.FLOAT32: "float32",
                 FieldType.BOOL: "bool", FieldType.VECTOR: "vector", FieldType.STRING: "string"}
        cols = []
        for i, f in enumerate(t.fields):
            if i >= len(t.fields) - n_agg:
                cols.append(_Column(f.name, "refused", "", 0,
                                    "an aggregate the sidecar computes: send its source with each event"))
            else:
                cols.append(_Column(f.name, "field", names[f.type], f.count))
        return cls(table, _probe_key_max_len(t), cols, source="segment %r" % seg.name)


def _probe_key_max_len(table):
    """The C ABI does not expose key_max_len, but a get refuses (INVALID_KEY)
    exactly the keys longer than it: find the longest one it takes."""
    from .client import Status
    lo, hi = 1, 1024  # key_max_len is in [1, 1024] (docs/sidecar.md)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if table.get(b"\x00" * mid).status == Status.INVALID_KEY:
            hi = mid - 1
        else:
            lo = mid
    return lo


def _load_yaml(path):
    try:
        import yaml
    except ImportError:
        raise ImportError("larder.publish(config=...) needs PyYAML (Debian: python3-yaml)") from None
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


_DURATION_UNITS = {"ms": 1, "s": 1000, "m": 60000, "h": 3600000, "d": 86400000}


def _duration_ms(value, where):
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    for unit in ("ms", "s", "m", "h", "d"):
        if text.endswith(unit) and text[:-len(unit)].isdigit():
            return int(text[:-len(unit)]) * _DURATION_UNITS[unit]
    raise ValueError("%s: %r is not a duration (500ms, 90s, 5m, 1h, 7d)" % (where, value))


def _bounds(section, min_ms, skew_ms, where):
    if not section:
        return min_ms, skew_ms
    if "max_future_skew" in section:
        v = section["max_future_skew"]
        skew_ms = None if v is False or str(v) == "off" else _duration_ms(v, where + ".max_future_skew")
    if "min_event_time" in section:
        v = section["min_event_time"]
        if isinstance(v, datetime.date):
            min_ms = int(datetime.datetime(v.year, v.month, v.day, tzinfo=datetime.timezone.utc).timestamp() * 1000)
        elif isinstance(v, int):
            min_ms = v
        else:
            d = datetime.date.fromisoformat(str(v))
            min_ms = int(datetime.datetime(d.year, d.month, d.day, tzinfo=datetime.timezone.utc).timestamp() * 1000)
    return min_ms, skew_ms


def _config_schema(cfg, table, path):
    tables = cfg.get("tables") or []
    spec = next((t for t in tables if t.get("name") == table), None)
    if spec is None:
        raise LookupError("%s has no table %r; it has: %s" % (path, table, ", ".join(t.get("name", "?")
                                                                                   for t in tables)))
    min_ms, skew_ms = _bounds(cfg.get("event_time"), _MIN_EVENT_TIME_MS, _FUTURE_SKEW_MS, "event_time")
    min_ms, skew_ms = _bounds(spec.get("event_time"), min_ms, skew_ms, "tables[%s].event_time" % table)
    cols = {}
    inputs = {}  # input name -> "number", "string", "vector" or "source"
    input_dims = {}  # vector inputs: their length
    nullable = {}  # input name -> every reader takes null
    declared = {f["name"]: f for f in spec.get("fields") or []}
    for f in spec.get("fields") or []:
        steps = f.get("transform") or []
        source = f.get("from", f["name"])
        count = f.get("dims", 0) if f["type"] == "vector" else f.get("max_len", 0) if f["type"] == "string" else 0
        if isinstance(source, list):  # a projection gathered from several members, each a number
            cols[f["name"]] = _Column(f["name"], "refused", "", 0,
                                      "computed by the sidecar from the inputs %s: send them instead" % source)
            for member in source:
                inputs[member] = "number"
                nullable[member] = False
            continue
        if source != f["name"]:
            cols[f["name"]] = _Column(f["name"], "refused", "", 0,
                                      "computed by the sidecar from the input %r: send %r instead" % (source, source))
        if steps:
            kind, dims, takes_null = _chain_input(steps)
            inputs[source] = kind
            if kind == "vector":
                input_dims[source] = dims
            nullable[source] = takes_null and nullable.get(source, True)
        elif source == f["name"]:
            cols[f["name"]] = _Column(f["name"], "field", f["type"], count)
            nullable[source] = False
        else:
            inputs[source] = f["type"] if f["type"] != "vector" else "vector"
            input_dims[source] = count
            nullable[source] = False
    for a in spec.get("aggregates") or []:
        src = a.get("source")
        window = a.get("window", "the last %s values" % a.get("n"))  # last_n takes n, not a window
        how = "%s of %r over %s" % (a.get("fn"), src, window) if src else "%s over %s" % (a.get("fn"), window)
        cols[a["name"]] = _Column(a["name"], "refused", "", 0,
                                  "an aggregate the sidecar computes (%s)%s" % (
                                      how, ": send %r with each event" % src if src else ""))
        if src and src not in declared and src not in inputs:
            inputs[src] = "source"
        if src and src not in declared:
            nullable[src] = False  # an aggregate folds the raw value: null is none
    for name, kind in inputs.items():
        if name in cols:
            cols[name].nullable = False
        else:
            count = input_dims.get(name, 0) if kind == "vector" else 1 << 30 if kind == "string" else 0
            cols[name] = _Column(name, "input", kind, count, nullable=nullable.get(name, False))
    return TableSchema(table, int(spec.get("key_max_len", 64)), list(cols.values()),
                       bool(spec.get("allow_unknown_fields", False)), min_ms, skew_ms, source=path)


# ---------------------------------------------------------------------------
# Columns: input data to NumPy arrays


class _Missing:
    def __repr__(self):
        return "<missing>"


_MISSING = _Missing()


def _columns_of(data):
    """(n, {name: array}) of a DataFrame, a dict of columns or a list of dicts."""
    if hasattr(data, "columns") and hasattr(data, "iloc"):  # pandas DataFrame, without importing pandas
        cols = {}
        for name in data.columns:
            s = data[name]
            if str(s.dtype).startswith("datetime64[") and getattr(s.dt, "tz", None) is not None:
                s = s.dt.tz_convert("UTC").dt.tz_localize(None)
            cols[str(name)] = s.to_numpy()
        return len(data), cols
    if isinstance(data, dict):
        cols = {}
        n = None
        for name, values in data.items():
            a = values if isinstance(values, np.ndarray) else np.asarray(values, dtype=object) \
                if _ragged(values) else np.asarray(values)
            if a.ndim == 0:
                raise ValueError("column %r is a scalar; a column has one value per row" % name)
            if n is None:
                n = len(a)
            elif len(a) != n:
                raise ValueError("column %r has %d values, the others %d" % (name, len(a), n))
            cols[str(name)] = a
        return n or 0, cols
    if isinstance(data, (list, tuple)):
        names = {}
        for r in data:
            if not isinstance(r, dict):
                raise TypeError("a list of rows holds dicts, not %s" % type(r).__name__)
            for k in r:
                names.setdefault(k, None)
        cols = {}
        for name in names:
            a = np.empty(len(data), dtype=object)
            a[:] = [r.get(name, _MISSING) for r in data]
            cols[str(name)] = a
        return len(data), cols
    raise TypeError("publish takes a pandas DataFrame, a dict of columns or a list of dicts, not %s"
                    % type(data).__name__)


def _ragged(values):
    try:
        return any(isinstance(v, (list, tuple, np.ndarray)) for v in values) and len({
            len(v) if isinstance(v, (list, tuple, np.ndarray)) else -1 for v in values}) > 1
    except TypeError:
        return False


def _absent(v):
    """None, NaN, NaT and _MISSING: no value in this row."""
    if v is None or v is _MISSING:
        return True
    if isinstance(v, float):
        return v != v
    if isinstance(v, np.floating):
        return bool(np.isnan(v))
    return type(v).__name__ in ("NaTType", "NAType")


def _null_rows(values):
    """The rows of a column that hold NaN or None (not those of a list of
    dicts that does not name the column)."""
    if values.dtype.kind == "f" and values.ndim == 1:
        return np.isnan(values)
    if values.dtype.kind != "O":
        return np.zeros(len(values), dtype=bool)
    return np.fromiter((v is not _MISSING and _absent(v) for v in values.tolist()), dtype=bool, count=len(values))


def _present(values):
    """The rows of a column that hold a value (not None, NaN, NaT, or left
    out of a row's dict)."""
    kind = values.dtype.kind
    if values.ndim != 1:
        return np.ones(len(values), dtype=bool)
    if kind == "f":
        return ~np.isnan(values)
    if kind in "mM":
        return ~np.isnat(values)
    if kind == "O":
        return np.fromiter((not _absent(v) for v in values.tolist()), dtype=bool, count=len(values))
    return np.ones(len(values), dtype=bool)


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v):
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


class _Encoded:
    """A column's JSON texts: texts[i] is None where the row has no value;
    errors are (row, reason)."""

    def __init__(self, n):
        self.texts = [None] * n
        self.errors = []


def _number_texts(values):
    """JSON texts of an int64 or float64 array (finite values): str of an
    int and repr of a float are valid JSON numbers, and map() keeps the
    loop in C."""
    if values.dtype.kind in "iu":
        return list(map(str, values.tolist()))
    return list(map(float.__repr__, values.astype(np.float64).tolist()))


def _encode(values, ftype, count, nan_ok):
    """Checks one column against its type and returns its texts. ftype is a
    schema type, "number" (a transform's input), "source" (an aggregate's:
    a number or a bool) or "string"."""
    n = len(values)
    out = _Encoded(n)
    kind = values.dtype.kind
    missing_reason = None if nan_ok else "no value (NaN/None) where the field needs one (nan=\"omit\" leaves it unset)"

    def mark_missing(idx):
        if missing_reason:
            out.errors.extend((i, missing_reason) for i in idx)

    if ftype in ("int64", "float64", "float32", "number", "source") and values.ndim == 1 and kind in "iufb":
        if kind == "b":
            if ftype == "source":
                texts = np.where(values, "true", "false").tolist()
                out.texts = texts
                return out
            out.errors.extend((i, "got bool where %s is expected" % _what(ftype)) for i in range(n))
            return out
        if ftype == "int64":
            if kind == "u":
                bad = values > np.uint64(_INT64_MAX)
                out.errors.extend((i, "out of range for int64: %d" % values[i]) for i in np.flatnonzero(bad))
                ok = ~bad
            elif kind == "f":
                nan = np.isnan(values)
                with np.errstate(invalid="ignore"):
                    frac = ~nan & (~np.isfinite(values) | (np.floor(values) != values))
                    big = ~nan & ~frac & ((values < -9.223372036854775808e18) | (values >= 9.223372036854775808e18))
                out.errors.extend((i, "expected an integer, got %r" % float(values[i])) for i in np.flatnonzero(frac))
                out.errors.extend((i, "out of range for int64: %r" % float(values[i])) for i in np.flatnonzero(big))
                mark_missing(np.flatnonzero(nan))
                ok = ~(nan | frac | big)
                values = np.where(ok, values, 0).astype(np.int64)
            else:
                ok = np.ones(n, dtype=bool)
            texts = _number_texts(values.astype(np.int64) if kind == "u" else values)
        else:
            f = values.astype(np.float64)
            nan = np.isnan(f)
            inf = np.isinf(f)
            out.errors.extend((i, "not finite: %r" % float(f[i])) for i in np.flatnonzero(inf))
            mark_missing(np.flatnonzero(nan))
            ok = ~(nan | inf)
            if ftype == "float32":
                big = ok & (np.abs(np.where(ok, f, 0)) > _FLOAT32_MAX)
                out.errors.extend((i, "out of range for float32: %r" % float(f[i])) for i in np.flatnonzero(big))
                ok &= ~big
            if kind in "iu":
                texts = _number_texts(values)
            elif ftype == "float32":
                with np.errstate(over="ignore"):
                    texts = list(map(_F32.__mod__, np.where(ok, f, 0.0).astype(np.float32).tolist()))
            else:
                texts = _number_texts(np.where(ok, f, 0.0))
        if ok.all():
            out.texts = texts
        else:
            out.texts = [t if good else None for t, good in zip(texts, ok.tolist())]
        return out

    if ftype == "bool" and kind == "b" and values.ndim == 1:
        out.texts = np.where(values, "true", "false").tolist()
        return out

    if ftype == "vector" and values.ndim == 2:
        if values.shape[1] != count:
            out.errors.extend((i, "a vector of %d elements, the field has dims %d" % (values.shape[1], count))
                              for i in range(n))
            return out
        if values.dtype.kind not in "iuf":
            out.errors.extend((i, "a vector of %s, not numbers" % values.dtype) for i in range(n))
            return out
        f = values.astype(np.float64)
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(f).all(axis=1) | (np.abs(f) > _FLOAT32_MAX).any(axis=1)
        out.errors.extend((i, "a vector element not finite or outside the float32 range") for i in np.flatnonzero(bad))
        if n:
            with np.errstate(over="ignore", invalid="ignore"):
                rows = np.where(bad[:, None], 0.0, f).astype(np.float32).tolist()
            fmt = _F32.__mod__
            out.texts = ["[" + ",".join(map(fmt, r)) + "]" if not b else None for r, b in zip(rows, bad.tolist())]
        return out

    if ftype == "vector" and kind == "O" and values.ndim == 1 and n:
        # A DataFrame column of arrays: one 2-D array when every row has one.
        rows = values.tolist()
        try:
            same = all(len(r) == count for r in rows) and all(isinstance(r, (list, tuple, np.ndarray)) for r in rows)
        except TypeError:
            same = False
        if same:
            try:
                block = np.stack(rows) if all(isinstance(r, np.ndarray) for r in rows) else np.array(rows)
            except (TypeError, ValueError):
                block = None
            if block is not None and block.shape == (n, count) and block.dtype.kind in "iuf":
                return _encode(block, ftype, count, nan_ok)
    if ftype == "string" and kind in "OU" and values.ndim == 1:
        strings = values.tolist()
        if all(type(v) is str for v in strings):
            lengths = np.fromiter(map(len, map(str.encode, strings)), dtype=np.int64, count=n)
            long = np.flatnonzero(lengths > count)
            out.errors.extend((i, "a string of %d bytes, max_len is %d" % (lengths[i], count)) for i in long)
            out.texts = list(map(_quote, strings))
            for i in long:
                out.texts[i] = None
            return out
    if kind in "US":
        values = values.astype(object)
    elif kind != "O":
        if ftype in ("string", "vector", "bool") or kind in "mM":
            out.errors.extend((i, "got a %s column where %s is expected" % (values.dtype, _what(ftype))) for i in range(n))
            return out
        values = values.astype(object)
    # Object columns: one look at each value.
    texts = out.texts
    err = out.errors
    for i, v in enumerate(values.tolist()):
        if v is _MISSING:  # a list of dicts: this row's dict does not name the column
            continue
        if _absent(v):
            if missing_reason:
                err.append((i, missing_reason))
            continue
        r = _one(v, ftype, count)
        if isinstance(r, _Bad):
            err.append((i, r.reason))
        else:
            texts[i] = r
    return out


class _Bad:
    __slots__ = ("reason",)

    def __init__(self, reason):
        self.reason = reason


def _what(ftype):
    return {"int64": "an integer", "float64": "a number", "float32": "a number", "number": "a number",
            "source": "a number or a bool", "bool": "a bool", "string": "a string",
            "vector": "a vector"}.get(ftype, ftype)


def _one(v, ftype, count):
    """The JSON text of one value, or _Bad."""
    if ftype == "string":
        if not isinstance(v, str):
            return _Bad("got %s where a string is expected" % type(v).__name__)
        b = len(v.encode("utf-8"))
        if b > count:
            return _Bad("a string of %d bytes, max_len is %d" % (b, count))
        return _quote(v)
    if ftype == "bool" or (ftype == "source" and isinstance(v, (bool, np.bool_))):
        if not isinstance(v, (bool, np.bool_)):
            return _Bad("got %s where a bool is expected" % type(v).__name__)
        return "true" if v else "false"
    if ftype == "vector":
        try:
            a = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError):
            return _Bad("got %s where a vector of %d numbers is expected" % (type(v).__name__, count))
        if a.ndim != 1 or len(a) != count:
            return _Bad("a vector of %d elements, the field has dims %d" % (a.size if a.ndim else 1, count))
        if not np.isfinite(a).all() or (np.abs(a) > _FLOAT32_MAX).any():
            return _Bad("a vector element not finite or outside the float32 range")
        return json.dumps(a.tolist(), separators=(",", ":"))
    if ftype == "int64":
        if isinstance(v, (float, np.floating)) and math.isfinite(v) and float(v).is_integer():
            v = int(v)
        if not _is_int(v):
            return _Bad("got %s %r where an integer is expected" % (type(v).__name__, v))
        if not _INT64_MIN <= int(v) <= _INT64_MAX:
            return _Bad("out of range for int64: %d" % v)
        return str(int(v))
    if not _is_number(v):
        return _Bad("got %s %r where %s is expected" % (type(v).__name__, v, _what(ftype)))
    f = float(v)
    if not math.isfinite(f):
        return _Bad("not finite: %r" % f)
    if ftype == "float32" and abs(f) > _FLOAT32_MAX:
        return _Bad("out of range for float32: %r" % f)
    return str(int(v)) if _is_int(v) else repr(f)


def _keys(values, key_max_len):
    n = len(values)
    texts = [None] * n
    errors = []
    if values.dtype.kind in "iu":
        for i, s in enumerate(map(str, values.tolist())):
            if len(s) > key_max_len:
                errors.append((i, "a key of %d bytes, key_max_len is %d" % (len(s), key_max_len)))
            else:
                texts[i] = '"' + s + '"'
        return texts, errors
    keys = values.tolist()
    if all(type(v) is str for v in keys):
        texts = list(map(_quote, keys))
        lengths = np.fromiter(map(len, map(str.encode, keys)), dtype=np.int64, count=n)
        for i in np.flatnonzero((lengths > key_max_len) | (lengths == 0)):
            texts[i] = None
            errors.append((i, "empty key" if lengths[i] == 0 else "a key of %d bytes, key_max_len is %d"
                           % (lengths[i], key_max_len)))
        return texts, errors
    for i, v in enumerate(keys):
        if _is_int(v):
            v = str(v)
        if _absent(v):
            errors.append((i, "missing key"))
        elif not isinstance(v, str):
            errors.append((i, "a key is a string (or an integer), not %s" % type(v).__name__))
        elif not v:
            errors.append((i, "empty key"))
        else:
            b = len(v.encode("utf-8"))
            if b > key_max_len:
                errors.append((i, "a key of %d bytes, key_max_len is %d" % (b, key_max_len)))
            else:
                texts[i] = _quote(v)
    return texts, errors


def _scalar_event_time_ms(v):
    if _is_int(v):
        return int(v)
    if isinstance(v, np.datetime64):
        if np.isnat(v):
            raise ValueError("event_time is NaT")
        return int(v.astype("datetime64[ms]").astype(np.int64))
    if isinstance(v, datetime.datetime):  # also pandas.Timestamp
        if v.tzinfo is None:
            raise ValueError("event_time %r has no time zone: give an aware datetime (e.g. tz=UTC) or ms since "
                             "the epoch" % (v,))
        return int(v.timestamp() * 1000) if not hasattr(v, "value") else int(v.value // 1_000_000)
    raise TypeError("event_time is a column name, ms since the epoch, or an aware datetime; not %s"
                    % type(v).__name__)


def _event_times(values):
    """(int64 ms array, ok mask, errors) of an event-time column."""
    n = len(values)
    kind = values.dtype.kind
    errors = []
    if kind in "iu":
        return values.astype(np.int64), np.ones(n, dtype=bool), errors
    if kind == "M":
        nat = np.isnat(values)
        ms = values.astype("datetime64[ms]").astype(np.int64)
        errors.extend((i, "missing event time") for i in np.flatnonzero(nat))
        return ms, ~nat, errors
    if kind == "f":
        nan = np.isnan(values)
        with np.errstate(invalid="ignore"):
            frac = ~nan & (~np.isfinite(values) | (np.floor(values) != values))
        errors.extend((i, "missing event time") for i in np.flatnonzero(nan))
        errors.extend((i, "an event time in ms is an integer, got %r" % float(values[i])) for i in np.flatnonzero(frac))
        ok = ~(nan | frac)
        return np.where(ok, values, 0).astype(np.int64), ok, errors
    ms = np.zeros(n, dtype=np.int64)
    ok = np.zeros(n, dtype=bool)
    for i, v in enumerate(values.tolist() if kind == "O" else list(values)):
        if _absent(v):
            errors.append((i, "missing event time"))
            continue
        try:
            ms[i] = _scalar_event_time_ms(v)
            ok[i] = True
        except (TypeError, ValueError, OverflowError) as e:
            errors.append((i, str(e)))
    return ms, ok, errors


# ---------------------------------------------------------------------------
# Building messages


def build_messages(data, table, key, event_time, schema, id=None, delete=None, nan="error",  # noqa: A002
                   max_message_bytes=DEFAULT_MAX_MESSAGE_BYTES,
                   max_updates_per_message=DEFAULT_MAX_UPDATES_PER_MESSAGE, now_ms=None):
    """Validates ``data`` and returns (bodies, rows per body, RowErrors).
    Bodies are bytes, each a JSON array of updates; rows with an error are
    left out of them. The arguments are publish()'s."""
    if nan not in ("error", "omit"):
        raise ValueError("nan is \"error\" or \"omit\", not %r" % (nan,))
    n, cols = _columns_of(data)
    errors = []

    def add(column, pairs):
        errors.extend(RowError(i, column, reason) for i, reason in pairs)

    if key not in cols:
        raise ValueError("no key column %r; the columns are: %s" % (key, ", ".join(cols)))
    key_texts, key_errors = _keys(cols[key], schema.key_max_len)
    add(key, key_errors)

    # Event times: a column, or one value for every row.
    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    if isinstance(event_time, str):
        if event_time not in cols:
            raise ValueError("no event_time column %r; the columns are: %s" % (event_time, ", ".join(cols)))
        et, et_ok, et_errors = _event_times(cols[event_time])
        add(event_time, et_errors)
        et_column = event_time
    else:
        if event_time is None:
            raise ValueError("event_time: name a column, or give ms since the epoch or an aware datetime")
        et = np.full(n, _scalar_event_time_ms(event_time), dtype=np.int64)
        et_ok = np.ones(n, dtype=bool)
        et_column = "event_time"
    with np.errstate(invalid="ignore"):
        out_of_format = et_ok & ((et < 0) | (et > _MAX_EVENT_TIME_MS))
        too_old = et_ok & ~out_of_format & (et < schema.min_event_time_ms)
        future = (et_ok & ~out_of_format & (et - now_ms > schema.max_future_skew_ms)
                  if schema.max_future_skew_ms is not None else np.zeros(n, dtype=bool))
    add(et_column, ((i, "event time %d is outside 0..%d ms" % (et[i], _MAX_EVENT_TIME_MS))
                    for i in np.flatnonzero(out_of_format)))
    add(et_column, ((i, "event time %d is before the table's min_event_time %d (seconds sent as ms?)"
                     % (et[i], schema.min_event_time_ms)) for i in np.flatnonzero(too_old)))
    add(et_column, ((i, "event time %d is %d ms ahead of this clock, more than max_future_skew %d ms"
                     % (et[i], et[i] - now_ms, schema.max_future_skew_ms)) for i in np.flatnonzero(future)))
    et_texts = _number_texts(et)

    # Deletes: every row, or the rows whose `delete` column is true.
    deleting = np.zeros(n, dtype=bool)
    delete_column = None
    if delete is True:
        deleting[:] = True
    elif isinstance(delete, str):
        if delete not in cols:
            raise ValueError("no delete column %r; the columns are: %s" % (delete, ", ".join(cols)))
        d = cols[delete]
        delete_column = delete
        if d.dtype.kind == "b":
            deleting = d.astype(bool)
        else:
            for i, v in enumerate(d.tolist()):
                if isinstance(v, (bool, np.bool_)):
                    deleting[i] = bool(v)
                elif not _absent(v):
                    add(delete, [(i, "the delete column holds bools, not %s" % type(v).__name__)])
    elif delete not in (None, False):
        raise TypeError("delete is True, False or the name of a bool column")

    id_texts = None
    if id is not None:
        if id not in cols:
            raise ValueError("no id column %r; the columns are: %s" % (id, ", ".join(cols)))
        enc = _encode(cols[id] if cols[id].dtype.kind not in "iu" else cols[id].astype(str).astype(object),
                      "string", 1 << 30, True)
        add(id, enc.errors)
        id_texts = enc.texts

    upserting = ~deleting
    field_texts = []
    special = {key, et_column if isinstance(event_time, str) else None, delete_column, id}
    if upserting.any():
        for name, values in cols.items():
            if name in special:
                continue
            c = schema.columns.get(name)
            if c is None:
                if schema.allow_unknown:
                    continue
                add(name, ((i, "unknown column: table %r (%s) has no field or input %r"
                            % (table, schema.source, name)) for i in np.flatnonzero(upserting & _present(values))))
                continue
            if c.kind == "refused":
                add(name, ((i, c.reason) for i in np.flatnonzero(upserting & _present(values))))
                continue
            enc = _encode(values, c.type, c.count, nan == "omit" or c.nullable)
            add(name, ((i, r) for i, r in enc.errors if upserting[i]))
            if c.nullable:  # a missing value is the transform's to handle: send null
                nulls = _null_rows(values)
                enc.texts = ["null" if null else t for t, null in zip(enc.texts, nulls.tolist())]
            field_texts.append((_quote(name) + ":", enc.texts))

    bad = np.zeros(n, dtype=bool)
    for e in errors:
        bad[e.row] = True
    errors.sort(key=lambda e: e.row)
    good = np.flatnonzero(~bad)

    head = '{"table":' + _quote(table) + ',"key":'
    rows = []
    if len(good):
        subset = len(good) < n
        keys = [key_texts[i] for i in good] if subset else key_texts
        ets = [et_texts[i] for i in good] if subset else et_texts
        values = [(p, [t[i] for i in good] if subset else t) for p, t in field_texts]
        if id_texts is None and not deleting.any() and not any(None in t for _, t in values):
            # Every row names the same fields: one %-format per row.
            def lit(text):
                return text.replace("%", "%%")
            tmpl = (lit(head) + '%s,"event_time":%s,"fields":{' + ",".join(lit(p) + "%s" for p, _ in values) + "}}")
            rows = [tmpl % r for r in zip(keys, ets, *(t for _, t in values))]
        else:
            delete_rows = deleting[good].tolist()
            ids = [id_texts[i] for i in good] if id_texts is not None else [None] * len(good)
            per_row = zip(*(t for _, t in values)) if values else iter(lambda: (), None)
            prefixes = [p for p, _ in values]
            for k, e, d, id_text, vals in zip(keys, ets, delete_rows, ids, per_row):
                extra = ',"id":' + id_text if id_text is not None else ""
                if d:
                    rows.append(head + k + ',"event_time":' + e + extra + ',"op":"delete"}')
                else:
                    f = ",".join(p + v for p, v in zip(prefixes, vals) if v is not None)
                    rows.append(head + k + ',"event_time":' + e + extra + ',"fields":{' + f + '}}')

    bodies, counts = _cut(rows, max_message_bytes, max_updates_per_message)
    return bodies, counts, errors, good


def _cut(rows, max_bytes, max_updates):
    """Joins rows into JSON arrays of at most max_bytes (a row longer than
    that goes alone) and max_updates rows. The texts are ASCII (strings are
    \\u-escaped), so characters are bytes."""
    if max_updates < 1 or max_bytes < 16:
        raise ValueError("max_updates_per_message >= 1 and max_message_bytes >= 16")
    if not rows:
        return [], []
    ends = np.cumsum(np.fromiter(map(len, rows), dtype=np.int64, count=len(rows)) + 1)  # + the comma or "]"
    bodies, counts = [], []
    start = 0
    base = 0
    n = len(rows)
    while start < n:
        end = int(np.searchsorted(ends, base + max_bytes - 1, side="right"))  # - the "["
        end = max(start + 1, min(end, start + max_updates))
        bodies.append(("[" + ",".join(rows[start:end]) + "]").encode("ascii"))
        counts.append(end - start)
        base = int(ends[end - 1])
        start = end
    return bodies, counts


# ---------------------------------------------------------------------------
# Connection


def _parse_url(url):
    """The sidecar's rules (docs/sidecar.md, rabbitmq.url): amqp or amqps,
    user (default guest), no password, host, port (5672/5671), vhost."""
    p = urllib.parse.urlsplit(url)
    if p.scheme not in ("amqp", "amqps"):
        raise ValueError("url %r: the scheme is amqp:// or amqps://" % url)
    if p.password is not None:
        raise ValueError("url %r contains a password; remove it and pass password= or set the environment "
                         "variable password_env names" % url.replace(":" + p.password + "@", ":***@"))
    if not p.hostname:
        raise ValueError("url %r has no host" % url)
    if p.query:
        raise ValueError("url %r: no query string" % url)
    path = p.path
    vhost = "/" if path in ("", "/") else urllib.parse.unquote(path[1:])
    tls = p.scheme == "amqps"
    return {"tls": tls, "user": urllib.parse.unquote(p.username) if p.username else "guest", "host": p.hostname,
            "port": p.port or (5671 if tls else 5672), "vhost": vhost}


def _connection_parameters(url, password, tls, connection_name):
    import pika
    u = _parse_url(url)
    ssl_options = None
    if u["tls"]:
        ctx = ssl.create_default_context(cafile=tls.get("ca_file") or None)
        if not tls.get("verify_peer", True):
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif not tls.get("verify_hostname", True):
            ctx.check_hostname = False
        if tls.get("cert_file"):
            ctx.load_cert_chain(tls["cert_file"], tls.get("key_file") or None)
        ssl_options = pika.SSLOptions(ctx, u["host"])
    return pika.ConnectionParameters(host=u["host"], port=u["port"], virtual_host=u["vhost"],
                                     credentials=pika.PlainCredentials(u["user"], password),
                                     ssl_options=ssl_options, client_properties={
                                         "connection_name": connection_name})


def _password(password, password_env, password_file):
    if password is not None:
        return password
    if password_file:
        with open(password_file, encoding="utf-8") as f:
            return f.read().rstrip("\n")
    if password_env and password_env in os.environ:
        return os.environ[password_env]
    raise ValueError("no broker password: pass password=, or set $%s" % (password_env or "LARDER_AMQP_PASSWORD"))


def publish(data, table, key, event_time, url=None, exchange=None, routing_key=None, *, config=None,
            segment=None, dir=None, id=None, delete=None, on_error="raise", nan="error",  # noqa: A002
            password=None, password_env="LARDER_AMQP_PASSWORD", password_file=None, tls=None,
            max_message_bytes=DEFAULT_MAX_MESSAGE_BYTES, max_updates_per_message=DEFAULT_MAX_UPDATES_PER_MESSAGE,
            connection_name="larder.publish"):
    """Validates ``data`` (a pandas DataFrame, a dict of columns, or a list
    of dicts) against table ``table`` and publishes it, in batches of
    updates, with publisher confirms; returns a PublishReport.

    key: the key column (strings, or integers sent as their decimal text).
    event_time: a column (ms since the epoch, or datetime64) or one value
    for every row (ms, or an aware datetime).
    config / segment (+ dir): where the schema comes from, the sidecar's
    config file or a live segment. With config, url, password, TLS and the
    exchange default to the config's rabbitmq section.
    url: amqp://user@host:port/vhost or amqps://...; the password comes from
    password=, password_file or $password_env, never from the URL.
    exchange, routing_key: where to publish (default: the config's first
    binding's exchange, and the table's name as the routing key, which a
    topic binding "<table>.#" matches).
    id: a column of event ids (deduplication on tables with aggregates).
    delete: True deletes every row's key; a column name deletes the rows
    where that bool column is true. Deletes carry no fields.
    on_error: "raise" (PublishValidationError, nothing sent) or "skip"
    (the bad rows are left out and listed in report.skipped).
    nan: "error" (a missing value where a field is given is an error) or
    "omit" (the row leaves that field unset: an upsert writes only the
    fields it names).

    Messages are mandatory and persistent: report.returned_* counts those
    no queue took (unroutable), report.nacked_* those the broker refused.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError("on_error is \"raise\" or \"skip\", not %r" % (on_error,))
    if (config is None) == (segment is None):
        raise ValueError("give the schema: config= (the sidecar's config file) or segment= (a live segment)")
    rabbit = {}
    if config is not None:
        cfg = _load_yaml(config)
        schema = _config_schema(cfg, table, config)
        rabbit = cfg.get("rabbitmq") or {}
    else:
        schema = TableSchema.from_segment(segment, table, dir)

    bodies, counts, errors, good = build_messages(data, table, key, event_time, schema, id=id, delete=delete,
                                                  nan=nan, max_message_bytes=max_message_bytes,
                                                  max_updates_per_message=max_updates_per_message)
    report = PublishReport(len(good) + len({e.row for e in errors}))
    if errors:
        if on_error == "raise":
            raise PublishValidationError(errors, table)
        report.skipped = errors
        report.skipped_rows = len({e.row for e in errors})

    url = url or rabbit.get("url")
    if not url:
        raise ValueError("no broker: pass url= (or config= with rabbitmq.url)")
    if exchange is None:
        bindings = rabbit.get("bindings") or []
        if not bindings:
            raise ValueError("no exchange: pass exchange= (or config= with rabbitmq.bindings)")
        exchange = bindings[0]["exchange"]
    if routing_key is None:
        routing_key = table
    if password is None and password_file is None and rabbit:
        password_file = rabbit.get("password_file")
        password_env = rabbit.get("password_env", password_env)
    tls = tls if tls is not None else rabbit.get("tls") or {}
    params = _connection_parameters(url, _password(password, password_env, password_file), tls, connection_name)
    _send(params, exchange, routing_key, bodies, counts, report)
    return report


def _send(params, exchange, routing_key, bodies, counts, report):
    import pika
    import pika.exceptions
    props = pika.BasicProperties(content_type="application/json", delivery_mode=2)
    conn = pika.BlockingConnection(params)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        for body, rows in zip(bodies, counts):
            report.messages += 1
            report.bytes += len(body)
            try:
                ch.basic_publish(exchange, routing_key, body, props, mandatory=True)
                report.confirmed_messages += 1
                report.published_rows += rows
            except pika.exceptions.UnroutableError:
                report.returned_messages += 1
                report.returned_rows += rows
            except pika.exceptions.NackError:
                report.nacked_messages += 1
                report.nacked_rows += rows
    finally:
        if conn.is_open:
            conn.close()
