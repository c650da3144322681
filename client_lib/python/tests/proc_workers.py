"""Work for the worker processes of test_processes.py.

A module of its own so that spawn-started workers import only this (and
larder, numpy, expected) by name, not the test module and its fixtures.
"""

import os
import random
import time

import numpy as np

import larder
from expected import check_derived_batch, derived_embedding, derived_ok_scalars, derived_tag

ROWS = 64
FIELDS = ["clicks", "spend", "ctr", "premium", "embedding"]
HANG_GUARD = 120.0

# Set by the parent before it forks (the "open before fork" pattern), or by
# the pool initializer in each spawn-started worker.
TABLE = None


def open_in_worker(name, seg_dir):
    """Pool initializer: each worker maps the segment itself."""
    global TABLE
    TABLE = larder.open(name, seg_dir).table("rows")


def check_row(table, k):
    """(consistent, counter) for one get of key k; counter None when BUSY."""
    row = table.get("key:%d" % k)
    if row.status == larder.Status.BUSY:
        return True, None
    if not row.ok:
        return False, None
    c = row["clicks"]
    ok = (derived_ok_scalars(k, c, row.event_time_ms, row["spend"], row["ctr"], row["premium"])
          and np.array_equal(row["embedding"], derived_embedding(c)) and row["tag"] == derived_tag(c)
          and row.stored_key == ("key:%d" % k).encode() and row.apply_unix_ns > 0)
    return ok, c


def read_until(table, beyond, seed):
    """Reads random keys (get_many and get) and checks every row is one
    version of its key, until it has seen a counter above `beyond` (the
    writer moved on while this process read) and checked enough rows.
    `table` None means the module's TABLE (inherited over fork, or opened by
    the initializer). Returns a dict the parent checks."""
    t = TABLE if table is None else table
    rng = random.Random(seed)
    checked = torn = busy = 0
    highest = 0
    guard = time.monotonic() + HANG_GUARD
    while highest <= beyond or checked < 500:
        if time.monotonic() > guard:
            break  # the parent fails on highest <= beyond
        ks = [rng.randrange(ROWS) for _ in range(32)]
        b = t.get_many(["key:%d" % k for k in ks], fields=FIELDS)
        n_checked, n_torn, n_busy, top = check_derived_batch(b, ks)
        checked, torn, busy, highest = checked + n_checked, torn + n_torn, busy + n_busy, max(highest, top)
        ok, c = check_row(t, rng.randrange(ROWS))
        if c is None and ok:
            busy += 1
        else:
            torn += not ok
            checked += ok
            highest = max(highest, c or 0)
    return {"pid": os.getpid(), "checked": checked, "torn": torn, "busy": busy, "highest": highest}


def read_one(table, key):
    """A Row and a Batch of one key, returned to the parent (pickled)."""
    t = TABLE if table is None else table
    return t.get(key), t.get_many([key], fields=FIELDS)
