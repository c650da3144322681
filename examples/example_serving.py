"""What the Python examples share: the paths of this checkout, and serving a
config's tables the way production does, a RabbitMQ broker (the test suite's,
or a throwaway one) and a larder-sidecar consuming it.

    import example_serving          # before `import larder`: puts the checkout's package on sys.path
    serving = example_serving.Serving("sklearn", port=5695)
    try:
        table = serving.start(tables_yaml).table("cards")
        larder.publish(df, ..., config=serving.config, exchange=serving.name)
    finally:
        serving.close()

Without LARDER_TEST_AMQP_URL it starts a broker with scripts/broker.sh on
`port` (TLS on port - 1, distribution on port + 20000) and stops it in close().
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BUILD = os.environ.get("LARDER_BUILD_DIR", os.path.join(REPO, "build"))
SIDECAR = os.environ.get("LARDER_SIDECAR_BINARY", os.path.join(BUILD, "sidecar", "larder-sidecar"))
os.environ.setdefault("LARDER_BUILD_DIR", BUILD)
sys.path.insert(0, os.path.join(REPO, "client_lib", "python"))

import larder  # noqa: E402


def wait_for(pred, timeout_s, what):
    """Polls pred; the timeout only bounds a failure."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("timed out waiting for " + what)
        time.sleep(0.05)


class Serving:
    """A scratch directory (`work`, in /dev/shm where there is one: the
    segment lives there too) for the configs and the segment, then a broker and
    a sidecar; close() stops both and removes `work`. `tag` names the broker's
    node, the segment and the queue, so examples run side by side."""

    def __init__(self, tag, port):
        self.tag = tag
        self.port = port
        self.work = tempfile.mkdtemp(prefix="larder-%s-example-" % tag,
                                     dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        os.chmod(self.work, 0o755)
        self.name = "%s-example-%d" % (tag, os.getpid())
        self.config = os.path.join(self.work, "sidecar.yaml")
        self.broker_dir = None
        self.sidecar = None

    def start(self, tables):
        """Writes the sidecar's config (`tables`: the YAML of its tables),
        starts the sidecar and waits until it is connected to the broker.
        Returns the segment, opened."""
        url = os.environ.get("LARDER_TEST_AMQP_URL")
        password = os.environ.get("LARDER_TEST_AMQP_PASSWORD", "guest")
        if not url:
            self.broker_dir = tempfile.mkdtemp(prefix="larder-%s-broker-" % self.tag)
            subprocess.run(["bash", os.path.join(REPO, "scripts", "broker.sh"), "start", "--dir", self.broker_dir,
                            "--node", "larder_%s_example" % self.tag, "--port", str(self.port),
                            "--tls-port", str(self.port - 1), "--dist-port", str(self.port + 20000)], check=True)
            url = "amqp://guest@127.0.0.1:%d" % self.port
        with open(self.config, "w") as f:
            f.write("segment:\n  name: %s\n  dir: %s\ntables:\n%s\nrabbitmq:\n  url: %s\n"
                    "  password_env: LARDER_EXAMPLE_PASSWORD\n  queue: {name: %s, type: quorum}\n"
                    "  bindings: [{exchange: %s, type: topic, routing_keys: [\"#\"]}]\nmetrics: {listen: \"\"}\n"
                    % (self.name, self.work, tables, url, self.name, self.name))
        os.environ["LARDER_EXAMPLE_PASSWORD"] = password
        log = open(os.path.join(self.work, "sidecar.log"), "w+")
        self.sidecar = subprocess.Popen([SIDECAR, "--config", self.config], stdout=log, stderr=subprocess.STDOUT)

        def connected():
            if self.sidecar.poll() is not None:
                log.seek(0)
                raise RuntimeError("larder-sidecar exited:\n" + log.read()[-3000:])
            try:
                return larder.open(self.name, self.work).info()["connection"] == larder.ConnectionState.CONNECTED
            except larder.NotFoundError:
                return False

        wait_for(connected, 60, "the sidecar to connect")
        return larder.open(self.name, self.work)

    def close(self):
        if self.sidecar is not None and self.sidecar.poll() is None:
            self.sidecar.send_signal(signal.SIGTERM)
            try:
                self.sidecar.wait(30)
            except subprocess.TimeoutExpired:
                self.sidecar.kill()
                self.sidecar.wait()
        if self.broker_dir is not None:
            subprocess.run(["bash", os.path.join(REPO, "scripts", "broker.sh"), "stop", "--dir", self.broker_dir],
                           check=False)
            shutil.rmtree(self.broker_dir, ignore_errors=True)
        shutil.rmtree(self.work, ignore_errors=True)
