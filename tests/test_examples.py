"""The examples run as documented."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.py"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                    reason="examples/quickstart.py needs torch (pip install torch==2.13.0)")
def test_quickstart_runs_every_section(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUFLEX_")}  # the default backend: local
    env["GPUFLEX_CACHE_DIR"] = str(tmp_path / "cache")
    env.pop("PYTHONWARNINGS", None)
    try:
        done = subprocess.run([sys.executable, str(QUICKSTART)], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=110)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"quickstart.py did not finish in {exc.timeout} s; output so far:\n{exc.stdout}\n{exc.stderr}")
    report = f"exit code {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.returncode == 0, report
    out = done.stdout
    assert re.search(r"^backends installed: .*'local'", out, re.M), report
    assert re.search(r"^matmul\(256\) on (cpu|cuda): checksum -?[\d.]+ in [\d.]+ ms$", out, re.M), report
    assert re.search(r"^async: HELLO FROM A WORKER!$", out, re.M), report
    assert re.search(r"^streamed: 0 1 2 3 4\s*$", out, re.M), report
    assert re.search(r"^classes: \[\d, \d, \d\]$", out, re.M), report
    assert re.search(r"^job \w+: COMPLETED, queued [\d.]+ s, ran [\d.]+ s, worker matmul-\w+", out, re.M), report
    assert re.search(r"^map: \[-?[\d.]+, -?[\d.]+, -?[\d.]+\]$", out, re.M), report
    for endpoint, calls in (("matmul", 5), ("shout", 1), ("count_up", 1), ("TinyClassifier", 3)):
        assert re.search(rf"^\s+{endpoint}\s+{calls} calls\s+\$", out, re.M), report
    if shutil.which("nvidia-smi") is None:  # the CPU fallback is announced once per GPU endpoint, on stderr
        assert done.stderr.count("runs on CPU") == 2, report
        assert "'matmul'" in done.stderr and "'TinyClassifier'" in done.stderr, report
    assert "Traceback" not in done.stderr, report
