"""Several Python processes read while the C++ writer rewrites every row:
no reader may ever see a torn row (fields from two versions of it).

The test stops on progress, not on the clock: it runs until the readers have
checked MIN_CHECKED consistent rows and seen the rows move on; only a hang
(HANG_GUARD seconds) fails on time. A reader that only ever gets BUSY makes
no progress and fails."""

import multiprocessing
import os
import random
import signal
import subprocess
import time

import numpy as np

import larder
from conftest import WRITER
from expected import check_derived_batch, derived_embedding, derived_ok_scalars, derived_tag

ROWS = 200
READERS = 3
MIN_CHECKED = 3000  # consistent rows checked, all readers together
HANG_GUARD = 120.0


def _reader(seg_dir, seed, stop, checked_out, highest_out, out):
    """Reads random keys with get_many and get until `stop` is set,
    publishing its consistent rows checked and highest counter seen as it
    goes; returns (rows checked, torn rows, busy reads, highest) via out."""
    rng = random.Random(seed)
    seg = larder.open("churn", seg_dir)
    rows = seg.table("rows")
    checked = torn = busy = 0
    highest = 0
    fields = ["clicks", "spend", "ctr", "premium", "embedding"]
    while not stop.is_set():
        ks = [rng.randrange(ROWS) for _ in range(64)]
        b = rows.get_many(["key:%d" % k for k in ks], fields=fields)
        n_checked, n_torn, n_busy, top = check_derived_batch(b, ks)
        checked, torn, busy, highest = checked + n_checked, torn + n_torn, busy + n_busy, max(highest, top)
        k = rng.randrange(ROWS)
        row = rows.get("key:%d" % k)
        if row.status == larder.Status.BUSY:
            busy += 1
        else:
            c = row["clicks"]
            ok = (row.ok and derived_ok_scalars(k, c, row.event_time_ms, row["spend"], row["ctr"], row["premium"])
                  and np.array_equal(row["embedding"], derived_embedding(c)) and row["tag"] == derived_tag(c))
            torn += not ok
            checked += ok
        checked_out.value = checked
        highest_out.value = highest
    seg.close()
    out.put((checked, torn, busy, highest))


def test_no_torn_rows_across_processes(seg_dir):
    # --seconds is only the writer's own hang guard: the test ends it with
    # SIGTERM once the readers have made their progress.
    writer = subprocess.Popen([WRITER, "churn", "--segment", "churn", "--dir", seg_dir, "--rows", str(ROWS),
                               "--seconds", str(HANG_GUARD)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        stop = ctx.Event()
        checked = [ctx.RawValue("q", 0) for _ in range(READERS)]
        highest = [ctx.RawValue("q", 0) for _ in range(READERS)]
        seed = int(os.environ.get("LARDER_TEST_SEED", "1126"))
        print("seed", seed)
        procs = [ctx.Process(target=_reader, args=(seg_dir, seed + i, stop, checked[i], highest[i], out))
                 for i in range(READERS)]
        for p in procs:
            p.start()
        guard = time.monotonic() + HANG_GUARD
        # The readers checked enough rows, and saw them rewritten past the
        # first counter values (the writer made progress while they read).
        while not (sum(c.value for c in checked) >= MIN_CHECKED and max(h.value for h in highest) > 2 * ROWS):
            assert time.monotonic() < guard, "no progress within %.0f s: checked %s, highest %s" % (
                HANG_GUARD, [c.value for c in checked], [h.value for h in highest])
            assert all(p.is_alive() for p in procs), "a reader died"
            time.sleep(0.01)
        stop.set()
        results = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=30)
            assert p.exitcode == 0
    finally:
        writer.send_signal(signal.SIGTERM)
        rest, _ = writer.communicate(timeout=60)
    assert writer.returncode == 0
    writes = int(rest.split()[-1])
    total_checked = sum(r[0] for r in results)
    torn = sum(r[1] for r in results)
    print("writes %d, consistent rows checked %d, busy %d" % (writes, total_checked, sum(r[2] for r in results)))
    assert torn == 0, results
    assert total_checked >= MIN_CHECKED, "consistent rows checked (BUSY is not one)"
    # The readers saw the rows move on while they read.
    assert max(r[3] for r in results) > 2 * ROWS
