#!/usr/bin/python3
"""Checks both example producers against the test broker.

Runs the C++ producer (path in argv[1]) and examples/producer.py with
publisher confirms into an exchange of their own, consumes what arrived and
validates every update against message format v1 and the demo schema
(examples/demo.yaml): field types, string lengths, vector length, unique
ids, per-key strictly increasing event times, per-table routing keys, and
the number of updates.

    LARDER_TEST_AMQP_URL=... tests/scripts/producers_test.py build/examples/larder-example-producer

Needs the broker.env variables (scripts/test.sh exports them); fails without
them, or exits 77 (CTest: skipped) when LARDER_TEST_ALLOW_SKIP=1 declares the
environment lacking them.
"""

import json
import os
import re
import subprocess
import sys
import urllib.parse

try:
    import pika
except ImportError:
    sys.exit("producers_test: needs python3-pika; run with /usr/bin/python3")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIMS = 16
# Fields, and the raw event values the demo's aggregates fold ("click", "amount").
USERS_FIELDS = {"clicks_1h": int, "spend_usd": float, "is_premium": bool, "country": str,
                "embedding": list, "click": int, "amount": float}
ITEMS_FIELDS = {"price": float, "ctr": float, "category": str}
MAX_LEN = {"country": 8, "category": 16}


def fail(msg):
    print("FAIL " + msg)
    sys.exit(1)


def check_update(u, where):
    if set(u) - {"table", "key", "event_time", "op", "fields", "id"}:
        fail("%s: unexpected members %s" % (where, sorted(set(u))))
    table, key, op = u.get("table"), u.get("key"), u.get("op")
    if table not in ("users", "items"):
        fail("%s: table %r" % (where, table))
    pattern = r"u\d{6}" if table == "users" else r"i\d{5}"
    if not isinstance(key, str) or not re.fullmatch(pattern, key):
        fail("%s: key %r" % (where, key))
    if type(u.get("event_time")) is not int or u["event_time"] < 1_600_000_000_000:
        fail("%s: event_time %r" % (where, u.get("event_time")))
    if not isinstance(u.get("id"), str) or not u["id"]:
        fail("%s: id %r" % (where, u.get("id")))
    if op == "delete":
        if "fields" in u or table != "items":
            fail("%s: delete with fields or of a user" % where)
        return
    if op != "upsert":
        fail("%s: op %r" % (where, op))
    schema = USERS_FIELDS if table == "users" else ITEMS_FIELDS
    fields = u.get("fields")
    if not isinstance(fields, dict) or not fields:
        fail("%s: fields %r" % (where, fields))
    for name, value in fields.items():
        if name not in schema:
            fail("%s: unknown field %s.%s" % (where, table, name))
        # bool is an int in Python: compare exact types.
        if type(value) is not schema[name]:
            fail("%s: %s.%s has type %s" % (where, table, name, type(value).__name__))
        if name in MAX_LEN and len(value.encode()) > MAX_LEN[name]:
            fail("%s: %s.%s longer than %d" % (where, table, name, MAX_LEN[name]))
        if name == "embedding" and (len(value) != DIMS or
                                     any(type(x) is not float for x in value)):
            fail("%s: embedding is not %d floats" % (where, DIMS))


def main():
    url = os.environ.get("LARDER_TEST_AMQP_URL")
    if len(sys.argv) != 2:
        print("usage: producers_test.py PATH-TO-larder-example-producer", file=sys.stderr)
        return 2
    if not url:
        if os.environ.get("LARDER_TEST_ALLOW_SKIP") == "1":
            print("producers_test: LARDER_TEST_AMQP_URL not set (run through scripts/test.sh); skipped")
            return 77
        print("producers_test: LARDER_TEST_AMQP_URL not set (run through scripts/test.sh; "
              "LARDER_TEST_ALLOW_SKIP=1 skips instead)", file=sys.stderr)
        return 1
    producer_cc = sys.argv[1]
    password = os.environ.get("LARDER_TEST_AMQP_PASSWORD", "guest")
    parts = urllib.parse.urlsplit(url)
    params = pika.ConnectionParameters(host=parts.hostname, port=parts.port,
                                       credentials=pika.PlainCredentials(parts.username or "guest",
                                                                         password))
    exchange = "larder.producers-test.%d" % os.getpid()
    queue = exchange
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    try:
        ch.exchange_declare(exchange, exchange_type="topic", durable=True)
        ch.queue_declare(queue, durable=False, auto_delete=False)
        for rk in ("users.#", "items.#"):
            ch.queue_bind(queue, exchange, rk)

        env = dict(os.environ, LARDER_AMQP_PASSWORD=password)
        runs = [
            ([producer_cc, "--count", "1000", "--batch", "10", "--seed", "11"], 1000),
            ([producer_cc, "--count", "200", "--batch", "1", "--seed", "12", "--rate", "500"], 200),
            (["/usr/bin/python3", os.path.join(ROOT, "examples", "producer.py"),
              "--count", "300", "--batch", "7", "--seed", "13"], 300),
        ]
        expected = 0
        for cmd, count in runs:
            cmd += ["--url", url, "--exchange", exchange, "--print", "0"]
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
            sys.stdout.write(r.stdout)
            if r.returncode != 0:
                fail("%s exited %d: %s" % (os.path.basename(cmd[0]), r.returncode, r.stderr))
            if "confirms: " not in r.stdout or " 0 nacked, 0 returned" not in r.stdout:
                fail("%s did not report clean confirms" % os.path.basename(cmd[0]))
            print("ok   %s" % " ".join(os.path.basename(c) for c in cmd[:8]))
            expected += count

        updates, ids, last_time = 0, set(), {}
        while True:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                break
            if props.content_type != "application/json" or props.delivery_mode != 2:
                fail("message properties %r" % props)
            doc = json.loads(body)
            batch = doc if isinstance(doc, list) else [doc]
            if not batch:
                fail("empty batch")
            for i, u in enumerate(batch):
                where = "message %s[%d]" % (method.delivery_tag, i)
                check_update(u, where)
                if not method.routing_key.startswith(u["table"] + "."):
                    fail("%s: routing key %s for table %s" % (where, method.routing_key, u["table"]))
                if u["id"] in ids:
                    fail("%s: duplicate id %s" % (where, u["id"]))
                ids.add(u["id"])
                # Event times increase per key within one producer run (id prefix).
                run_key = (u["id"].split("-")[0], u["table"], u["key"])
                if u["event_time"] <= last_time.get(run_key, 0):
                    fail("%s: event_time not increasing for %s" % (where, run_key))
                last_time[run_key] = u["event_time"]
                updates += 1
        if updates != expected:
            fail("consumed %d updates, published %d" % (updates, expected))
        print("ok   %d updates in message format v1, ids unique, event times increasing per key"
              % updates)
    finally:
        ch.queue_delete(queue)
        ch.exchange_delete(exchange)
        conn.close()
    print("producers_test: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
