"""The seed's image pipeline runs unchanged on the Ray backend (``--backend ray``, the test cluster)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _ray_helpers import actor_processes  # noqa: E402

from gpuflex.testing import load_module, wait_until

pipeline = load_module(Path(__file__).resolve().parents[3] / "tests" / "_image_pipeline.py")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(pipeline.MISSING), reason=pipeline.SKIP_REASON)]


def test_image_pipeline_runs_unchanged_on_a_ray_cluster(ray_cluster, tmp_path):
    pipeline.run_pipeline("ray", (
        "[backends.ray]\n"
        f'address = "{ray_cluster.address}"\n'
        "strict_gpu = false\n"  # the cluster has no GPU: the GPU endpoints run on CPU, as on a laptop
    ), tmp_path, timeout=170)
    wait_until(lambda: not actor_processes(ray_cluster.root), "the actors to be gone once the pipeline ended",
               limit=30)
