"""The seed's image pipeline run unchanged on another backend: the example's files copied as they are into a
project whose ``gpuflex.toml`` names the backend's test setup, run with ``--backend NAME`` in a process of its own.
Shared by the backends' tests (``backends/*/tests/test_image_pipeline_*.py`` load it with
``gpuflex.testing.load_module``)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "image_pipeline"
MISSING = [n for n in ("torch", "diffusers", "transformers", "PIL") if importlib.util.find_spec(n) is None]
SKIP_REASON = f"the image pipeline needs {', '.join(MISSING)}"


def run_pipeline(backend: str, config: str, tmp_path: Path, *, timeout: float) -> tuple[dict[str, Any], Path]:
    """Run the pipeline with ``--backend backend`` from a project whose ``gpuflex.toml`` holds ``config``; check
    what it wrote (three final images, the page) and return its summary line and output folder."""
    project = tmp_path / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
    (project / "gpuflex.toml").write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUFLEX_", "HF_"))}
    env.update(GPUFLEX_TINY_MODELS="1", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    env.pop("PYTHONWARNINGS", None)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "pipeline.py", "cats over London", "--backend", backend, "--out",
                           str(out)], cwd=project, env=env, capture_output=True, text=True, timeout=timeout)
    report = f"exit code {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.returncode == 0, report
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["model"].startswith("tiny-random-sd"), report
    assert len(summary["expanded"]) == 3, report
    assert all((out / f"final-{i}.png").stat().st_size > 0 for i in (1, 2, 3)), report
    assert (out / "index.html").is_file(), report
    return summary, out
