#!/usr/bin/env python3
"""Python client vs C++ client: single get and get_many, in the same run.

    cmake --build build -j2 --target larder_client_shared larder-test-writer
    /usr/bin/python3 bench/python/bench_client.py [--rows 20000] [--batch 256] [--rounds 7]

Writes a scratch segment with the tables of examples/demo.yaml (users:
clicks_1h, spend_usd, is_premium, country, embedding[16]) using the C++
writer (larder-test-writer), then alternates rounds of
  - C++: Table::get and Table::get_many (larder-test-writer bench), and the
    C ABI's one-pass larder_gather that the Python client calls;
  - Python: Table.get on random keys, Table.get_many of --batch keys given as
    a list of str and as a NumPy 'S' array, every non-string field
    (3 scalars into float64, the embedding into float32), and a row's
    event time through the C ABI's row accessor and at its byte offset.
Each round draws 4096 random keys from all rows (batches are 16 windows of
256 of them). Both sides time blocks of calls (4096 gets, 16 batches) and
report the fastest block of any round (the least disturbed by other load on
the host) and the median of the rounds' means. Targets: Python
get_many <= 3x the C++ get_many per key; Python get < 2 us.
"""

import argparse
import functools
import json
import os
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BUILD = os.environ.get("LARDER_BUILD_DIR", os.path.join(REPO, "build"))
os.environ.setdefault("LARDER_BUILD_DIR", BUILD)
sys.path.insert(0, os.path.join(REPO, "client_lib", "python"))

import numpy as np  # noqa: E402

import larder  # noqa: E402

WRITER = os.path.join(BUILD, "tests", "larder-test-writer")


def time_blocks(total, block, op):
    """op(i) for i < total in blocks; (best block's ns per op, mean ns per op),
    the same method as the C++ side (larder-test-writer bench)."""
    clock = time.perf_counter_ns
    best, spent, i = float("inf"), 0, 0
    while i < total:
        begin, end = i, min(total, i + block)
        t0 = clock()
        for j in range(begin, end):
            op(j)
        ns = clock() - t0
        spent += ns
        best = min(best, ns / (end - begin))
        i = end
    return best, spent / total


def python_round(table, pool, batch, iters):
    get = table.get
    n = len(pool)
    out = {"py_get": time_blocks(iters, 4096, lambda i: get(pool[i % n]))}
    windows = [pool[s:s + batch] for s in range(0, n - batch + 1, batch)]
    arrays = [np.array(w, dtype="S") for w in windows]
    # The numeric and vector fields: the gather path (string fields would
    # take the per-key row path, which this does not time).
    numeric = tuple(f.name for f in table.fields if f.type != larder.FieldType.STRING)
    get_many = functools.partial(table.get_many, fields=numeric)
    calls = max(1, iters // batch)
    out["py_many_list"] = time_blocks(calls, 16, lambda b: get_many(windows[b % len(windows)]))
    out["py_many_S"] = time_blocks(calls, 16, lambda b: get_many(arrays[b % len(arrays)]))
    # A row's event time: through larder_row_event_time_ms (what Row does),
    # and read at byte offset 0 as ABI 1.0 bindings did.
    rows = [get(k) for k in pool[:256]]
    unpack = struct.Struct("<q").unpack_from
    out["py_row_time"] = time_blocks(iters, 4096, lambda i: rows[i & 255].event_time_ms)
    out["py_row_time_offset"] = time_blocks(
        iters, 4096, lambda i: unpack(rows[i & 255]._buf, 0)[0] if rows[i & 255].found else None)
    return out


def cpp_round(segment, seg_dir, rows, batch, iters, seed):
    out = subprocess.run([WRITER, "bench", "--segment", segment, "--dir", seg_dir, "--rows", str(rows), "--batch",
                          str(batch), "--iters", str(iters), "--seed", str(seed)],
                         capture_output=True, text=True, check=True)
    c = json.loads(out.stdout)
    return {"cpp_get": (c["get_ns"], c["get_mean_ns"]), "cpp_many": (c["get_many_ns"], c["get_many_mean_ns"]),
            "cpp_gather": (c["c_gather_ns"], c["c_gather_mean_ns"])}


def main():
    p = argparse.ArgumentParser(description="Python vs C++ Larder client timings")
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--iters", type=int, default=200000, help="gets per round (get_many: iters / batch calls)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    if not os.path.exists(WRITER):
        sys.exit("%s is missing: cmake --build build -j2 --target larder_client_shared larder-test-writer" % WRITER)

    seg_dir = tempfile.mkdtemp(prefix="larder-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        subprocess.run([WRITER, "write", "--segment", "bench", "--dir", seg_dir, "--rows", str(args.rows)],
                       check=True, capture_output=True)
        seg = larder.open("bench", seg_dir)
        users = seg.table("users")
        results = {k: [] for k in ("cpp_get", "cpp_many", "cpp_gather", "py_get", "py_many_list", "py_many_S",
                                    "py_row_time", "py_row_time_offset")}
        for r in range(args.rounds):
            # Each side draws its own 4096 keys, uniformly from the same rows.
            rng = random.Random(args.seed + r)
            pool = ["u%06d" % rng.randint(1, args.rows) for _ in range(4096)]
            if r == 0:
                python_round(users, pool, args.batch, args.iters // 10)  # warm up
            for k, v in cpp_round("bench", seg_dir, args.rows, args.batch, args.iters * 5, args.seed + r).items():
                results[k].append(v)
            for k, v in python_round(users, pool, args.batch, args.iters).items():
                results[k].append(v)
        seg.close()
    finally:
        shutil.rmtree(seg_dir, ignore_errors=True)

    best = {k: min(b for b, _ in v) for k, v in results.items()}
    mean = {k: statistics.median(m for _, m in v) for k, v in results.items()}
    b = args.batch
    print("Larder client timings: %d rows, batch %d, %d rounds, library %s"
          % (args.rows, b, args.rounds, larder.library_path()))
    print("best: the fastest block of any round; typical: the median over rounds of each round's mean")
    print("%-44s %12s %12s %14s" % ("per call", "best", "typical", "per key (best)"))

    def line(label, key, per_key):
        print("%-44s %9.0f ns %9.0f ns %11.1f ns" % (label, best[key], mean[key], best[key] / per_key))

    line("C++   Table::get", "cpp_get", 1)
    line("C++   Table::get_many (%d keys)" % b, "cpp_many", b)
    line("C ABI larder_gather (%d keys, 4 fields)" % b, "cpp_gather", b)
    line("Py    Table.get", "py_get", 1)
    line("Py    Table.get_many (%d str keys)" % b, "py_many_list", b)
    line("Py    Table.get_many (%d keys, 'S' array)" % b, "py_many_S", b)
    line("Py    Row.event_time_ms (row accessor)", "py_row_time", 1)
    line("Py    event time at byte offset 0 (ABI 1.0)", "py_row_time_offset", 1)
    ratio_list = best["py_many_list"] / best["cpp_many"]
    ratio_s = best["py_many_S"] / best["cpp_many"]
    print()
    print("Python get_many / C++ get_many at %d keys: %.2fx (str list), %.2fx ('S' array)   target <= 3x"
          % (b, ratio_list, ratio_s))
    print("  typical: %.2fx (str list), %.2fx ('S' array)"
          % (mean["py_many_list"] / mean["cpp_many"], mean["py_many_S"] / mean["cpp_many"]))
    print("Python single get: %.2f us   target < 2 us" % (best["py_get"] / 1000.0))


if __name__ == "__main__":
    main()
