"""Loads liblarder_offline.so and declares its C ABI (larder/offline.h) for
ctypes. The offline engine is a library of its own: a reader process needs
only liblarder.so, and importing larder does not load this one.

Search order for the library (_libsearch.py, as for liblarder.so):
  1. $LARDER_OFFLINE_LIBRARY (a path to the .so);
  2. the package directory (a copy bundled by ``pip install``);
  3. the build tree: $LARDER_BUILD_DIR/offline, then <repo>/build/offline
     when the package is imported from a checkout;
  4. the system loader (``liblarder_offline.so`` / ``liblarder_offline.so.0``).
"""

import ctypes
from ctypes import POINTER, c_char_p, c_int, c_int32, c_size_t, c_uint32, c_uint64, c_void_p

from . import _libsearch

_NAME = "liblarder_offline.so"
_ENV = "LARDER_OFFLINE_LIBRARY"

# Column types of event inputs (LARDER_OFFLINE_*).
INT64 = 1
FLOAT64 = 2
BOOL = 3
STRING = 4
FLOAT64_LIST = 5

# larder_offline_column.present, per event.
NOT_SENT = 0
SENT = 1
SENT_AS_NULL = 2


class Column(ctypes.Structure):
    _fields_ = [("name", c_char_p), ("type", c_int32), ("dim", c_uint32), ("data", c_void_p),
                ("offsets", c_void_p), ("present", c_void_p)]


class Events(ctypes.Structure):
    _fields_ = [("table", c_char_p), ("n", c_size_t), ("keys", c_void_p), ("key_offsets", c_void_p),
                ("event_time_ms", c_void_p), ("arrival_ms", c_void_p), ("op", c_void_p), ("ids", c_void_p),
                ("id_offsets", c_void_p), ("columns", POINTER(Column)), ("column_count", c_size_t)]


class Spine(ctypes.Structure):
    _fields_ = [("table", c_char_p), ("n", c_size_t), ("keys", c_void_p), ("key_offsets", c_void_p),
                ("at_ms", c_void_p)]


def candidates():
    """Paths tried in order; the last entries are names for the system loader."""
    return _libsearch.candidates(_NAME, _ENV, "offline")


path = _libsearch.find(_NAME, _ENV, "offline", "larder_offline_shared")
# CDLL: every call releases the GIL; a build runs for as long as its events.
lib = ctypes.CDLL(path)


def _declare(name, restype, *argtypes):
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


engine_p = c_void_p
frame_p = c_void_p

larder_offline_open = _declare("larder_offline_open", c_int, c_char_p, c_uint32, c_uint32, POINTER(c_void_p),
                               c_char_p, c_size_t)
larder_offline_close = _declare("larder_offline_close", None, engine_p)
ORDER_BY_KEY, ORDER_ARRIVAL = 0, 1  # LARDER_OFFLINE_ORDER_*
larder_offline_set_order = _declare("larder_offline_set_order", c_int, engine_p, c_int32)
larder_offline_build = _declare("larder_offline_build", c_int, engine_p, POINTER(Events), c_size_t, POINTER(Spine),
                                POINTER(c_void_p), c_char_p, c_size_t)
larder_offline_frame_rows = _declare("larder_offline_frame_rows", c_size_t, frame_p)
larder_offline_frame_rejected = _declare("larder_offline_frame_rejected", c_uint64, frame_p)
larder_offline_frame_found = _declare("larder_offline_frame_found", c_void_p, frame_p)
larder_offline_frame_event_time_ms = _declare("larder_offline_frame_event_time_ms", c_void_p, frame_p)
larder_offline_frame_computed_at_ms = _declare("larder_offline_frame_computed_at_ms", c_void_p, frame_p)
larder_offline_frame_field_count = _declare("larder_offline_frame_field_count", c_uint32, frame_p)
larder_offline_frame_field_name = _declare("larder_offline_frame_field_name", c_char_p, frame_p, c_uint32)
larder_offline_frame_field_type = _declare("larder_offline_frame_field_type", c_int32, frame_p, c_uint32)
larder_offline_frame_field_dim = _declare("larder_offline_frame_field_dim", c_uint32, frame_p, c_uint32)
larder_offline_frame_values = _declare("larder_offline_frame_values", c_void_p, frame_p, c_uint32)
larder_offline_frame_string_offsets = _declare("larder_offline_frame_string_offsets", c_void_p, frame_p, c_uint32)
larder_offline_frame_valid = _declare("larder_offline_frame_valid", c_void_p, frame_p, c_uint32)
larder_offline_frame_free = _declare("larder_offline_frame_free", None, frame_p)

# Additions to the first contract: the spine row of each frame row (a
# partition's frame holds only its rows), the replay's counters and the first
# refusal's reason.
larder_offline_frame_spine_index = _declare("larder_offline_frame_spine_index", c_void_p, frame_p)
COUNTERS = ("events", "applied", "stale", "duplicates", "late")
counters = {name: _declare("larder_offline_frame_" + name, c_uint64, frame_p) for name in COUNTERS}
larder_offline_frame_first_rejection = _declare("larder_offline_frame_first_rejection", c_char_p, frame_p)
