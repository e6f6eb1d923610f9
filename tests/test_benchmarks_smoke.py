"""benchmarks/run.py keeps working (quick mode, no Ray): every section renders a table, none an error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_benchmark_run_writes_every_section(tmp_path):
    out = tmp_path / "benchmarks.md"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--no-ray", "--output", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=280,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = out.read_text()
    for heading in ("round trip", ".map", "array to a worker and back", "Cold start", "GPU", "Hot reload",
                    "Dev server", "Pod backend", "RunPod emulator"):
        assert heading.lower() in text.lower(), f"section {heading!r} missing from the report"
    assert "Traceback" not in text and "\nFailed:" not in text, text
