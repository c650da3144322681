"""A table handle follows the segment's generation switches with no code for
it: the C++ writer grows the table twice and adds a field while this process
reads through a handle opened on generation 0, and every read finds its key
whole. Afterwards the same handle reads a key only the last generation holds.

The test reads until the writer says it is done (its output, not a duration);
only a hang (HANG_GUARD seconds) fails on time."""

import select
import subprocess
import time

import numpy as np

import larder
from conftest import WRITER
from expected import derived_embedding, derived_ok_scalars, derived_tag

ROWS = 200
HANG_GUARD = 120.0


def _whole(rows, k):
    row = rows.get("key:%d" % k)
    if not row.ok:
        return False
    c = row["clicks"]
    return (derived_ok_scalars(k, c, row.event_time_ms, row["spend"], row["ctr"], row["premium"])
            and np.array_equal(row["embedding"], derived_embedding(c)) and row["tag"] == derived_tag(c))


def test_reader_follows_growth_and_a_new_field(seg_dir):
    writer = subprocess.Popen([WRITER, "grow", "--segment", "growing", "--dir", seg_dir, "--rows", str(ROWS)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        seg = larder.open("growing", seg_dir)
        rows = seg.table("rows")
        assert seg.info()["generation"] == 0
        writer.stdin.write("go\n")
        writer.stdin.flush()
        reads = bad = 0
        guard = time.monotonic() + HANG_GUARD
        done = ""
        while not done:
            assert time.monotonic() < guard, "the writer did not finish within %.0f s" % HANG_GUARD
            for k in range(ROWS):
                bad += not _whole(rows, k)
                reads += 1
            if select.select([writer.stdout], [], [], 0)[0]:
                done = writer.stdout.readline().strip()
        assert writer.wait(timeout=60) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    print("reads %d, not whole %d, writer: %s" % (reads, bad, done))
    assert done == "done 3"
    assert bad == 0
    # The last generation's key, through the handle opened on the first.
    for k in range(ROWS + 1):
        assert _whole(rows, k), k
    stats = rows.stats()
    assert stats["live_keys"] == ROWS + 1
    assert stats["capacity"] >= 4 * ROWS
    seg.close()
