"""examples/inference.py runs against a segment with the demo's tables."""

import os
import re
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
    # Written 60 s old; read however much later the example started (OK:
    # younger than --max-age-ms).
    m = re.search(r"u000001 \[OK, age ([\d.]+) s\]", out.stdout)
    assert m and 60.0 <= float(m.group(1)) < 150.0, out.stdout
    assert "top items:" in out.stdout
    assert "i00003 STALE" in out.stdout
