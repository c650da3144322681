"""The Python client in worker processes, the way inference servers scale:
multiprocessing.Pool (fork and spawn) and concurrent.futures
.ProcessPoolExecutor, reading while the C++ writer rewrites every row.

Each worker checks that every row it reads is one version of its key (all
fields derive from one counter: tests/support/derived_rows.h) and reads
until it has seen a counter the writer wrote after the task was handed out.
Nothing waits on the clock: a task ends on what it has seen; only a hang
(proc_workers.HANG_GUARD) ends one early, and then its check fails."""

import concurrent.futures
import multiprocessing
import os
import pickle
import signal
import subprocess

import numpy as np
import pytest

import larder
import proc_workers
from conftest import WRITER
from proc_workers import ROWS

WORKERS = 3
TASKS = 6


@pytest.fixture(scope="module", autouse=True)
def _reap_resource_tracker():
    """Spawn-started pools start multiprocessing's resource tracker, a child
    of this process that would outlive it (orphaned until init reaps it):
    stop and reap it once this module's tests are done."""
    yield
    from multiprocessing import resource_tracker
    stop = getattr(resource_tracker._resource_tracker, "_stop", None)  # Python >= 3.8
    if stop is not None:
        stop()


@pytest.fixture
def churn(seg_dir):
    """A live writer rewriting keys key:0..ROWS-1 of segment "churn" until
    the test ends; yields the directory."""
    writer = subprocess.Popen([WRITER, "churn", "--segment", "churn", "--dir", seg_dir, "--rows", str(ROWS),
                               "--seconds", "600"], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        yield seg_dir
    finally:
        writer.send_signal(signal.SIGTERM)
        writer.communicate(timeout=60)
    assert writer.returncode == 0


def _counter_now(table):
    """The highest counter of any key now: work written after this is progress."""
    b = table.get_many(["key:%d" % k for k in range(ROWS)], fields=["clicks"])
    return int(np.nanmax(b.values[:, 0]))


def _check(results, beyond):
    assert len(results) == TASKS
    for r in results:
        assert r["torn"] == 0, results
        assert r["checked"] >= 500, results
        assert r["highest"] > beyond, ("a worker saw no row written after its task began", results)
    assert all(r["pid"] != os.getpid() for r in results)


def _seed():
    seed = int(os.environ.get("LARDER_TEST_SEED", "4242"))
    print("seed", seed)
    return seed


def test_fork_pool_uses_a_segment_opened_before_fork(churn):
    # The parent opens once; forked workers use its objects as they are.
    seg = larder.open("churn", churn)
    proc_workers.TABLE = seg.table("rows")
    try:
        beyond = _counter_now(proc_workers.TABLE) + ROWS
        seed = _seed()
        with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
            results = pool.starmap(proc_workers.read_until, [(None, beyond, seed + i) for i in range(TASKS)])
        _check(results, beyond)
        # The parent's objects are untouched by what the children did.
        assert proc_workers.TABLE.get("key:1").ok
    finally:
        proc_workers.TABLE = None
        seg.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_with_the_table_as_an_argument(churn, method):
    # A Table sent to a worker travels by name: the worker maps the segment again.
    seg = larder.open("churn", churn, max_retries=512)
    table = seg.table("rows")
    beyond = _counter_now(table) + ROWS
    seed = _seed()
    with multiprocessing.get_context(method).Pool(WORKERS) as pool:
        results = pool.starmap(proc_workers.read_until, [(table, beyond, seed + i) for i in range(TASKS)])
    _check(results, beyond)
    seg.close()


def test_spawn_pool_opening_in_an_initializer(churn):
    seg = larder.open("churn", churn)
    beyond = _counter_now(seg.table("rows")) + ROWS
    seed = _seed()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(WORKERS, initializer=proc_workers.open_in_worker, initargs=("churn", churn)) as pool:
        results = pool.starmap(proc_workers.read_until, [(None, beyond, seed + i) for i in range(TASKS)])
    _check(results, beyond)
    seg.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_process_pool_executor(churn, method):
    seg = larder.open("churn", churn)
    table = seg.table("rows")
    beyond = _counter_now(table) + ROWS
    seed = _seed()
    with concurrent.futures.ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context(method)) as ex:
        futures = [ex.submit(proc_workers.read_until, table, beyond, seed + i) for i in range(TASKS)]
        results = [f.result(timeout=proc_workers.HANG_GUARD * 2) for f in futures]
        _check(results, beyond)
        # Rows and batches come back too (pickled with their bytes; their
        # table is mapped again here, once for all of them).
        row, batch = ex.submit(proc_workers.read_one, table, "key:5").result(timeout=60)
    assert row.ok and row.stored_key == b"key:5"
    c = row["clicks"]
    assert row.event_time_ms == c and row["tag"] == "v%d" % c
    assert batch.columns == ("clicks", "spend", "ctr", "premium")
    assert batch.status[0] == larder.Status.OK and batch.values[0, 0] >= c  # the same or a later version
    seg.close()


def test_pickled_objects_map_the_segment_again(churn):
    seg = larder.open("churn", churn, max_retries=64)
    table = seg.table("rows")
    row = table.get("key:3")
    again = pickle.loads(pickle.dumps((seg, table, row)))
    seg2, table2, row2 = again
    assert seg2 is not seg and seg2._handle.value != 0
    assert (seg2.name, seg2.dir, seg2._options) == ("churn", churn, (64, 0))
    assert table2.segment is seg2 and table2.name == "rows"
    assert row2.to_dict().keys() == row.to_dict().keys() and row2["clicks"] == row["clicks"]
    assert row2.event_time_ms == row.event_time_ms and row2.status == row.status
    # One mapping for everything unpickled from the same segment and options.
    assert pickle.loads(pickle.dumps(table)).segment is seg2
    seg.close()
    seg2.close()
