"""Fixtures: the C++ writer tool (larder-test-writer) and scratch segment dirs.

Binaries come from $LARDER_BUILD_DIR (default <repo>/build): build them with
    cmake --build build -j2 --target larder_client_shared larder-test-writer
"""

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
BUILD = os.environ.get("LARDER_BUILD_DIR", os.path.join(REPO, "build"))
WRITER = os.path.join(BUILD, "tests", "larder-test-writer")

# Import the package from this checkout unless one is installed and asked for.
if os.environ.get("LARDER_TEST_INSTALLED") != "1":
    sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("LARDER_BUILD_DIR", BUILD)


def run_writer(*args, timeout=60):
    if not os.path.exists(WRITER):
        pytest.fail("%s is missing: cmake --build %s --target larder-test-writer" % (WRITER, BUILD))
    out = subprocess.run([WRITER, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        pytest.fail("larder-test-writer %s failed (%d): %s" % (" ".join(map(str, args)), out.returncode, out.stderr))
    return out.stdout


def skip_or_fail(reason):
    """A test that cannot run here fails, unless LARDER_TEST_ALLOW_SKIP=1
    declares the environment lacking what it needs (CI never sets it)."""
    if os.environ.get("LARDER_TEST_ALLOW_SKIP") == "1":
        pytest.skip(reason)
    pytest.fail(reason + " (LARDER_TEST_ALLOW_SKIP=1 declares this environment lacking it and skips instead)")


@pytest.fixture
def seg_dir():
    """A scratch segment directory on /dev/shm (tmpfs), world-traversable so
    that a test can read it as another user."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    d = tempfile.mkdtemp(prefix="larder-pytest-", dir=base)
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def demo(seg_dir):
    """A segment "demo" with the tables of examples/demo.yaml, 500 rows each, seed 3."""
    run_writer("write", "--segment", "demo", "--dir", seg_dir, "--schema", "demo", "--rows", 500, "--seed", 3)
    return seg_dir
