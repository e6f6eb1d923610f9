"""The seed's image pipeline runs unchanged on the pod backend (``--backend pod``, two sshd hosts)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _pod_helpers import known_hosts_of, remote_workers, wait_until  # noqa: E402

from gpuflex.testing import load_module

pipeline = load_module(Path(__file__).resolve().parents[3] / "tests" / "_image_pipeline.py")

pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(pipeline.MISSING), reason=pipeline.SKIP_REASON)]


def test_image_pipeline_runs_unchanged_on_two_pod_hosts(sshd_pair, remote_dir, tmp_path):
    hosts = ", ".join(f'{{ host = "{s.host}", identity_file = "{s.identity_file}" }}' for s in sshd_pair)
    pipeline.run_pipeline("pod", (
        "[backends.pod]\n"
        f"hosts = [{hosts}]\n"
        f'known_hosts = "{known_hosts_of(sshd_pair, tmp_path)}"\n'
        f'remote_dir = "{remote_dir}"\n'
        f'python = "{sys.executable}"\n'
    ), tmp_path, timeout=110)
    wait_until(lambda: not remote_workers(remote_dir), "the hosts to have no workers left after the pipeline ended")
    bundles = list((Path(remote_dir) / "bundles").iterdir())
    assert bundles and all((b / "pipeline.py").is_file() for b in bundles), "the hosts ran code from their bundle"
