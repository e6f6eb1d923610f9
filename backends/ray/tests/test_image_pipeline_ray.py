"""The seed's image pipeline runs unchanged on the Ray backend: the example's files, copied as they are into a
project whose gpuflex.toml names the test cluster, run with ``--backend ray`` in a process of their own."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _ray_helpers import actor_processes  # noqa: E402

from gpuflex.testing import wait_until

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "image_pipeline"
MISSING = [n for n in ("torch", "diffusers", "transformers", "PIL") if importlib.util.find_spec(n) is None]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(MISSING), reason=f"the image pipeline needs {', '.join(MISSING)}"),
]


def test_image_pipeline_runs_unchanged_on_a_ray_cluster(ray_cluster, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
    (project / "gpuflex.toml").write_text(
        "[backends.ray]\n"
        f'address = "{ray_cluster.address}"\n'
        "strict_gpu = false\n"  # the cluster has no GPU: the GPU endpoints run on CPU, as on a laptop
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUFLEX_", "HF_"))}
    env.update(GPUFLEX_TINY_MODELS="1", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    env.pop("PYTHONWARNINGS", None)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "pipeline.py", "cats over London", "--backend", "ray", "--out", str(out)],
                          cwd=project, env=env, capture_output=True, text=True, timeout=170)
    report = f"exit code {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.returncode == 0, report
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["model"].startswith("tiny-random-sd"), report
    assert len(summary["expanded"]) == 3, report
    assert all((out / f"final-{i}.png").stat().st_size > 0 for i in (1, 2, 3)), report
    assert (out / "index.html").is_file(), report
    wait_until(lambda: not actor_processes(ray_cluster.root), "the actors to be gone once the pipeline ended",
               limit=30)
