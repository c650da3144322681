"""Larder: read ML features from a host-local shared-memory segment.

    import larder
    seg = larder.open("larder-demo")                 # read-only mapping
    users = seg.table("users")
    row = users.get("u000042", max_age_ms=60_000)    # a Row (dict-like)
    if row.ok:
        print(row["spend_usd"], row.age_ms)
    batch = users.get_many(keys, fields=["clicks_1h", "spend_usd", "embedding"])
    X = batch.values            # float64 (n, 2), NaN where missing
    E = batch["embedding"]      # float32 (n, 16)

Producers (batch jobs) publish rows with larder.publish(df, table=..., key=...,
event_time=..., config="sidecar.yaml"): validated, batched, confirmed.

See docs/python.md.
"""

from .client import (Batch, ConnectionState, Field, FieldType, Row, Segment, SegmentState, Status, SyncState,
                     Table)
from .errors import (CorruptError, FieldNotFoundError, GroupNotFoundError, InvalidArgumentError, LarderError, LarderSystemError,
                     NoSpaceError, NotFoundError, NotReadyError, NoValueError, PermissionDeniedError,
                     SchemaMismatchError, VersionMismatchError, WriterLockedError)
from .publish import PublishReport, PublishValidationError, RowError, TableSchema, publish
from . import _native

__version__ = "0.1.0"


def open(name, dir=None, max_retries=0, expected_schema_fingerprint=0):  # noqa: A001 - mirrors larder_open
    """Maps the segment ``name`` in ``dir`` (default /dev/shm) read-only.
    max_retries: seqlock retries on one slot before a read returns BUSY (0:
    the library's default, 256). expected_schema_fingerprint: when non-zero,
    SchemaMismatchError unless the segment has that schema."""
    return Segment(name, dir, max_retries, expected_schema_fingerprint)


def abi_version():
    """The C ABI version of the loaded liblarder, (major, minor)."""
    v = _native.larder_version()
    return (v >> 16, v & 0xFFFF)


def now_unix_ms():
    """Wall clock in ms, the clock event times are compared against."""
    return _native.larder_now_unix_ms()


def library_path():
    """The liblarder.so this package loaded."""
    return _native.path


__all__ = ["open", "abi_version", "now_unix_ms", "library_path", "Segment", "SyncState", "SegmentState",
           "ConnectionState", "Table", "Row", "Batch", "Field", "FieldType", "Status", "LarderError",
           "InvalidArgumentError", "NotFoundError", "FieldNotFoundError", "GroupNotFoundError", "NoValueError", "PermissionDeniedError",
           "VersionMismatchError", "SchemaMismatchError", "NotReadyError", "CorruptError", "WriterLockedError",
           "NoSpaceError", "LarderSystemError", "publish", "PublishReport", "PublishValidationError", "RowError",
           "TableSchema"]
