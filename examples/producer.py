#!/usr/bin/python3
"""Publish a seeded stream of Larder feature updates to RabbitMQ.

The Python twin of larder-example-producer (examples/producer.cc): users,
items, clicks and embeddings in Larder's message format v1
(docs/message-format.md), published with publisher confirms. It needs only
Debian's python3-pika:

    LARDER_AMQP_PASSWORD=guest examples/producer.py \\
        --url amqp://guest@127.0.0.1:5699 --count 2000 --batch 20 --seed 7

The password comes from the environment variable named by --password-env
(default LARDER_AMQP_PASSWORD), never from the command line; a password in
the URL is used only when that variable is unset.

Tables and fields it writes (examples/demo.yaml declares them):
    users  clicks_1h int64, spend_usd float64, is_premium bool,
           country string(8), embedding float32[--embedding-dims];
           and raw events the sidecar aggregates: "click": 1 with every
           click, "amount": the price with every purchase
    items  price float64, ctr float32, category string(16)

Every update carries a unique "id" and an "event_time" in wall-clock ms,
made strictly increasing per key. The stream has the same shape as the C++
producer's but not the same values for a given seed.

Routing: with "{table}" in --routing-key (the default "{table}.update") each
message holds updates of one table, so a sidecar can bind "users.#" only;
without it, batches mix tables.

Delivery: the channel is in confirm mode and messages are persistent and
mandatory, so pika's basic_publish returns only once the broker has acked
the message; a nack or an unroutable message (no queue bound) raises and
is counted. The exit status is 0 only if every message was acked.
"""

import argparse
import collections
import json
import math
import os
import random
import ssl
import sys
import time
import urllib.parse

try:
    import pika
    import pika.exceptions
except ImportError:
    sys.exit("producer.py: needs python3-pika (apt-get install python3-pika; "
             "run it with /usr/bin/python3)")

COUNTRIES = ["US", "DE", "FR", "GB", "JP", "BR", "IN", "CA", "ES", "NL"]
CATEGORIES = ["books", "electronics", "home_garden", "toys", "grocery",
              "fashion", "sports", "beauty", "automotive", "music"]
HOUR_MS = 3_600_000


def wall_ms():
    return time.time_ns() // 1_000_000


class FeatureStream:
    """Users browse and buy items; a feature pipeline emits the updates.

    Popular users and items are picked more often (a power law)."""

    def __init__(self, args, seed):
        self.args = args
        self.rng = random.Random(seed)
        self.seed = seed
        self.seq = 0
        self.users = [None] * args.users  # dict per seen user
        self.items = [None] * args.items  # dict per listed item
        self.last_time = {}
        self.pending = collections.deque()
        self.counts = collections.Counter()

    def next(self):
        while not self.pending:
            self._simulate_event()
        update = self.pending.popleft()
        self.counts[update["table"]] += 1
        if update["op"] == "delete":
            self.counts["deletes"] += 1
        return update

    def _skewed(self, n):
        u = self.rng.random()
        return min(n - 1, int(n * u * u * u))

    def _event_time(self, key):
        t = max(wall_ms(), self.last_time.get(key, 0) + 1)
        self.last_time[key] = t
        return t

    def _emit(self, table, key, fields=None):
        self.seq += 1
        update = {"table": table, "key": key, "event_time": self._event_time(key),
                  "op": "delete" if fields is None else "upsert"}
        if fields is not None:
            update["fields"] = fields
        update["id"] = "py%x-%d" % (self.seed, self.seq)
        self.pending.append(update)

    def _embedding(self):
        v = [self.rng.gauss(0, 1) for _ in range(self.args.embedding_dims)]
        norm = math.sqrt(sum(x * x for x in v)) or 1.0
        # Rounded to float32 precision, as the table stores float32.
        return [float("%.8g" % (x / norm)) for x in v]

    @staticmethod
    def _ctr(item):
        return item["clicks"] / item["impressions"] if item["impressions"] else 0.0

    def _clicks_1h(self, user, now):
        clicks = user["clicks"]
        while clicks and clicks[0] <= now - HOUR_MS:
            clicks.popleft()
        return len(clicks)

    def _simulate_event(self):
        ui, ii = self._skewed(self.args.users), self._skewed(self.args.items)
        ukey, ikey = "u%06d" % ui, "i%05d" % ii
        user, item = self.users[ui], self.items[ii]
        if user is None:  # a new user: the full profile
            user = self.users[ui] = {"clicks": collections.deque(), "spend_usd": 0.0,
                                     "is_premium": self.rng.random() < 0.15,
                                     "country": self.rng.choice(COUNTRIES)}
            self._emit("users", ukey, {"clicks_1h": 0, "spend_usd": 0.0,
                                       "is_premium": user["is_premium"],
                                       "country": user["country"],
                                       "embedding": self._embedding()})
            return
        if item is None or not item["live"]:  # a new or relisted item
            if item is None:
                item = self.items[ii] = {
                    "price": round(math.exp(1.5 + 3.0 * self.rng.random()), 2),
                    "category": self.rng.choice(CATEGORIES),
                    "clicks": 0, "impressions": 0}
            item["live"] = True
            self._emit("items", ikey, {"price": item["price"], "ctr": self._ctr(item),
                                       "category": item["category"]})
            return

        r, now = self.rng.random(), wall_ms()
        if r < 0.35:  # click: the user's activity and the item's CTR change
            user["clicks"].append(now)
            item["clicks"] += 1
            item["impressions"] = max(item["impressions"], item["clicks"])
            # "click": the raw event the sidecar's rolling counts fold.
            self._emit("users", ukey, {"clicks_1h": self._clicks_1h(user, now), "click": 1})
            self._emit("items", ikey, {"ctr": self._ctr(item)})
        elif r < 0.60:  # impressions served: the CTR drifts down
            item["impressions"] += 20 + int(180 * self.rng.random())
            self._emit("items", ikey, {"ctr": self._ctr(item)})
        elif r < 0.70:  # purchase
            user["spend_usd"] = round(user["spend_usd"] + item["price"], 2)
            # "amount": the raw event the sidecar's rolling spend folds.
            fields = {"spend_usd": user["spend_usd"], "amount": item["price"]}
            if not user["is_premium"] and user["spend_usd"] > 500:
                user["is_premium"] = fields["is_premium"] = True
            self._emit("users", ukey, fields)
        elif r < 0.78:  # model refresh of the user's embedding
            self._emit("users", ukey, {"embedding": self._embedding()})
        elif r < 0.83:  # profile change
            if self.rng.random() < 0.5:
                user["country"] = self.rng.choice(COUNTRIES)
            else:
                user["is_premium"] = not user["is_premium"]
            self._emit("users", ukey, {"is_premium": user["is_premium"],
                                       "country": user["country"]})
        elif r < 0.98:  # repricing, +-10%
            item["price"] = max(0.99, round(item["price"] * (0.9 + 0.2 * self.rng.random()), 2))
            self._emit("items", ikey, {"price": item["price"]})
        else:  # discontinued: delete; it may be relisted later
            item["live"] = False
            self._emit("items", ikey)


def connection_parameters(args):
    url = urllib.parse.urlsplit(args.url)
    if url.scheme not in ("amqp", "amqps"):
        sys.exit("producer.py: --url must start with amqp:// or amqps://")
    password = os.environ.get(args.password_env)
    if password is None:
        password = urllib.parse.unquote(url.password) if url.password else "guest"
    user = urllib.parse.unquote(url.username) if url.username else "guest"
    vhost = urllib.parse.unquote(url.path[1:]) if len(url.path) > 1 else "/"
    tls = url.scheme == "amqps"
    ssl_options = None
    if tls:
        context = ssl.create_default_context(cafile=args.cacert or None)
        if args.cert:
            context.load_cert_chain(args.cert, args.key)
        ssl_options = pika.SSLOptions(context, server_hostname=url.hostname)
    return pika.ConnectionParameters(
        host=url.hostname or "localhost", port=url.port or (5671 if tls else 5672),
        virtual_host=vhost, credentials=pika.PlainCredentials(user, password),
        ssl_options=ssl_options, heartbeat=30, blocked_connection_timeout=60,
        client_properties={"connection_name": "larder-example-producer-py"})


def redact(url):
    parts = urllib.parse.urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(":" + parts.password + "@", ":***@")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return url


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--url", default="amqp://guest@127.0.0.1:5699",
                   help="amqp:// or amqps:// URL; the vhost defaults to /")
    p.add_argument("--password-env", default="LARDER_AMQP_PASSWORD",
                   help="environment variable holding the password")
    p.add_argument("--exchange", default="features")
    p.add_argument("--exchange-type", default="topic",
                   help="type used when declaring the exchange")
    p.add_argument("--no-declare", action="store_true",
                   help="do not declare the exchange (durable) before publishing")
    p.add_argument("--routing-key", default="{table}.update",
                   help="routing key; {table} is replaced by the table name, and then "
                        "every message holds updates of one table")
    p.add_argument("--cacert", help="amqps: CA certificate file (PEM)")
    p.add_argument("--cert", help="amqps: client certificate file (PEM)")
    p.add_argument("--key", help="amqps: client private key file (PEM)")
    p.add_argument("--count", type=int, default=1000, help="updates to publish")
    p.add_argument("--batch", type=int, default=1,
                   help="updates per message; 1 sends a JSON object, more an array")
    p.add_argument("--rate", type=float, default=0,
                   help="messages per second, 0 for as fast as confirms allow")
    p.add_argument("--seed", type=int, default=0, help="0 picks one and prints it")
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--items", type=int, default=200)
    p.add_argument("--embedding-dims", type=int, default=16)
    p.add_argument("--print", type=int, default=2, dest="print_bodies",
                   help="message bodies to print in full")
    args = p.parse_args()
    if args.batch < 1 or args.count < 0 or args.users < 1 or args.items < 1:
        p.error("--batch, --users and --items must be positive, --count not negative")
    if args.cert and not args.key:
        p.error("--cert needs --key")

    seed = args.seed or random.SystemRandom().randrange(1, 2**32)
    print("producer.py: %s exchange=%s routing_key=%s count=%d batch=%d rate=%g/s seed=%d"
          % (redact(args.url), args.exchange, args.routing_key, args.count, args.batch,
             args.rate, seed), flush=True)
    stream = FeatureStream(args, seed)

    try:
        conn = pika.BlockingConnection(connection_parameters(args))
    except pika.exceptions.AMQPError as e:
        sys.exit("producer.py: error: cannot connect to %s: %r" % (redact(args.url), e))
    ch = conn.channel()
    if not args.no_declare:
        ch.exchange_declare(args.exchange, exchange_type=args.exchange_type, durable=True)
    ch.confirm_delivery()

    props = pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                 app_id="larder-example-producer-py")
    acked = nacked = returned = messages = sent = 0
    start = last_report = time.monotonic()
    next_send = start
    interval = 1.0 / args.rate if args.rate > 0 else 0.0
    open_batches = {}  # routing key -> updates of the message being filled

    def send(routing_key, updates):
        nonlocal acked, nacked, returned, messages, sent, next_send, last_report
        body = json.dumps(updates if args.batch > 1 else updates[0], separators=(",", ":"))
        delay = next_send - time.monotonic()
        if delay > 0:
            conn.sleep(delay)  # services heartbeats while waiting
        next_send += interval
        messages += 1
        sent += len(updates)
        if messages <= args.print_bodies:
            print("producer.py: message %d (%s): %s" % (messages, routing_key, body))
        try:
            ch.basic_publish(args.exchange, routing_key, body.encode(),
                             properties=props, mandatory=True)
            acked += 1
        except pika.exceptions.UnroutableError:
            if returned == 0:
                print("producer.py: message returned unroutable: is a queue bound? "
                      "(the sidecar binds it at start)", file=sys.stderr)
            returned += 1
        except pika.exceptions.NackError:
            nacked += 1
        if time.monotonic() - last_report >= 1:
            last_report = time.monotonic()
            print("producer.py: published %d messages (%d updates), %d acked"
                  % (messages, sent, acked), flush=True)

    try:
        for _ in range(args.count):
            update = stream.next()
            routing_key = args.routing_key.replace("{table}", update["table"])
            batch = open_batches.setdefault(routing_key, [])
            batch.append(update)
            if len(batch) == args.batch:
                send(routing_key, open_batches.pop(routing_key))
        for routing_key, batch in open_batches.items():
            send(routing_key, batch)
    finally:
        if conn.is_open:
            conn.close()
    secs = max(time.monotonic() - start, 1e-9)
    c = stream.counts
    print("producer.py: published %d messages, %d updates (users %d, items %d, of which "
          "deletes %d) in %.2f s: %.0f msg/s, %.0f updates/s"
          % (messages, sent, c["users"], c["items"], c["deletes"], secs,
             messages / secs, sent / secs))
    print("producer.py: confirms: %d acked, %d nacked, %d returned unroutable"
          % (acked, nacked, returned))
    return 0 if acked == messages else 1


if __name__ == "__main__":
    sys.exit(main())
