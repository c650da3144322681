"""examples/inference.py runs against a segment with the demo's tables."""

import os
import subprocess
import sys

from conftest import REPO, run_writer


def test_inference_example(seg_dir):
    run_writer("write", "--segment", "larder-demo", "--dir", seg_dir, "--schema", "demo", "--rows", 20)
    out = subprocess.run([sys.executable, os.path.join(REPO, "examples", "inference.py"), "--dir", seg_dir,
                          "--users", "3", "--items", "4", "--max-age-ms", "150000"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "u000000: NOT_FOUND" in out.stdout
    assert "u000001 [OK, age 60" in out.stdout and "top items:" in out.stdout
    assert "i00003 STALE" in out.stdout
