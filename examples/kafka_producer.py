#!/usr/bin/env python3
"""Produces Larder feature updates to a Kafka topic (python3-confluent-kafka).

Each Kafka message is one Larder message (JSON, docs/message-format.md), keyed
by its row key: Kafka keeps the order of one key's updates within its
partition, and the sidecar applies each partition in order.

  # Larder messages, one per line, from a file or another program:
  python3 examples/kafka_producer.py --bootstrap 127.0.0.1:9092 --topic features --stdin < updates.jsonl

  # or a stream of demo updates for the quick-start's `users` table:
  python3 examples/kafka_producer.py --bootstrap 127.0.0.1:9092 --topic features --demo 1000

Extra librdkafka settings (TLS, SASL) go in --config KEY=VALUE, e.g.
--config security.protocol=SASL_SSL --config sasl.mechanism=SCRAM-SHA-512.
Exits 0 once the cluster acknowledged every message, 1 otherwise.
"""
import argparse
import json
import random
import sys
import time

from confluent_kafka import Producer


def demo_updates(count, seed):
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000)
    for i in range(count):
        key = f"user:{rng.randrange(100)}"
        yield {
            "table": "users",
            "key": key,
            "event_time": now_ms + i,
            "fields": {"n": i, "x": round(rng.uniform(0, 100), 3), "flag": rng.random() < 0.5},
        }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True, help="bootstrap servers, host:port[,host:port]")
    parser.add_argument("--topic", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--stdin", action="store_true", help="read one Larder message per line from stdin")
    source.add_argument("--demo", type=int, metavar="N", help="produce N demo updates for table users")
    parser.add_argument("--seed", type=int, default=1, help="--demo: random seed")
    parser.add_argument("--config", action="append", default=[], metavar="KEY=VALUE", help="a librdkafka setting")
    args = parser.parse_args()

    settings = {"bootstrap.servers": args.bootstrap, "enable.idempotence": True}
    for item in args.config:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--config {item}: expected KEY=VALUE")
        settings[key] = value
    producer = Producer(settings)
    failed = []

    def delivered(err, msg):
        if err is not None:
            failed.append(err)

    if args.stdin:
        messages = (json.loads(line) for line in sys.stdin if line.strip())
    else:
        messages = demo_updates(args.demo, args.seed)
    sent = 0
    for message in messages:
        body = json.dumps(message, separators=(",", ":")).encode()
        key = str(message.get("key", "")).encode()
        while True:
            try:
                producer.produce(args.topic, value=body, key=key, on_delivery=delivered)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.1)
        producer.poll(0)
        sent += 1
    remaining = producer.flush(60)
    if remaining or failed:
        print(f"kafka_producer: {remaining} undelivered, {len(failed)} failed: {failed[:3]}", file=sys.stderr)
        return 1
    print(f"kafka_producer: {sent} messages delivered to {args.topic}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
