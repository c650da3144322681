#!/usr/bin/env python3
"""larder.publish against a bare pika publisher of the same messages, in the
same run, on the same broker.

    set -a; . /tmp/<broker dir>/broker.env; set +a     # scripts/broker.sh start
    /usr/bin/python3 bench/python/bench_publish.py [--rows 200000] [--rounds 3] [--dims 16]

The rows: a DataFrame of --rows cards with an int64, a float64, a float32, a
bool, a string and a --dims vector field (0: none), the shape of a nightly
feature job.
Each round times
  - build:   larder.publish's validation and message building alone
             (larder.publish.build_messages: every column checked, JSON
             text made, rows cut into messages);
  - publish: larder.publish end to end (schema from a config file,
             validation, building, publishing with confirms);
  - pika:    a bare pika publisher of the messages `build` made, the same
             way (BlockingConnection, confirm mode, mandatory, persistent):
             the cost of the broker round trips alone;
  - by hand: what a producer writes without the helper: a dict per row,
             json.dumps per 1,000 rows, the same pika publisher; no
             validation (the sidecar would dead-letter a bad row's batch).
into a classic queue bound to a scratch exchange, purged after each step.
Reports rows/s per step, the median of the rounds, and publish / pika.
The broker comes from $LARDER_TEST_AMQP_URL / $LARDER_TEST_AMQP_PASSWORD
(or $LARDER_AMQP_URL / $LARDER_AMQP_PASSWORD).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "client_lib", "python"))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pika  # noqa: E402

import larder  # noqa: E402
from larder.publish import TableSchema, _parse_url, build_messages  # noqa: E402

CONFIG = """\
segment: {name: bench-publish}
tables:
  - name: cards
    key_max_len: 16
    capacity: 1000000
    fields:
      - {name: n, type: int64}
      - {name: x, type: float64}
      - {name: f, type: float32}
      - {name: flag, type: bool}
      - {name: s, type: string, max_len: 8}
      - {name: v, type: vector, dims: %d}
rabbitmq:
  url: %s
  password_env: LARDER_BENCH_PASSWORD
  queue: {name: %s}
  bindings: [{exchange: %s, routing_keys: ["#"]}]
"""


def frame(n, dims):
    rng = np.random.default_rng(1)
    return pd.DataFrame({
        "card": ["c%07d" % i for i in range(n)],
        "ts": np.full(n, int(time.time() * 1000) - 60_000, dtype=np.int64),
        "n": rng.integers(0, 1 << 40, n),
        "x": rng.normal(size=n),
        "f": rng.normal(size=n).astype(np.float32),
        "flag": rng.random(n) < 0.5,
        "s": np.array(["US", "DE", "FR", "GB"], dtype=object)[rng.integers(0, 4, n)],
        "v": list(rng.normal(size=(n, max(dims, 1))).astype(np.float32)),
    }).drop(columns=[] if dims else ["v"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dims", type=int, default=16, help="the vector field's dims; 0: no vector field")
    args = ap.parse_args()
    url = os.environ.get("LARDER_TEST_AMQP_URL") or os.environ.get("LARDER_AMQP_URL")
    password = os.environ.get("LARDER_TEST_AMQP_PASSWORD") or os.environ.get("LARDER_AMQP_PASSWORD", "guest")
    if not url:
        sys.exit("bench_publish: set LARDER_TEST_AMQP_URL (scripts/broker.sh writes it to broker.env)")
    os.environ["LARDER_BENCH_PASSWORD"] = password
    name = "larder-bench-publish-%d" % os.getpid()
    cfg_dir = tempfile.mkdtemp(prefix="larder-bench-publish-")
    config = os.path.join(cfg_dir, "bench.yaml")
    with open(config, "w") as f:
        f.write(CONFIG % (max(args.dims, 1), url, name, name))

    u = _parse_url(url)
    params = pika.ConnectionParameters(host=u["host"], port=u["port"], virtual_host=u["vhost"],
                                       credentials=pika.PlainCredentials(u["user"], password))
    admin = pika.BlockingConnection(params)
    ch = admin.channel()
    ch.exchange_declare(name, exchange_type="topic", auto_delete=False)
    ch.queue_declare(name, durable=False, arguments={"x-queue-type": "classic"})
    ch.queue_bind(name, name, "#")

    df = frame(args.rows, args.dims)
    schema = TableSchema.from_config(config, "cards")
    results = {"build": [], "publish": [], "pika": [], "by hand": []}
    try:
        for rnd in range(args.rounds):
            t0 = time.perf_counter()
            bodies, counts, errors, _ = build_messages(df, "cards", "card", "ts", schema)
            results["build"].append(args.rows / (time.perf_counter() - t0))
            assert not errors and sum(counts) == args.rows
            ch.queue_purge(name)

            t0 = time.perf_counter()
            report = larder.publish(df, "cards", "card", "ts", config=config, exchange=name)
            results["publish"].append(args.rows / (time.perf_counter() - t0))
            assert report.ok and report.published_rows == args.rows, report
            ch.queue_purge(name)

            conn = pika.BlockingConnection(params)
            pc = conn.channel()
            pc.confirm_delivery()
            props = pika.BasicProperties(content_type="application/json", delivery_mode=2)
            t0 = time.perf_counter()
            for body in bodies:
                pc.basic_publish(name, "cards", body, props, mandatory=True)
            results["pika"].append(args.rows / (time.perf_counter() - t0))
            ch.queue_purge(name)

            t0 = time.perf_counter()
            cols = [df[c].tolist() for c in ("card", "ts", "n", "x", "f", "flag", "s")]
            vecs = df["v"].tolist() if args.dims else None
            batch = []
            for i, (k, ts, n, x, f, flag, s) in enumerate(zip(*cols)):
                fields = {"n": n, "x": x, "f": f, "flag": flag, "s": s}
                if vecs is not None:
                    fields["v"] = vecs[i].tolist()
                batch.append({"table": "cards", "key": k, "event_time": ts, "fields": fields})
                if len(batch) == 1000:
                    pc.basic_publish(name, "cards", json.dumps(batch), props, mandatory=True)
                    batch = []
            if batch:
                pc.basic_publish(name, "cards", json.dumps(batch), props, mandatory=True)
            results["by hand"].append(args.rows / (time.perf_counter() - t0))
            conn.close()
            ch.queue_purge(name)
            print("round %d: build %.0f rows/s, larder.publish %.0f rows/s, bare pika %.0f rows/s, by hand %.0f "
                  "rows/s (%d messages, %.1f MB)" % (rnd + 1, results["build"][-1], results["publish"][-1],
                                                    results["pika"][-1], results["by hand"][-1], len(bodies),
                                                    sum(map(len, bodies)) / 1e6))
    finally:
        ch.queue_delete(name)
        ch.exchange_delete(name)
        admin.close()
    med = {k: statistics.median(v) for k, v in results.items()}
    print("median of %d rounds, %d rows, %s: build %.0f rows/s, larder.publish %.0f "
          "rows/s, bare pika (same messages) %.0f rows/s, by hand %.0f rows/s; larder.publish / pika = %.3f, "
          "larder.publish / by hand = %.2f"
          % (args.rounds, args.rows, "5 scalar fields and a %d-dim vector" % args.dims if args.dims else
             "5 scalar fields", med["build"], med["publish"], med["pika"], med["by hand"],
             med["publish"] / med["pika"], med["publish"] / med["by hand"]))


if __name__ == "__main__":
    main()
