"""The image pipeline example runs unchanged with ``--backend serverless`` against the emulator (tiny model, CPU):
three endpoints, a class endpoint with setup(), files written by the caller from what the workers returned."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PIPELINE = ROOT / "examples" / "image_pipeline" / "pipeline.py"
MISSING = [name for name in ("torch", "diffusers", "transformers", "PIL") if importlib.util.find_spec(name) is None]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(MISSING), reason=f"the image pipeline needs {', '.join(MISSING)}"),
]


def test_image_pipeline_runs_unchanged_on_the_emulator(emulator_url, emulator_key, tmp_path):
    from PIL import Image

    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUFLEX_", "HF_", "RUNPOD_"))}
    env.update(RUNPOD_API_BASE_URL=emulator_url, RUNPOD_API_KEY=emulator_key, GPUFLEX_TINY_MODELS="1",
               HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), GPUFLEX_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("PYTHONWARNINGS", None)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(PIPELINE), "cats over London", "--backend", "serverless",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    report = f"exit code {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.returncode == 0, report
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["index"] == str(out / "index.html") and len(summary["images"]) == 3, report
    for name in summary["images"]:
        with Image.open(out / name) as image:
            assert image.size == (576, 256), report
