"""Several Python processes read while the C++ writer rewrites every row:
no reader may ever see a torn row (fields from two versions of it)."""

import multiprocessing
import os
import random
import subprocess
import time

import numpy as np

import larder
from conftest import WRITER
from expected import derived_embedding, derived_ok_scalars, derived_tag

ROWS = 200
SECONDS = 3.0
READERS = 3


def _reader(seg_dir, seed, deadline, out):
    """Reads random keys with get_many and get until the deadline; returns
    (rows checked, torn rows, busy reads, highest counter seen) via out."""
    rng = random.Random(seed)
    seg = larder.open("churn", seg_dir)
    rows = seg.table("rows")
    checked = torn = busy = 0
    highest = 0
    fields = ["clicks", "spend", "ctr", "premium", "embedding"]
    while time.time() < deadline:
        ks = [rng.randrange(ROWS) for _ in range(64)]
        b = rows.get_many(["key:%d" % k for k in ks], fields=fields)
        for i, k in enumerate(ks):
            if b.status[i] == larder.Status.BUSY:
                busy += 1
                continue
            c, spend, ctr, premium = b.values[i]
            c = int(c)
            ok = (b.status[i] == larder.Status.OK
                  and derived_ok_scalars(k, c, int(b.event_time_ms[i]), spend, ctr, premium)
                  and np.array_equal(b["embedding"][i], derived_embedding(c)))
            torn += not ok
            checked += 1
            highest = max(highest, c)
        k = rng.randrange(ROWS)
        row = rows.get("key:%d" % k)
        if row.status == larder.Status.BUSY:
            busy += 1
            continue
        c = row["clicks"]
        ok = (row.ok and derived_ok_scalars(k, c, row.event_time_ms, row["spend"], row["ctr"], row["premium"])
              and np.array_equal(row["embedding"], derived_embedding(c)) and row["tag"] == derived_tag(c))
        torn += not ok
        checked += 1
    seg.close()
    out.put((checked, torn, busy, highest))


def test_no_torn_rows_across_processes(seg_dir):
    writer = subprocess.Popen([WRITER, "churn", "--segment", "churn", "--dir", seg_dir, "--rows", str(ROWS),
                               "--seconds", str(SECONDS)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        deadline = time.time() + SECONDS - 0.3
        seed = int(os.environ.get("LARDER_TEST_SEED", "1126"))
        print("seed", seed)
        procs = [ctx.Process(target=_reader, args=(seg_dir, seed + i, deadline, out)) for i in range(READERS)]
        for p in procs:
            p.start()
        results = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=30)
            assert p.exitcode == 0
    finally:
        rest, _ = writer.communicate(timeout=60)
    assert writer.returncode == 0
    writes = int(rest.split()[-1])
    checked = sum(r[0] for r in results)
    torn = sum(r[1] for r in results)
    print("writes %d, rows checked %d, busy %d" % (writes, checked, sum(r[2] for r in results)))
    assert torn == 0, results
    assert checked > 1000 and writes > 10 * ROWS
    # The readers saw the rows move on while they read.
    assert max(r[3] for r in results) > ROWS
