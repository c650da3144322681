#!/usr/bin/python3
"""Publish Larder feature updates as Protocol Buffers messages to RabbitMQ.

Reads updates in the shape of message format v1 (docs/message-format.md),
one JSON object per line, and publishes each as the Protobuf message type a
sidecar with `rabbitmq.format: {type: protobuf, ...}` decodes
(docs/message-format.md, "Protocol Buffers"). No generated code is kept:
the .proto is compiled with protoc into a temporary directory at start, as
the sidecar parses it at start. Needs Debian's python3-protobuf, python3-pika
and protobuf-compiler:

    echo '{"table":"users","key":"user:42","event_time":1714566600123,"fields":{"n":17}}' |
      LARDER_AMQP_PASSWORD=guest examples/protobuf_producer.py \\
        --url amqp://guest@127.0.0.1:5699 --exchange features --routing-key users.42 \\
        --proto tests/sidecar/formats/it_users.proto --message larder.it.UserBatch

--message names the body's type: an update, or a batch wrapper (a message
with one repeated member of the update type), which then carries up to
--batch updates per message. Each JSON object maps onto the update type by
member name (json_format.ParseDict), so a member the .proto lacks is an
error here, before anything is published.

The password comes from the environment variable named by --password-env
(default LARDER_AMQP_PASSWORD), never from the command line. The channel is
in confirm mode and messages are persistent and mandatory: the exit status
is 0 only if the broker acked every message.
"""

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import urllib.parse

try:
    import pika
    from google.protobuf import json_format, symbol_database
except ImportError as e:
    sys.exit("protobuf_producer: needs python3-pika and python3-protobuf (%s); run with /usr/bin/python3" % e)


def load_message_class(proto, full_name, tmp):
    """Compiles `proto` with protoc into `tmp` and returns the class of `full_name`."""
    directory, name = os.path.split(os.path.abspath(proto))
    subprocess.run(["protoc", "-I", directory, "--python_out", tmp, name], check=True)
    sys.path.insert(0, tmp)
    importlib.import_module(name[: -len(".proto")].replace("-", "_") + "_pb2")
    return symbol_database.Default().GetSymbol(full_name)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="amqp://user@host:port/vhost (no password)")
    p.add_argument("--password-env", default="LARDER_AMQP_PASSWORD")
    p.add_argument("--exchange", required=True)
    p.add_argument("--routing-key", required=True)
    p.add_argument("--proto", required=True, help="the .proto file the sidecar's config names")
    p.add_argument("--message", required=True, help="full name of the body's message type")
    p.add_argument("--batch", type=int, default=100, help="updates per message with a batch wrapper")
    p.add_argument("--input", default="-", help="JSON lines of updates (default: stdin)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="larder-proto-") as tmp:
        body_class = load_message_class(args.proto, args.message, tmp)
        fields = body_class.DESCRIPTOR.fields
        wrapper = len(fields) == 1 and fields[0].label == fields[0].LABEL_REPEATED and fields[0].message_type
        per_message = args.batch if wrapper else 1
        update_class = symbol_database.Default().GetSymbol(fields[0].message_type.full_name) if wrapper else body_class

        url = urllib.parse.urlparse(args.url)
        password = os.environ.get(args.password_env) or urllib.parse.unquote(url.password or "")
        params = pika.ConnectionParameters(
            host=url.hostname, port=url.port or 5672,
            virtual_host=urllib.parse.unquote(url.path[1:]) if len(url.path) > 1 else "/",
            credentials=pika.PlainCredentials(urllib.parse.unquote(url.username or "guest"), password))
        conn = pika.BlockingConnection(params)
        channel = conn.channel()
        channel.confirm_delivery()
        props = pika.BasicProperties(content_type="application/x-protobuf", delivery_mode=2)

        source = sys.stdin if args.input == "-" else open(args.input)
        pending, published, updates = [], 0, 0

        def flush():
            nonlocal published
            if not pending:
                return
            if wrapper:
                body = body_class()
                getattr(body, fields[0].name).extend(pending)
            else:
                body = pending[0]
            channel.basic_publish(args.exchange, args.routing_key, body.SerializeToString(), props, mandatory=True)
            published += 1
            pending.clear()

        for n, line in enumerate(source, 1):
            if not line.strip():
                continue
            update = update_class()
            try:
                json_format.ParseDict(json.loads(line), update)
            except (json_format.ParseError, json.JSONDecodeError) as e:
                sys.exit("protobuf_producer: line %d: %s" % (n, e))
            pending.append(update)
            updates += 1
            if len(pending) == per_message:
                flush()
        flush()
        conn.close()
        print("protobuf_producer: published %d updates in %d messages, all confirmed" % (updates, published))


if __name__ == "__main__":
    main()
