"""benchmarks/run.py keeps working (quick mode, no Ray): every section renders a table, none an error."""

from __future__ import annotations

import json
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
                    "Dev server", "Pod backend", "RunPod emulator",
                    "Dynamic batching", "Deployed endpoint on the RunPod emulator"):
        assert heading.lower() in text.lower(), f"section {heading!r} missing from the report"
    assert "Traceback" not in text and "\nFailed:" not in text, text


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_quick_batching_benchmark_measures_both_gpuflex_servers(tmp_path):
    """benchmarks/_batch_bench.py --quick, gpuflex's rows only (Ray Serve takes a minute to start): every request
    of every row answered, the batched server grouped calls and the unbatched one did not."""
    out, raw = tmp_path / "batch.md", tmp_path / "batch.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "_batch_bench.py"), "--quick", "--no-ray-serve", "--device", "cpu",
         "--output", str(out), "--json", str(raw)],
        capture_output=True, text=True, cwd=ROOT, timeout=110,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    res = json.loads(raw.read_text())
    assert len(res["rates"]) == 2 and res["rates"][0] < res["rates"][1]
    for server in ("unbatched", "batched"):
        for row in res["rows"][server]:
            assert row["errors"] == 0, row["error_sample"]
            assert row["sent"] > 0 and row["completed"] + row["unfinished"] == row["sent"], row
    assert {row["max_batch"] for row in res["rows"]["unbatched"]} == {1}
    assert res["rows"]["batched"][-1]["max_batch"] > 1, "the batched server never grouped two calls"
    text = out.read_text()
    assert "Dynamic batching" in text and "| gpuflex, batched |" in text and "Ray Serve: skipped" in text
