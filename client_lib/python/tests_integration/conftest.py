"""Fixtures of the tests that need RabbitMQ and a running larder-sidecar:
the broker of scripts/broker.sh (its broker.env variables, which
scripts/test.sh exports) and a sidecar child process per test, with its own
segment, queue and exchange.

CTest runs these (label integration, test python.publish); by hand:
    set -a; . /tmp/<broker dir>/broker.env; set +a
    /usr/bin/python3 -m pytest -q client_lib/python/tests_integration
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
BUILD = os.environ.get("LARDER_BUILD_DIR", os.path.join(REPO, "build"))
SIDECAR = os.environ.get("LARDER_SIDECAR_BINARY", os.path.join(BUILD, "sidecar", "larder-sidecar"))
LARDERCTL = os.environ.get("LARDER_LARDERCTL_BINARY", os.path.join(BUILD, "tools", "larderctl"))

if os.environ.get("LARDER_TEST_INSTALLED") != "1":
    sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("LARDER_BUILD_DIR", BUILD)

import larder  # noqa: E402


def skip_or_fail(reason):
    if os.environ.get("LARDER_TEST_ALLOW_SKIP") == "1":
        pytest.skip(reason)
    pytest.fail(reason + " (LARDER_TEST_ALLOW_SKIP=1 declares this environment lacking it and skips instead)")


@pytest.fixture
def broker():
    url = os.environ.get("LARDER_TEST_AMQP_URL")
    if not url:
        skip_or_fail("LARDER_TEST_AMQP_URL is not set: run through scripts/test.sh (it starts the test broker)")
    password = os.environ.get("LARDER_TEST_AMQP_PASSWORD", "guest")
    # The sidecar's config and publish(config=...) read it from here.
    os.environ["LARDER_IT_PASSWORD"] = password
    return {"url": url, "password": password}


def wait_for(pred, timeout_s, what):
    """Polls pred until it is true; the timeout only bounds a failing test."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for " + what)
        time.sleep(0.02)


class Sidecar:
    """A larder-sidecar child with a config of `tables_yaml` and unique names."""

    def __init__(self, broker, tables_yaml, name):
        self.name = name
        self.dir = tempfile.mkdtemp(prefix="larder-pub-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        os.chmod(self.dir, 0o755)
        self.exchange = name
        self.config = os.path.join(self.dir, "sidecar.yaml")
        with open(self.config, "w") as f:
            f.write("segment:\n  name: %s\n  dir: %s\ntables:\n%s\nrabbitmq:\n  url: %s\n"
                    "  password_env: LARDER_IT_PASSWORD\n  queue: {name: %s, type: quorum}\n"
                    "  bindings: [{exchange: %s, type: topic, routing_keys: [\"#\"]}]\n"
                    "metrics: {listen: \"\"}\n" % (name, self.dir, tables_yaml, broker["url"], name, name))
        self.env = dict(os.environ, LARDER_IT_PASSWORD=broker["password"], LARDER_AMQP_PASSWORD=broker["password"])
        self.log = open(os.path.join(self.dir, "sidecar.log"), "w+")
        self.proc = None

    def start(self):
        if not os.path.exists(SIDECAR):
            pytest.fail("%s is missing: cmake --build %s --target larder-sidecar" % (SIDECAR, BUILD))
        self.proc = subprocess.Popen([SIDECAR, "--config", self.config], stdout=self.log, stderr=subprocess.STDOUT,
                                     env=self.env)

        def connected():
            if self.proc.poll() is not None:
                pytest.fail("larder-sidecar exited %d:\n%s" % (self.proc.returncode, self.log_text()))
            try:
                seg = larder.open(self.name, self.dir)
            except larder.NotFoundError:
                return False
            return seg.info()["connection"] == larder.ConnectionState.CONNECTED

        wait_for(connected, 60, "the sidecar to connect")
        return larder.open(self.name, self.dir)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_text(self):
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()[-4000:]

    def cleanup(self, broker):
        self.stop()
        self.log.close()
        try:
            import pika
            from larder.publish import _parse_url
            u = _parse_url(broker["url"])
            conn = pika.BlockingConnection(pika.ConnectionParameters(
                host=u["host"], port=u["port"], credentials=pika.PlainCredentials(u["user"], broker["password"])))
            ch = conn.channel()
            for q in (self.name, self.name + ".dlq"):
                ch.queue_delete(q)
            for x in (self.name, self.name + ".dlx"):
                ch.exchange_delete(x)
            conn.close()
        except Exception as e:  # cleanup is best effort; the names are unique
            print("cleanup of %s: %s" % (self.name, e))
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def sidecar_factory(broker, request):
    made = []

    def make(tables_yaml):
        name = "pub-%s-%d-%d" % (request.node.name.replace("_", "-")[:30], os.getpid(), len(made))
        s = Sidecar(broker, tables_yaml, name)
        made.append(s)
        return s

    yield make
    for s in made:
        if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
            print("sidecar log of %s:\n%s" % (s.name, s.log_text()))
        s.cleanup(broker)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
