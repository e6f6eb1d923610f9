"""The seed's image pipeline runs unchanged on the pod backend: the example's files, copied as they are into a
project whose gpuflex.toml names two sshd hosts, run with ``--backend pod``."""

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
from _pod_helpers import known_hosts_of, remote_workers, wait_until  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "image_pipeline"
MISSING = [n for n in ("torch", "diffusers", "transformers", "PIL") if importlib.util.find_spec(n) is None]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(MISSING), reason=f"the image pipeline needs {', '.join(MISSING)}"),
]


def test_image_pipeline_runs_unchanged_on_two_pod_hosts(sshd_pair, remote_dir, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
    hosts = ", ".join(f'{{ host = "{s.host}", identity_file = "{s.identity_file}" }}' for s in sshd_pair)
    (project / "gpuflex.toml").write_text(
        "[backends.pod]\n"
        f"hosts = [{hosts}]\n"
        f'known_hosts = "{known_hosts_of(sshd_pair, tmp_path)}"\n'
        f'remote_dir = "{remote_dir}"\n'
        f'python = "{sys.executable}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUFLEX_", "HF_"))}
    env.update(GPUFLEX_TINY_MODELS="1", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    env.pop("PYTHONWARNINGS", None)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "pipeline.py", "cats over London", "--backend", "pod", "--out", str(out)],
                          cwd=project, env=env, capture_output=True, text=True, timeout=110)
    report = f"exit code {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    assert done.returncode == 0, report
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["model"].startswith("tiny-random-sd"), report
    assert len(summary["expanded"]) == 3, report
    assert all((out / f"final-{i}.png").stat().st_size > 0 for i in (1, 2, 3)), report
    assert (out / "index.html").is_file(), report
    wait_until(lambda: not remote_workers(remote_dir), "the hosts to have no workers left after the pipeline ended")
    bundles = list((Path(remote_dir) / "bundles").iterdir())
    assert bundles and all((b / "pipeline.py").is_file() for b in bundles), "the hosts ran code from their bundle"
