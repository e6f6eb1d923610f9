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


def _ml_image(root: Path) -> Path:
    """An image whose Python has torch, diffusers and transformers (as a user's baked image would; RunPod's
    PyTorch image has torch, the rest would be the endpoints' ``dependencies``): this test's Python, behind a
    wrapper so that it runs as the environment it is. The workers still start through gpuflex's start command,
    and gpuflex's runtime still comes with the jobs."""
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    minor = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for name in (minor, "python3", "python"):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        (bin_dir / name).chmod(0o755)
    (bin_dir / "sh").symlink_to("/bin/sh")
    return root


def test_image_pipeline_runs_unchanged_on_the_emulator(tmp_path):
    from gpuflex_runpod._bootstrap import DEFAULT_CPU_IMAGE, DEFAULT_GPU_IMAGE
    from gpuflex_runpod.emulator import start_emulator
    from PIL import Image

    image = _ml_image(tmp_path / "image")
    key = "pipeline-test-key"
    with start_emulator(api_key=key, log_dir=tmp_path / "logs",
                        images={DEFAULT_GPU_IMAGE: image, DEFAULT_CPU_IMAGE: image}) as url:
        _run_pipeline(url, key, tmp_path, Image)


def _run_pipeline(emulator_url, emulator_key, tmp_path, Image):

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
