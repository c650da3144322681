"""Segments, tables, rows and batches over the C ABI.

Threading: a Segment and its Tables may be shared by every thread of a
process; each read returns new objects (a Row owns its buffer, a Batch its
arrays), so nothing is shared between calls. Batch reads release the GIL
while they run. A read that runs while another thread closes the table
finishes first: the library's table handle is released when the last
Table or Row that holds it goes.

Processes: objects made before fork() keep working in the child (the
mapping is inherited read-only; every handle is process-local memory). A
Segment, Table, Row or Batch sent to another process (a spawn-started
worker, a ProcessPoolExecutor argument or result) is pickled by name: the
receiver maps the segment again with the same options.
"""

import ctypes
import enum
import os
import struct
import threading
import time
import weakref

import numpy as np

from . import _native as _n
from .errors import (FieldNotFoundError, GroupNotFoundError, InvalidArgumentError, LarderError, NoValueError, NotFoundError,
                     from_code)

_E_NO_SPACE = 9  # LARDER_E_NO_SPACE


class _NamedEnum(enum.IntEnum):
    """An IntEnum that prints as its name: ``str(Status.STALE)`` is
    ``"STALE"`` on every Python 3 (3.11 made IntEnum print the number), and
    so is ``f"{status}"``; ``int()`` and comparisons with numbers still work."""

    def __str__(self):
        return self.name

    def __format__(self, spec):
        # A numeric format ("d", "x", ...) formats the number, anything else the name.
        return format(int(self), spec) if spec and spec[-1] in "bcdoxXneEfFgG%" else format(self.name, spec)


class Status(_NamedEnum):
    """Read status of one key (the C ABI's LARDER_OK, ...)."""
    OK = 0           # found; values filled
    NOT_FOUND = 1    # never written, or deleted
    STALE = 2        # found, older than max_age_ms; values still filled
    BUSY = 3         # the slot stayed mid-write for too long: retry or use a default
    INVALID_KEY = 4  # empty, or longer than the table's key_max_len
    CORRUPT = 5      # the key's slot holds a length outside the schema: no values


_STATUSES = tuple(Status)


class SyncState(_NamedEnum):
    """How complete a segment is, as its writer knows it (the C ABI's LARDER_SYNC_*)."""
    UNKNOWN = 0      # no source reports positions (a queue that is not a stream, a plain writer)
    CATCHING_UP = 1  # restoring a snapshot or replaying the log towards a target
    READY = 2        # caught up
    INCOMPLETE = 3   # the log no longer holds what follows the stored position


class FieldType(_NamedEnum):
    INT64 = 1
    FLOAT64 = 2
    FLOAT32 = 3
    BOOL = 4
    VECTOR = 5   # float32 vector
    STRING = 6


class SegmentState(_NamedEnum):
    """``Segment.info()["state"]``: the segment file's life (the C ABI's larder_segment_info.state)."""
    CREATING = 0  # being built under a temporary name (readers never see it by name)
    READY = 1     # in use
    RETIRED = 2   # replaced by a newer segment of the same name: reopen to read the new one


class ConnectionState(_NamedEnum):
    """``Segment.info()["connection"]``: the sidecar's broker connection, as its writer last stored it."""
    UNKNOWN = 0
    CONNECTING = 1
    CONNECTED = 2
    DISCONNECTED = 3
    STOPPED = 4


_SCALAR_TYPES = (FieldType.INT64, FieldType.FLOAT64, FieldType.FLOAT32, FieldType.BOOL)


class Field:
    """A field of a table: name, index, type, count (vector dims, string max bytes, else 1)."""

    __slots__ = ("name", "index", "type", "count", "offset", "_decode")

    def __init__(self, name, index, ftype, count, offset):
        self.name = name
        self.index = index
        self.type = FieldType(ftype)
        self.count = count
        self.offset = offset
        self._decode = _decoder(self.type, count, offset)

    def __repr__(self):
        extra = "[%d]" % self.count if self.type in (FieldType.VECTOR, FieldType.STRING) else ""
        return "Field(%r, %s%s)" % (self.name, self.type.name.lower(), extra)


def _decoder(ftype, count, offset):
    """A function buffer -> Python value for one field."""
    if ftype == FieldType.INT64:
        unpack = struct.Struct("<q").unpack_from
        return lambda buf: unpack(buf, offset)[0]
    if ftype == FieldType.FLOAT64:
        unpack = struct.Struct("<d").unpack_from
        return lambda buf: unpack(buf, offset)[0]
    if ftype == FieldType.FLOAT32:
        unpack = struct.Struct("<f").unpack_from
        return lambda buf: unpack(buf, offset)[0]
    if ftype == FieldType.BOOL:
        return lambda buf: buf[offset] != b"\0"
    if ftype == FieldType.STRING:
        unpack = struct.Struct("<I").unpack_from

        def string(buf):
            n = min(unpack(buf, offset)[0], count)
            return bytes(buf[offset + 4:offset + 4 + n]).decode("utf-8", "replace")
        return string
    if ftype == FieldType.VECTOR:
        def vector(buf):
            v = np.frombuffer(buf, dtype="<f4", count=count, offset=offset)
            v.flags.writeable = False
            return v
        return vector
    raise LarderError("unknown field type %d" % ftype)


_address = ctypes.addressof
_char_view = ctypes.c_char.from_buffer

_row_event_time = _n.larder_row_event_time_ms
_NO_GROUP_TIME = -(1 << 63)  # LARDER_NO_GROUP_TIME: a group no update or delete has reached
_row_apply_time = _n.larder_row_apply_unix_ns
_U64 = struct.Struct("<Q").unpack_from
_I64 = struct.Struct("=q").unpack_from
_U32 = struct.Struct("<I").unpack_from


def _now_ms():
    return time.time_ns() // 1_000_000


class Row:
    """One key's row: a read-only mapping of field name -> typed value.

    Holds only the fields that have a value: a field never written for this
    key (validity bit clear) is absent, so ``row["x"]`` raises KeyError and
    ``row.get("x")`` returns None; ``row.valid("x")`` tells. A row that was not
    found (status NOT_FOUND, BUSY, INVALID_KEY, CORRUPT) is empty; a STALE row holds
    its (old) values. ``bool(row)`` is ``row.found``.

    Values: int64 -> int, float64/float32 -> float, bool -> bool,
    string -> str, vector -> read-only numpy float32 array (a view of the
    row's own copy, not of shared memory).
    """

    __slots__ = ("_table", "_handle", "_buf", "key", "status")

    def __init__(self, table, key, buf, status, handle):
        self._table = table
        self._handle = handle  # the _Handle the row was read through; keeps it open
        self.key = key
        self._buf = buf
        self.status = _STATUSES[status]

    def __reduce__(self):
        return _row_from_bytes, (self._table, self.key, bytes(self._buf), int(self.status))

    @property
    def found(self):
        """OK or STALE: the row holds values."""
        return self.status == 0 or self.status == 2

    @property
    def ok(self):
        return self.status == 0

    def __bool__(self):
        return self.status == 0 or self.status == 2

    # The times and the key come from the library's row accessors, which own
    # the row layout; the status test is inlined (found), these are per-row.
    @property
    def event_time_ms(self):
        """Event time the producer stamped on the newest update (None when not found)."""
        s = self.status
        return _row_event_time(self._handle.ptr, self._buf) if s == 0 or s == 2 else None

    @property
    def apply_unix_ns(self):
        """When the writer applied it (None when not found)."""
        s = self.status
        return _row_apply_time(self._handle.ptr, self._buf) if s == 0 or s == 2 else None

    @property
    def age_ms(self):
        """Age of the data: now - event time, in ms (None when not found)."""
        s = self.status
        return _now_ms() - _row_event_time(self._handle.ptr, self._buf) if s == 0 or s == 2 else None

    def group_event_time_ms(self, group):
        """The newest event time applied to field group ``group`` (its fields'
        updates, or a delete that cleared them); None when the row was not
        found or the group was never written. GroupNotFoundError naming the
        table's groups for an unknown group."""
        g = self._table._group(group)
        if not (self.status == 0 or self.status == 2):
            return None
        t = _n.larder_row_group_event_time_ms(self._handle.ptr, self._buf, g)
        return None if t == _NO_GROUP_TIME else t

    def group_age_ms(self, group):
        """now - the group's event time, in ms; None as group_event_time_ms."""
        t = self.group_event_time_ms(group)
        return None if t is None else _now_ms() - t

    @property
    def computed_at_ms(self):
        """When the writer last brought the row's values up to date (None when
        not found): for a table with aggregates, the later of its apply time
        and the instant the writer had refreshed every key's windows as of;
        else the apply time. docs/python.md, "Two ages"."""
        s = self.status
        return _I64(self._buf, self._table.row_bytes)[0] if s == 0 or s == 2 else None

    @property
    def computed_age_ms(self):
        """Age of the computation: now - computed_at_ms (None when not found)."""
        s = self.status
        return _now_ms() - _I64(self._buf, self._table.row_bytes)[0] if s == 0 or s == 2 else None

    @property
    def stored_key(self):
        """The key as the row stores it (bytes; None when not found). CorruptError
        when the stored length is outside the table's schema."""
        if not self.found:
            return None
        buf = ctypes.create_string_buffer(64)
        n = ctypes.c_size_t()
        code = _n.larder_row_key(self._handle.ptr, self._buf, buf, 64, ctypes.byref(n))
        if code == _E_NO_SPACE:
            buf = ctypes.create_string_buffer(n.value)
            code = _n.larder_row_key(self._handle.ptr, self._buf, buf, n.value, ctypes.byref(n))
        if code != 0:
            raise from_code(code, "table %r: the row's stored key length is outside the schema" % self._table.name)
        return buf.raw[:n.value]

    def valid(self, name):
        """True when the row holds a value for field ``name``. FieldNotFoundError
        (a KeyError) naming the table's fields for an unknown field."""
        f = self._table._by_name.get(name)
        if f is None:
            raise self._table._no_field(name)
        if not self.found:
            return False
        word = _U64(self._buf, self._table._validity_offset + 8 * (f.index >> 6))[0]
        return (word >> (f.index & 63)) & 1 == 1

    def __getitem__(self, name):
        f = self._table._by_name.get(name)
        if f is None:
            raise self._table._no_field(name)
        if not self.valid(name):
            raise NoValueError("table %r: field %r has no value for key %r (status %s); row.get(%r) returns None "
                               "instead" % (self._table.name, name, self.key, self.status.name, name))
        return f._decode(self._buf)

    def get(self, name, default=None):
        f = self._table._by_name.get(name)
        if f is None or not self.valid(name):
            return default
        return f._decode(self._buf)

    def keys(self):
        return [f.name for f in self._table.fields if self.valid(f.name)]

    def values(self):
        return [self[k] for k in self.keys()]

    def items(self):
        return [(k, self[k]) for k in self.keys()]

    def __iter__(self):
        return iter(self.keys())

    def __len__(self):
        return len(self.keys())

    def __contains__(self, name):
        return name in self._table._by_name and self.valid(name)

    def to_dict(self):
        return dict(self.items())

    def __repr__(self):
        if not self.found:
            return "Row(%r, status=%s)" % (self.key, self.status.name)
        return "Row(%r, status=%s, age_ms=%d, %r)" % (self.key, self.status.name, self.age_ms, self.to_dict())


class Batch:
    """The result of Table.get_many: NumPy arrays, one row per key.

    values         float64 (n, len(columns)): the scalar fields (bool as 0/1);
                   ``missing`` (NaN by default) where the key was not found
                   or the field never written.
    columns        names of the columns of ``values``.
    vectors        {name: float32 (n, dims)} for each vector field.
    strings        {name: object (n,)} for each string field: str, None
                   where the key was not found or the field never written.
    status         int32 (n,): Status codes.
    event_time_ms  int64 (n,): 0 where not found.
    computed_at_ms int64 (n,): when each row's values were last brought up
                   to date (see Row.computed_at_ms); 0 where not found.
    ``batch[name]`` is a column of ``values``, a vector block or a string array.

    The arrays are views of one buffer the batch owns (made on first
    access); they stay valid as long as any of them is referenced.
    """

    __slots__ = ("keys", "_plan", "_raw", "_n", "_values", "_vectors", "_status", "_times", "_computed", "strings",
                 "_groups", "_group_times")

    def __init__(self, keys, plan, raw, n, strings=None, groups=(), group_times=None):
        self.keys = keys
        self._plan = plan
        self._raw = raw
        self._n = n
        self._values = self._vectors = self._status = self._times = self._computed = None
        self.strings = strings if strings is not None else {}
        self._groups = groups  # the table's field group names
        self._group_times = group_times  # int64 (n, len(groups)), LARDER_NO_GROUP_TIME where none

    # Layout of _raw: values (8 n ncols), event times (8 n), computed-at
    # instants (8 n), vectors (4 n dims), statuses (4 n); see Table.get_many.
    @property
    def columns(self):
        return self._plan.columns

    @property
    def values(self):
        v = self._values
        if v is None:
            v = self._values = np.ndarray((self._n, self._plan.ncols), np.float64, self._raw, 0)
        return v

    @property
    def event_time_ms(self):
        v = self._times
        if v is None:
            v = self._times = np.ndarray((self._n,), np.int64, self._raw, 8 * self._n * self._plan.ncols)
        return v

    @property
    def computed_at_ms(self):
        v = self._computed
        if v is None:
            n = self._n
            v = self._computed = np.ndarray((n,), np.int64, self._raw, 8 * n * self._plan.ncols + 8 * n)
        return v

    @property
    def status(self):
        v = self._status
        if v is None:
            plan, n = self._plan, self._n
            v = self._status = np.ndarray((n,), np.int32, self._raw, 8 * n * plan.ncols + 16 * n + 4 * n * plan.dims)
        return v

    @property
    def vectors(self):
        v = self._vectors
        if v is None:
            plan, n = self._plan, self._n
            v = {}
            if plan.vectors:
                block = np.ndarray((n, plan.dims), np.float32, self._raw, 8 * n * plan.ncols + 16 * n)
                for name, lo, hi in plan.vectors:
                    v[name] = block if hi - lo == plan.dims else block[:, lo:hi]
            self._vectors = v
        return v

    def __reduce__(self):
        return Batch, (self.keys, _PlanShape(self._plan), self._raw, self._n, None, self._groups, self._group_times)

    @property
    def groups(self):
        """The table's field group names (empty for a table without groups)."""
        return self._groups

    def group_event_time_ms(self, group):
        """int64 (n,): field group ``group``'s event time per key; 0 where the
        key was not found or the group never written (as event_time_ms)."""
        t = self._group_times[:, self._group_column(group)]
        return np.where(self.found & (t != _NO_GROUP_TIME), t, 0)

    def group_age_ms(self, group, now_ms=None):
        """int64 (n,): now - the group's event time; -1 where the key was not
        found or the group never written."""
        now = _now_ms() if now_ms is None else now_ms
        t = self._group_times[:, self._group_column(group)]
        return np.where(self.found & (t != _NO_GROUP_TIME), now - t, -1)

    def _group_column(self, group):
        try:
            return self._groups.index(group)
        except ValueError:
            raise GroupNotFoundError("this batch's table has no field group %r; it has: %s"
                                     % (group, ", ".join(self._groups) or "none")) from None

    def __len__(self):
        return self._n

    def __getitem__(self, name):
        j = self._plan.column_index.get(name)
        if j is not None:
            return self.values[:, j]
        v = self.vectors.get(name)
        if v is None:
            v = self.strings.get(name)
        if v is None:
            have = list(self.columns) + list(self.vectors) + list(self.strings)
            raise FieldNotFoundError("this batch has no field %r; it holds: %s (get_many(keys, fields=[...]) "
                                     "chooses them)" % (name, ", ".join(have) or "nothing"))
        return v

    @property
    def found(self):
        """bool (n,): OK or STALE."""
        s = self.status
        return (s == 0) | (s == 2)

    @property
    def ok(self):
        return self.status == 0

    def age_ms(self, now_ms=None):
        """int64 (n,): now - event time; -1 where not found."""
        now = _now_ms() if now_ms is None else now_ms
        return np.where(self.found, now - self.event_time_ms, -1)

    def computed_age_ms(self, now_ms=None):
        """int64 (n,): now - computed_at_ms; -1 where not found."""
        now = _now_ms() if now_ms is None else now_ms
        return np.where(self.found, now - self.computed_at_ms, -1)

    def __repr__(self):
        return "Batch(%d keys, columns=%r, vectors=%r)" % (self._n, self.columns, list(self.vectors))


def _error(code, err):
    return from_code(code, err.value.decode("utf-8", "replace"))


def _enum_or_int(cls, value):
    try:
        return cls(value)
    except ValueError:  # a newer writer's value: keep the number
        return value


def _no_segment_message(name, directory):
    """NotFoundError's text for open(): where it looked, what is there, how to look elsewhere."""
    try:
        there = sorted(n[:-5] for n in os.listdir(directory) if n.endswith(".lock")
                       and os.path.exists(os.path.join(directory, n[:-5])))
    except OSError as e:
        return ("no segment %r: cannot list the directory %r (%s). Pass the directory the sidecar writes to "
                "(its segment.dir): larder.open(%r, dir=\"/path/to/dir\")" % (name, directory, e.strerror, name))
    shown = ", ".join(there[:10]) + (", and %d more" % (len(there) - 10) if len(there) > 10 else "")
    found = ("segments there: %s" % shown) if there else "no Larder segment is there"
    return ("no segment %r in %r (%s). Is the sidecar running with segment.name %r? If its segment.dir is "
            "another directory, pass it: larder.open(%r, dir=\"/path/to/dir\")" % (name, directory, found, name, name))


class Segment:
    """A segment mapped read-only. ``larder.open(name, dir)`` makes one.

    Raises NotFoundError (no segment: is the sidecar running, is dir right?),
    PermissionDeniedError, VersionMismatchError (names both versions),
    SchemaMismatchError, NotReadyError, CorruptError, InvalidArgumentError.
    """

    def __init__(self, name, dir=None, max_retries=0, expected_schema_fingerprint=0):
        if not isinstance(name, (str, bytes)):
            raise TypeError("larder.open(name, dir=None): name is a str, not %s" % type(name).__name__)
        self.name = name
        self.dir = dir or "/dev/shm"
        self._options = (max_retries, expected_schema_fingerprint)
        opts = _n.OpenOptions()
        opts.size = ctypes.sizeof(opts)
        opts.dir = _bytes(self.dir)
        opts.max_retries = max_retries
        opts.expected_schema_fingerprint = expected_schema_fingerprint
        opts.abi_version = _n.ABI_VERSION
        handle = ctypes.c_void_p()
        err = ctypes.create_string_buffer(4096)
        code = _n.larder_open_ex(_bytes(name), ctypes.byref(opts), ctypes.byref(handle), err, len(err))
        if code == NotFoundError.code:
            raise NotFoundError(_no_segment_message(name, self.dir), code)
        if code != 0:
            raise _error(code, err)
        self._handle = handle
        self._tables = {}

    def __reduce__(self):
        # A handle is an address in this process: another one maps the segment again.
        return _reopen_segment, (self.name, self.dir) + self._options

    def table(self, name):
        """The table ``name`` (cached). NotFoundError names the tables there are."""
        t = self._tables.get(name)
        if t is None:
            t = Table(self, name)
            self._tables[name] = t
        return t

    def info(self):
        """Everything the segment header says (a dict): state (a SegmentState),
        connection (a ConnectionState), layout_version, schema_fingerprint,
        segment_bytes, generation, writer_pid, heartbeat_age_ms,
        writer_sessions, repaired_slots, updates_applied, messages_rejected,
        last_apply_unix_ns, created_unix_ns, sync_state (a SyncState),
        table_count."""
        s = _n.SegmentStats()
        s.size = ctypes.sizeof(s)
        code = _n.larder_segment_stats(self._live(), ctypes.byref(s))
        if code != 0:
            raise from_code(code, "larder_segment_stats failed")
        info = {f: getattr(s, f) for f, _ in s._fields_ if f != "size"}
        info["state"] = _enum_or_int(SegmentState, info["state"])
        info["connection"] = _enum_or_int(ConnectionState, info["connection"])
        info["sync_state"] = _enum_or_int(SyncState, info["sync_state"])
        return info

    @property
    def table_names(self):
        """The segment's tables, in schema order."""
        handle = self._live()
        names = []
        buf = ctypes.create_string_buffer(256)
        n = ctypes.c_size_t()
        i = 0
        while _n.larder_segment_table_name(handle, i, buf, len(buf), ctypes.byref(n)) == 0:
            names.append(buf.value.decode("utf-8", "replace"))
            i += 1
        return names

    def writer_alive(self, max_heartbeat_age_ms=1000):
        """True when a writer is attached and its heartbeat is younger than the bound."""
        return _n.larder_writer_alive(self._live(), max_heartbeat_age_ms) == 1

    @property
    def state(self):
        """The segment's SyncState. Cheap: one load, no allocation in the library."""
        return SyncState(_n.larder_segment_state(self._live()))

    def sync(self):
        """The source block as a dict: ``state`` (SyncState), ``source_id``,
        ``changed_unix_ns`` and ``partitions``, a list of dicts (``partition``,
        ``next_offset``, ``skip_updates``, ``target``, ``first_retained``; None
        where the writer stored nothing) for the partitions that hold any."""
        handle = self._live()
        info = _n.SyncInfo()
        _n.larder_segment_sync_info(handle, ctypes.byref(info))
        parts = []
        pos = _n.Position()
        for p in range(info.partition_count):
            if _n.larder_segment_position(handle, p, ctypes.byref(pos)) != Status.OK:
                continue
            parts.append({
                "partition": p,
                "next_offset": pos.next_offset if pos.flags & _n.POSITION_HAS_NEXT else None,
                "skip_updates": pos.skip_updates,
                "target": pos.target if pos.flags & _n.POSITION_HAS_TARGET else None,
                "first_retained": pos.first_retained if pos.flags & _n.POSITION_HAS_FIRST_RETAINED else None,
            })
        return {
            "state": SyncState(info.state),
            "source_id": info.source_id.decode("utf-8", "replace"),
            "changed_unix_ns": info.changed_unix_ns,
            "partitions": parts,
        }

    def close(self):
        """Closes the segment and its tables. Idempotent."""
        for t in self._tables.values():
            t.close()
        self._tables.clear()
        if self._handle is not None:
            _n.larder_close(self._handle)
            self._handle = None

    def _live(self):
        if self._handle is None:
            raise InvalidArgumentError("segment %r is closed" % self.name)
        return self._handle

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self):
        return "Segment(%r, dir=%r)" % (self.name, self.dir)


def _bytes(s):
    return s.encode("utf-8") if isinstance(s, str) else bytes(s)


# Table.get calls larder_get_ex without argtypes (_native.py says why): the
# key's length is an int far below 2**31, the bound travels in a cached
# ReadOptions struct, and the computed-at instant lands in the row buffer's
# tail.
_byref = ctypes.byref
_AGE_OF = {"event": _n.AGE_OF_EVENT, "computed": _n.AGE_OF_COMPUTED}


class Table:
    """A table of a segment: ``get`` one key, ``get_many`` a batch into NumPy."""

    def __init__(self, segment, name):
        self.segment = segment
        self.name = name
        if not isinstance(name, str):
            raise TypeError("segment.table(name): name is a str, not %s" % type(name).__name__)
        handle = ctypes.c_void_p()
        err = ctypes.create_string_buffer(4096)
        code = _n.larder_table_open(segment._live(), _bytes(name), ctypes.byref(handle), err, len(err))
        if code == NotFoundError.code:
            # The library's text lists the tables; say how to ask for one.
            raise NotFoundError("%s. Use segment.table(\"<one of them>\")" % err.value.decode("utf-8", "replace"),
                                code)
        if code != 0:
            raise _error(code, err)
        self._h = _Handle(handle)
        self._handle = handle
        self.row_bytes = _n.larder_table_row_bytes(handle)
        # The row, then 8 bytes for its computed-at instant (larder_get_ex).
        self._row_type = ctypes.c_char * (self.row_bytes + 8)
        self._read_options = {}  # (max_age_ms, age_of) -> (ReadOptions, pointer, address)
        self._validity_offset = _n.larder_row_validity_offset(handle)
        fields = []
        for i in range(_n.larder_table_field_count(handle)):
            info = _n.larder_table_field(handle, i)
            fields.append(Field(info.name.decode("utf-8"), i, info.type, info.count,
                                _n.larder_row_field_offset(handle, i)))
        self.fields = tuple(fields)
        self._by_name = {f.name: f for f in fields}
        self._plans = {}  # fields (a tuple, or None for the default) -> _Plan
        self._get_ex = _n.larder_get_ex_raw  # without argtypes: see _byref
        ngroups = _n.larder_table_group_count(handle)
        self.groups = tuple(_n.larder_table_group_name(handle, g).decode("utf-8") for g in range(ngroups))
        self._group_index = {name: g for g, name in enumerate(self.groups)}

    def field(self, name):
        """The Field ``name``; FieldNotFoundError (a NotFoundError and a
        KeyError) naming the fields there are."""
        f = self._by_name.get(name)
        if f is None:
            raise self._no_field(name)
        return f

    def _no_field(self, name):
        return FieldNotFoundError("table %r has no field %r; it has: %s" % (self.name, name, ", ".join(self._by_name)))

    def _group(self, name):
        g = self._group_index.get(name)
        if g is None:
            raise GroupNotFoundError("table %r has no field group %r; it has: %s"
                                     % (self.name, name, ", ".join(self.groups) or "none"))
        return g

    def group_fields(self, group):
        """The names of the fields of field group ``group``."""
        g = self._group(group)
        h = self._live()
        return [f.name for f in self.fields if _n.larder_field_group(h.ptr, f.index) == g]

    def _group_bounds(self, bounds):
        """{group: max_age_ms} as a C array of larder_group_max_age, and its length."""
        arr = (_n.GroupMaxAge * max(len(bounds), 1))()
        for i, (name, ms) in enumerate(bounds.items()):
            arr[i].group = self._group(name)
            arr[i].max_age_ms = int(ms)
        return arr, len(bounds)

    def _key_error(self, key):
        return TypeError("table %r: a key is str or bytes, not %s (%r). Keys are the strings producers sent; for a "
                         "number, pass its text as the producer wrote it, e.g. str(%r)"
                         % (self.name, type(key).__name__, key, key))

    @property
    def field_names(self):
        return [f.name for f in self.fields]

    def _options(self, max_age_ms, age_of):
        """The cached (ReadOptions, pointer, address) of one bound."""
        o = self._read_options.get((max_age_ms, age_of))
        if o is not None:
            return o
        code = _AGE_OF.get(age_of)
        if code is None:
            raise InvalidArgumentError("age_of is 'event' or 'computed', not %r" % (age_of,))
        opts = _n.ReadOptions(ctypes.sizeof(_n.ReadOptions), code, max_age_ms)
        o = (opts, ctypes.pointer(opts), ctypes.addressof(opts))
        if len(self._read_options) >= 64:  # bounds vary by caller: keep a few
            self._read_options.clear()
        self._read_options[(max_age_ms, age_of)] = o
        return o

    def get(self, key, max_age_ms=0, age_of="event"):
        """Reads one key (str or bytes) into a new Row. Never raises for a
        missing key: check ``row.status`` / ``row.found``. max_age_ms > 0
        turns rows older than that into Status.STALE (still filled), by the
        age ``age_of`` names: "event" (since the key's newest event) or
        "computed" (since the writer last brought its values up to date: keeps
        windowed aggregates of quiet keys fresh while the writer runs; see
        docs/python.md, "Two ages"). A dict {group: ms} bounds field groups
        instead, each by its own event time (a group never written counts as
        too old), e.g. ``{"activity": 60_000}``. Lock-free, never blocks on
        the writer; holds the GIL (well under a microsecond in the library)."""
        k = key.encode("utf-8") if key.__class__ is str else key
        if k.__class__ is not bytes:
            if not isinstance(k, (bytes, str)):
                raise self._key_error(key)
            k = k.encode("utf-8") if isinstance(k, str) else bytes(k)  # subclasses
        buf = self._row_type()
        if max_age_ms.__class__ is dict:
            return self._get_groups(key, k, buf, max_age_ms, age_of)
        o = self._read_options.get((max_age_ms, age_of)) or self._options(max_age_ms, age_of)
        h = self._h  # held for the call: a close() meanwhile cannot free it
        if h is None:
            raise InvalidArgumentError("table %r is closed" % self.name)
        status = self._get_ex(h.ptr, k, len(k), buf, o[1], None, _byref(buf, self.row_bytes))
        return Row(self, key, buf, status, h)

    def _get_groups(self, key, k, buf, bounds, age_of):
        arr, n = self._group_bounds(bounds)
        o = self._read_options.get((0, age_of)) or self._options(0, age_of)
        h = self._live()
        status = _n.larder_get_groups(h.ptr, k, len(k), buf, o[2], arr, n, None, ctypes.addressof(buf) + self.row_bytes)
        return Row(self, key, buf, status, h)

    def stats(self):
        """Counters and freshness (a dict): capacity, slot_count, live_keys,
        tombstones, upserts, deletes, stale_ignored, full_rejected,
        last_apply_unix_ns, max_event_time_ms and the aggregate counters."""
        h = self._live()
        s = _n.TableStats()
        s.size = ctypes.sizeof(s)
        code = _n.larder_table_stats(h.ptr, ctypes.byref(s))
        if code != 0:
            raise from_code(code, "larder_table_stats failed")
        return {f: getattr(s, f) for f, _ in s._fields_ if f != "size"}

    def __reduce__(self):
        return _table_of, (self.segment, self.name)

    def _live(self):
        h = self._h
        if h is None:
            raise InvalidArgumentError("table %r is closed" % self.name)
        return h

    def get_many(self, keys, fields=None, max_age_ms=0, missing=float("nan"), age_of="event"):
        """Reads a batch of keys into NumPy arrays in one pass (see Batch).

        keys: a list/tuple of str or bytes, or a NumPy array of dtype 'S'
        (fixed width, NUL padded: the cheapest form) or 'U'. fields: names of
        fields (default: every field). max_age_ms, age_of: as for get. missing: the
        value of cells with no value (NaN by default; vectors use it too).
        Without string fields no per-key Python objects are made and the GIL
        is released while the library reads; string fields come back in
        ``batch.strings`` (object arrays) from one consistent read of each
        key's row, a per-key loop (name the fields to leave them out).
        A table with field groups also returns each group's event time per
        key (``batch.group_event_time_ms(name)``), and max_age_ms may be a
        dict {group: ms} as for get."""
        plan = self._plans.get(fields if fields is None or fields.__class__ is tuple else tuple(fields))
        if plan is None:
            plan = self._plan(fields)
        if keys.__class__ is str or keys.__class__ is bytes:
            raise InvalidArgumentError("keys is a list of keys, not one key: use get(), or [key]")
        h = self._live()
        n = len(keys)
        bounds, nbounds = None, 0
        if max_age_ms.__class__ is dict:
            bounds, nbounds = self._group_bounds(max_age_ms)
            max_age_ms = 0
        opts = self._read_options.get((max_age_ms, age_of)) or self._options(max_age_ms, age_of)
        if plan.strings:
            return self._get_rows(h, keys, n, plan, opts, missing, bounds, nbounds)
        group_times = np.empty((n, len(self.groups)), dtype=np.int64) if self.groups else None
        key_buf, offsets, width = _pack_keys(keys, n, self)
        # One allocation for every output: float64 values, int64 event
        # times, int64 computed-at instants, float32 vectors, int32
        # statuses, in that order (aligned).
        raw = np.empty(max(n * (8 * plan.ncols + 20 + 4 * plan.dims), 8), dtype=np.uint8)
        base = _address(_char_view(raw))  # 3x cheaper than raw.ctypes.data
        if key_buf.__class__ is np.ndarray:
            key_len = key_buf.nbytes
            key_ptr = _address(_char_view(key_buf)) if key_buf.flags.writeable and key_len else key_buf.ctypes.data
        else:
            key_ptr, key_len = key_buf, len(key_buf)
        groups = (bounds, nbounds, group_times)
        code = self._gather(h, key_ptr, key_len, offsets, width, n, plan, base, missing, opts, groups)
        if code != 0 and offsets is None and width == 0:
            # A key holds a NUL byte: pass explicit offsets instead.
            key_buf, offsets = _pack_offsets(keys, n, self)
            code = self._gather(h, key_buf, len(key_buf), offsets, 0, n, plan, base, missing, opts, groups)
        if code != 0:
            raise from_code(code, "larder_gather refused its arguments (table %r)" % self.name)
        return Batch(keys, plan, raw, n, None, self.groups, group_times)

    def _gather(self, h, key_ptr, key_len, offsets, width, n, plan, base, missing, opts, groups):
        ncols = plan.ncols
        at_vectors = base + 8 * n * ncols + 16 * n
        bounds, nbounds, group_times = groups
        if group_times is None:
            return _n.larder_gather_ex(h.ptr, key_ptr, key_len, None if offsets is None else offsets.ctypes.data,
                                       width, n, plan.scalar_ptr, ncols, base, missing,
                                       plan.vector_ptr, plan.nvector, at_vectors if plan.nvector else None, missing,
                                       at_vectors + 4 * n * plan.dims, base + 8 * n * ncols, opts[2],
                                       base + 8 * n * ncols + 8 * n)
        return _n.larder_gather_groups(h.ptr, key_ptr, key_len, None if offsets is None else offsets.ctypes.data,
                                       width, n, plan.scalar_ptr, ncols, base, missing,
                                       plan.vector_ptr, plan.nvector, at_vectors if plan.nvector else None, missing,
                                       at_vectors + 4 * n * plan.dims, base + 8 * n * ncols, opts[2],
                                       None if bounds is None else ctypes.addressof(bounds), nbounds,
                                       base + 8 * n * ncols + 8 * n, group_times.ctypes.data if n else None)

    def _get_rows(self, h, keys, n, plan, opts, missing, bounds=None, nbounds=0):
        """get_many with string fields: each key's row read once (a
        consistent copy, as get() reads it), every column taken from it."""
        if isinstance(keys, np.ndarray):
            if keys.dtype.kind not in "SU":
                raise self._keys_dtype_error(keys)
            keys_list = [k.encode("utf-8") if isinstance(k, str) else bytes(k) for k in keys.reshape(-1).tolist()]
        else:
            keys_list = [_key_bytes(k, self) for k in keys]
        stride = (self.row_bytes + 7) & ~7  # rows are 8-byte aligned
        rows = np.zeros((max(n, 1), stride), dtype=np.uint8)
        base = _address(_char_view(rows))
        status = np.empty(n, dtype=np.int32)
        computed = np.zeros(max(n, 1), dtype=np.int64)
        at_computed = _address(_char_view(computed))
        handle, options = h.ptr, opts[2]
        if self.groups:
            get_groups = _n.larder_get_groups
            for i, k in enumerate(keys_list):
                status[i] = get_groups(handle, k, len(k), base + i * stride, options, bounds, nbounds, None,
                                       at_computed + 8 * i)
        else:
            get_ex = _n.larder_get_ex
            for i, k in enumerate(keys_list):
                status[i] = get_ex(handle, k, len(k), base + i * stride, options, None, at_computed + 8 * i)
        rows = rows[:n]
        found = (status == 0) | (status == 2)
        vo = self._validity_offset

        def valid(f):
            word = rows[:, vo + 8 * (f.index >> 6):vo + 8 * (f.index >> 6) + 8].view("<u8")[:, 0]
            return found & (((word >> np.uint64(f.index & 63)) & np.uint64(1)) == 1)

        raw = np.empty(max(n * (8 * plan.ncols + 20 + 4 * plan.dims), 8), dtype=np.uint8)
        group_times = None
        if self.groups:
            group_times = np.full((n, len(self.groups)), _NO_GROUP_TIME, dtype=np.int64)
            for i in range(n):
                if found[i]:
                    for g in range(len(self.groups)):
                        group_times[i, g] = _n.larder_row_group_event_time_ms(handle, base + i * stride, g)
        batch = Batch(keys, plan, raw, n, None, self.groups, group_times)
        for j, f in enumerate(plan.scalar_fields):
            if f.type == FieldType.BOOL:
                v = (rows[:, f.offset] != 0).astype(np.float64)
            else:
                dt = {FieldType.INT64: "<i8", FieldType.FLOAT64: "<f8", FieldType.FLOAT32: "<f4"}[f.type]
                width = np.dtype(dt).itemsize
                v = rows[:, f.offset:f.offset + width].view(dt)[:, 0].astype(np.float64)
            batch.values[:, j] = np.where(valid(f), v, missing)
        batch.event_time_ms[:] = np.where(found, rows[:, 0:8].view("<i8")[:, 0], 0)
        batch.computed_at_ms[:] = computed[:n]
        for f, (name, lo, hi) in zip(plan.vector_fields, plan.vectors):
            v = rows[:, f.offset:f.offset + 4 * f.count].view("<f4")
            batch.vectors[name][:] = np.where(valid(f)[:, None], v, missing)
        batch.status[:] = status
        for f in plan.strings:
            ok = valid(f)
            out = np.empty(n, dtype=object)
            for i in range(n):
                if ok[i]:
                    length = min(int(rows[i, f.offset:f.offset + 4].view("<u4")[0]), f.count)
                    out[i] = rows[i, f.offset + 4:f.offset + 4 + length].tobytes().decode("utf-8", "replace")
            batch.strings[f.name] = out
        return batch

    def _keys_dtype_error(self, keys):
        return TypeError("table %r: a keys array has dtype 'S' (bytes) or 'U' (str), not %s; for numbers, pass "
                         "their text as the producers wrote it, e.g. keys.astype(str)" % (self.name, keys.dtype))

    def _plan(self, fields):
        key = None if fields is None else tuple(fields)
        if fields is None:
            chosen = list(self.fields)
        else:
            if isinstance(fields, str):
                raise InvalidArgumentError("fields is a list of names, not a string: fields=[%r]" % fields)
            chosen = [self.field(name) for name in fields]
        plan = _Plan([f for f in chosen if f.type in _SCALAR_TYPES],
                     [f for f in chosen if f.type == FieldType.VECTOR],
                     [f for f in chosen if f.type == FieldType.STRING])
        if len(self._plans) < 64:
            self._plans[key] = plan
        return plan

    def close(self):
        """Idempotent. Rows and batches already returned stay readable (a Row
        keeps the library's table handle, and with it the mapping, until it
        goes)."""
        self._h = None
        self._handle = None

    def __repr__(self):
        return "Table(%r, fields=%r)" % (self.name, list(self.fields))


class _Handle:
    """Owns one larder_table*: closed when the last Table or Row holding it goes."""

    __slots__ = ("ptr",)

    def __init__(self, ptr):
        self.ptr = ptr

    def __del__(self, _close=_n.larder_table_close):
        if self.ptr is not None:
            _close(self.ptr)
            self.ptr = None


# Segments unpickled in this process, by name, dir and options: the results
# of many worker calls share one mapping instead of one each.
_reopened = weakref.WeakValueDictionary()
_reopened_lock = threading.Lock()


def _after_fork_in_child():
    # A thread of the parent may have held the lock at fork(): it never
    # releases it in the child.
    global _reopened_lock
    _reopened_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _reopen_segment(name, dir, max_retries, expected_schema_fingerprint):
    key = (name, dir, max_retries, expected_schema_fingerprint)
    with _reopened_lock:
        seg = _reopened.get(key)
        if seg is None or seg._handle is None:
            seg = Segment(name, dir, max_retries, expected_schema_fingerprint)
            _reopened[key] = seg
        return seg


def _table_of(segment, name):
    return segment.table(name)


def _row_from_bytes(table, key, raw, status):
    buf = table._row_type.from_buffer_copy(raw)
    return Row(table, key, buf, status, table._live())


class _PlanShape:
    """The parts of a _Plan a Batch reads, without the index arrays and
    their addresses (which mean nothing in another process)."""

    def __init__(self, plan):
        self.columns = plan.columns
        self.column_index = plan.column_index
        self.ncols = plan.ncols
        self.nvector = plan.nvector
        self.vectors = plan.vectors
        self.dims = plan.dims


class _Plan:
    """What get_many reads for one list of fields, resolved once."""

    def __init__(self, scalars, vectors, strings=()):
        self.scalar_fields = tuple(scalars)
        self.vector_fields = tuple(vectors)
        self.strings = tuple(strings)
        self.columns = tuple(f.name for f in scalars)
        self.column_index = {c: j for j, c in enumerate(self.columns)}
        self.ncols = len(scalars)
        self.nvector = len(vectors)
        # The index arrays live as long as the plan; their addresses are
        # passed on every call.
        self._scalar_idx = np.array([f.index for f in scalars], dtype=np.uint32)
        self._vector_idx = np.array([f.index for f in vectors], dtype=np.uint32)
        self.scalar_ptr = self._scalar_idx.ctypes.data if scalars else None
        self.vector_ptr = self._vector_idx.ctypes.data if vectors else None
        self.vectors = []
        lo = 0
        for f in vectors:
            self.vectors.append((f.name, lo, lo + f.count))
            lo += f.count
        self.dims = lo


def _key_bytes(key, table):
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, bytes):
        return bytes(key)
    raise table._key_error(key)


def _pack_keys(keys, n, table):
    """(buffer, offsets array or None, fixed width) for larder_gather; the
    caller keeps both alive for the call."""
    if keys.__class__ is np.ndarray:
        if keys.dtype.kind == "U":
            keys = np.char.encode(keys, "utf-8")
        if keys.dtype.kind != "S":
            raise table._keys_dtype_error(keys)
        keys = np.ascontiguousarray(keys.reshape(-1))
        if keys.dtype.itemsize == 0:
            keys = keys.astype("S1")
        return keys, None, keys.dtype.itemsize
    if n == 0:
        return b"\0", None, 0
    # Fast path: keys joined with NUL terminators and split again in C, which
    # refuses the buffer when a key holds a NUL (get_many then retries with
    # offsets).
    try:
        if keys[0].__class__ is str:
            return ("\0".join(keys) + "\0").encode("utf-8"), None, 0
        return b"\0".join(keys) + b"\0", None, 0
    except TypeError:
        pass  # a mix of str and bytes
    buf, offsets = _pack_offsets(keys, n, table)
    return buf, offsets, 0


def _pack_offsets(keys, n, table):
    encoded = [_key_bytes(k, table) for k in keys]
    offsets = np.zeros(n + 1, dtype=np.uint64)
    np.cumsum([len(k) for k in encoded], out=offsets[1:])
    return b"".join(encoded), offsets
