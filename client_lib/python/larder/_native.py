"""Loads liblarder.so and declares the C ABI (larder/larder.h) for ctypes.

Search order for the library (_libsearch.py):
  1. $LARDER_LIBRARY (a path to the .so);
  2. the package directory (a copy bundled by ``pip install``);
  3. the build tree: $LARDER_BUILD_DIR/client_lib, then <repo>/build/client_lib
     when the package is imported from a checkout;
  4. the system loader (``liblarder.so`` / ``liblarder.so.0`` on the library
     path, e.g. after ``cmake --install``).
"""

import ctypes
from ctypes import (POINTER, c_char_p, c_double, c_float, c_int, c_int32, c_int64, c_size_t, c_uint32,
                    c_void_p)

from . import _libsearch

_NAME = "liblarder.so"
_ENV = "LARDER_LIBRARY"


class ReadResult(ctypes.Structure):
    _fields_ = [("status", c_int32), ("reserved", c_int32), ("event_time_ms", c_int64),
                ("apply_unix_ns", c_int64)]


class FieldInfo(ctypes.Structure):
    _fields_ = [("name", c_char_p), ("type", c_int32), ("count", c_uint32)]


class SegmentInfo(ctypes.Structure):
    _fields_ = [("state", c_uint32), ("connection", c_uint32), ("layout_version", c_uint32),
                ("reserved", c_uint32), ("schema_fingerprint", ctypes.c_uint64),
                ("writer_pid", ctypes.c_uint64), ("heartbeat_age_ms", c_int64),
                ("updates_applied", ctypes.c_uint64), ("messages_rejected", ctypes.c_uint64),
                ("last_apply_unix_ns", c_int64)]


class SyncInfo(ctypes.Structure):
    _fields_ = [("state", c_int32), ("partition_count", c_uint32), ("changed_unix_ns", c_int64),
                ("source_id", ctypes.c_char * 128)]


class Position(ctypes.Structure):
    _fields_ = [("next_offset", ctypes.c_uint64), ("skip_updates", c_uint32), ("flags", c_uint32),
                ("target", ctypes.c_uint64), ("first_retained", ctypes.c_uint64)]


class OpenOptions(ctypes.Structure):
    _fields_ = [("size", c_uint32), ("max_retries", c_uint32), ("dir", c_char_p),
                ("expected_schema_fingerprint", ctypes.c_uint64), ("abi_version", c_uint32),
                ("reserved", c_uint32)]


class SegmentStats(ctypes.Structure):
    _fields_ = [("size", c_uint32), ("state", c_uint32), ("connection", c_uint32), ("layout_version", c_uint32),
                ("schema_fingerprint", ctypes.c_uint64), ("segment_bytes", ctypes.c_uint64),
                ("generation", ctypes.c_uint64), ("writer_pid", ctypes.c_uint64), ("heartbeat_age_ms", c_int64),
                ("writer_sessions", ctypes.c_uint64), ("repaired_slots", ctypes.c_uint64),
                ("updates_applied", ctypes.c_uint64), ("messages_rejected", ctypes.c_uint64),
                ("last_apply_unix_ns", c_int64), ("created_unix_ns", c_int64), ("sync_state", c_int32),
                ("table_count", c_uint32)]


class TableStats(ctypes.Structure):
    _fields_ = [("size", c_uint32), ("aggregates", c_uint32), ("capacity", ctypes.c_uint64),
                ("slot_count", ctypes.c_uint64), ("live_keys", ctypes.c_uint64), ("tombstones", ctypes.c_uint64),
                ("upserts", ctypes.c_uint64), ("deletes", ctypes.c_uint64), ("stale_ignored", ctypes.c_uint64),
                ("full_rejected", ctypes.c_uint64), ("last_apply_unix_ns", c_int64),
                ("max_event_time_ms", c_int64), ("aggregate_events", ctypes.c_uint64),
                ("late_dropped", ctypes.c_uint64), ("duplicates", ctypes.c_uint64),
                ("dedup_evictions", ctypes.c_uint64), ("refreshes", ctypes.c_uint64),
                ("aggregate_clock_ms", c_int64), ("refreshed_through_ms", c_int64)]


class ReadOptions(ctypes.Structure):
    _fields_ = [("size", c_uint32), ("age_of", c_int32), ("max_age_ms", c_int64)]


AGE_OF_EVENT = 0
AGE_OF_COMPUTED = 1


# The C ABI this package is written against (larder.h LARDER_ABI_VERSION):
# larder_open_ex refuses a library older than that.
ABI_VERSION = (1 << 16) | 2
NO_FIELD = 0xFFFFFFFF

POSITION_HAS_NEXT = 1
POSITION_HAS_TARGET = 2
POSITION_HAS_FIRST_RETAINED = 4


def candidates():
    """Paths tried in order; the last entries are names for the system loader."""
    return _libsearch.candidates(_NAME, _ENV, "client_lib")


path = _libsearch.find(_NAME, _ENV, "client_lib", "larder_client_shared")
# Two handles on the same library: batch reads and opens release the GIL
# (CDLL); the single-key read keeps it (PyDLL), since it takes well under a
# microsecond and releasing and retaking the GIL would cost more than the read.
lib = ctypes.CDLL(path)
fast = ctypes.PyDLL(path)
if not hasattr(lib, "larder_get_ex"):
    raise OSError("%s implements a larder C ABI before 1.2; this package needs 1.2 (larder_get_ex): rebuild or "
                  "upgrade liblarder" % path)


def _declare(handle, name, restype, *argtypes):
    fn = getattr(handle, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


seg_p = c_void_p
tab_p = c_void_p

larder_version = _declare(lib, "larder_version", c_uint32)
larder_open_ex = _declare(lib, "larder_open_ex", c_int, c_char_p, POINTER(OpenOptions), POINTER(c_void_p),
                          c_char_p, c_size_t)
larder_segment_stats = _declare(lib, "larder_segment_stats", c_int, seg_p, POINTER(SegmentStats))
larder_segment_table_name = _declare(lib, "larder_segment_table_name", c_int, seg_p, c_uint32, c_char_p, c_size_t,
                                     POINTER(c_size_t))
larder_table_stats = _declare(lib, "larder_table_stats", c_int, c_void_p, POINTER(TableStats))
larder_field_lookup = _declare(lib, "larder_field_lookup", c_int, c_void_p, c_char_p, POINTER(c_uint32))
# Row accessors: a few nanoseconds in the library, so they keep the GIL, and
# are called without argtypes (as larder_get_into_raw below): callers pass
# the table as a c_void_p, the row as its ctypes array, buffers as ctypes
# objects and small ints, which ctypes passes without conversion objects.
larder_row_event_time_ms = fast["larder_row_event_time_ms"]
larder_row_event_time_ms.restype = c_int64
larder_row_apply_unix_ns = fast["larder_row_apply_unix_ns"]
larder_row_apply_unix_ns.restype = c_int64
larder_row_key = fast["larder_row_key"]
larder_row_key.restype = c_int
larder_close = _declare(lib, "larder_close", None, seg_p)
larder_segment_stat = _declare(lib, "larder_segment_stat", SegmentInfo, seg_p)
larder_writer_alive = _declare(lib, "larder_writer_alive", c_int, seg_p, c_int64)
larder_segment_state = _declare(lib, "larder_segment_state", c_int, seg_p)
larder_segment_sync_info = _declare(lib, "larder_segment_sync_info", None, seg_p, POINTER(SyncInfo))
larder_segment_position = _declare(lib, "larder_segment_position", c_int, seg_p, c_uint32, POINTER(Position))
larder_table_open = _declare(lib, "larder_table_open", c_int, seg_p, c_char_p, POINTER(c_void_p), c_char_p,
                             c_size_t)
larder_table_close = _declare(lib, "larder_table_close", None, tab_p)
larder_table_row_bytes = _declare(lib, "larder_table_row_bytes", c_size_t, tab_p)
larder_table_field_count = _declare(lib, "larder_table_field_count", c_uint32, tab_p)
larder_table_field = _declare(lib, "larder_table_field", FieldInfo, tab_p, c_uint32)
larder_row_validity_offset = _declare(lib, "larder_row_validity_offset", c_uint32, tab_p)
larder_row_field_offset = _declare(lib, "larder_row_field_offset", c_uint32, tab_p, c_uint32)
larder_status_name = _declare(lib, "larder_status_name", c_char_p, c_int32)
larder_error_name = _declare(lib, "larder_error_name", c_char_p, c_int)
larder_now_unix_ms = _declare(lib, "larder_now_unix_ms", c_int64)

# int32 larder_get_into(table, key, key_len, row, max_age_ms, result*)
larder_get_into = _declare(fast, "larder_get_into", c_int32, tab_p, c_char_p, c_size_t, c_void_p, c_int64,
                           c_void_p)
# The same without argtypes, for Table.get: ctypes then converts each
# argument by its Python type, which saves about a third of the call. Callers
# pass the table as a c_void_p, the key as bytes, the row as a ctypes array,
# None, and ints in [0, 2**31): ctypes passes those as C int, and libffi
# widens int arguments to the 64-bit register with sign extension, so the
# size_t and int64_t parameters receive them exactly. (fast[...] makes a new
# function object; attribute access would return the declared one.)
larder_get_into_raw = fast["larder_get_into"]
larder_get_into_raw.restype = c_int32
# int32 larder_get_ex(table, key, key_len, row, options*, result*, computed_at_ms*)
larder_get_ex = _declare(fast, "larder_get_ex", c_int32, tab_p, c_char_p, c_size_t, c_void_p, c_void_p, c_void_p,
                         c_void_p)
# The same without argtypes, for Table.get (as larder_get_into_raw): the
# options as a ctypes pointer object, computed_at_ms as a byref into the row
# buffer's tail.
larder_get_ex_raw = fast["larder_get_ex"]
larder_get_ex_raw.restype = c_int32

# Pointer arguments of the gathers are passed as integers (NumPy's
# ndarray.ctypes.data): cheaper than building ctypes pointer objects.
larder_gather = _declare(lib, "larder_gather", c_int, tab_p, c_void_p, c_size_t, c_void_p, c_size_t, c_size_t,
                         c_void_p, c_size_t, c_void_p, c_double, c_void_p, c_size_t, c_void_p, c_float,
                         c_void_p, c_void_p, c_int64)
larder_gather_ex = _declare(lib, "larder_gather_ex", c_int, tab_p, c_void_p, c_size_t, c_void_p, c_size_t, c_size_t,
                            c_void_p, c_size_t, c_void_p, c_double, c_void_p, c_size_t, c_void_p, c_float,
                            c_void_p, c_void_p, c_void_p, c_void_p)

# Field groups (C ABI 1.2).
class GroupMaxAge(ctypes.Structure):
    _fields_ = [("group", c_uint32), ("reserved", c_uint32), ("max_age_ms", c_int64)]


larder_table_group_count = _declare(lib, "larder_table_group_count", c_uint32, tab_p)
larder_table_group_name = _declare(lib, "larder_table_group_name", c_char_p, tab_p, c_uint32)
larder_field_group = _declare(lib, "larder_field_group", c_uint32, tab_p, c_uint32)
larder_row_group_event_time_ms = fast["larder_row_group_event_time_ms"]
larder_row_group_event_time_ms.restype = c_int64
larder_row_group_event_time_ms.argtypes = [tab_p, c_void_p, c_uint32]
# int32 larder_get_groups(table, key, key_len, row, options*, bounds*, nbounds, result*, computed_at_ms*)
larder_get_groups = _declare(fast, "larder_get_groups", c_int32, tab_p, c_char_p, c_size_t, c_void_p, c_void_p,
                             c_void_p, c_size_t, c_void_p, c_void_p)
larder_gather_groups = _declare(lib, "larder_gather_groups", c_int, tab_p, c_void_p, c_size_t, c_void_p,
                                c_size_t, c_size_t, c_void_p, c_size_t, c_void_p, c_double, c_void_p, c_size_t,
                                c_void_p, c_float, c_void_p, c_void_p, c_void_p, c_void_p, c_size_t, c_void_p,
                                c_void_p)
