"""What only a real host shows (``nox -s live``; never in CI): its login shell, its Python and index, its GPUs as its
driver names them, its network. Runs only with ``--run-live`` and ``GPUFLEX_LIVE_SSH_HOSTS``.

* ``GPUFLEX_LIVE_SSH_HOSTS``: comma-separated ``user@host[:port]`` or ssh-config aliases (keys from your agent
  or ssh config);
* ``GPUFLEX_LIVE_SSH_OPTIONS``: optional JSON of further pod options for them, e.g.
  ``{"identity_file": "~/.ssh/id_ed25519", "ssh_config": "~/.ssh/config", "remote_dir": "/workspace/.gpf"}``.

Each check runs in a remote_dir of its own under the given (or default) one, removed at the end, and records its
outcome (with what it saw: GPU names, the Python chosen) in the live report.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from gpuflex_pod import PodBackend, PodConfig

import gpuflex
from gpuflex.client._session import get_session
from gpuflex.gpus import identify_gpu
from gpuflex.testing import backend_in_use

sys.path.insert(0, str(Path(__file__).parent))
import _pod_app as app  # noqa: E402

pytestmark = pytest.mark.live

HOSTS = [h.strip() for h in os.environ.get("GPUFLEX_LIVE_SSH_HOSTS", "").split(",") if h.strip()]
OPTIONS: dict[str, Any] = json.loads(os.environ.get("GPUFLEX_LIVE_SSH_OPTIONS") or "{}")


def _record(check: str, outcome: str, started: float) -> None:
    path = os.environ.get("GPUFLEX_LIVE_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"kind": "check", "backend": "pod (real hosts)", "check": check,
                                  "outcome": outcome[:300], "seconds": round(time.monotonic() - started, 2)}) + "\n")


@pytest.fixture(params=HOSTS or [None], ids=HOSTS or ["no-host"])
def live_host(request):
    if request.param is None:
        pytest.skip("GPUFLEX_LIVE_SSH_HOSTS names no host (see this module's docstring)")
    return request.param


@pytest.fixture
def live_config(live_host, request):
    """A pool of the one host, in a remote_dir of this check's own; the dir is removed afterwards."""
    base = OPTIONS.get("remote_dir", "~/.cache/gpuflex-pod")
    remote_dir = f"{base.rstrip('/')}-live-{uuid.uuid4().hex[:8]}"
    config = PodConfig(**{**OPTIONS, "hosts": [live_host], "remote_dir": remote_dir})
    started = time.monotonic()
    outcome: list[str] = []
    yield config, outcome
    report = getattr(request.node, "rep_call", None)  # kept by conftest's pytest_runtest_makereport
    status = "failed" if report is None or report.failed else "skipped" if report.skipped else "passed"
    _record(request.node.name, status + (f": {outcome[0]}" if outcome else ""), started)
    gpuflex.shutdown()
    backend = PodBackend(config)
    try:
        host = backend.hosts[0]
        get_session().run(host.ssh.run(f"rm -rf {remote_dir}", timeout=120))
    finally:
        get_session().run(backend.aclose())


def test_live_host_answers_through_its_login_shell_with_what_it_has(live_config):
    """Probe: whatever its login shell prints, the host answers; its GPUs are named as the catalog knows them."""
    config, outcome = live_config
    with backend_in_use(lambda: PodBackend(config)) as backend:
        assert app.where()["pid"] > 0
        host = backend.hosts[0]
        facts, interpreter = host.facts, host.interpreter
    names = [f"{g['name']} -> {identify_gpu(g['name'], g['memory_mib'])}" for g in facts["gpus"]]
    outcome.append(f"{facts['platform']}, Python {interpreter['python']} at {interpreter['executable']}, "
                   f"{facts['cpus']} CPUs, GPUs: {', '.join(names) or 'none'}"
                   + (f" ({facts['gpu_problem']})" if facts["gpu_problem"] else ""))
    for gpu in facts["gpus"]:
        assert identify_gpu(gpu["name"], gpu["memory_mib"]) is not None, \
            f"{gpu['name']!r} is not in gpuflex's catalog: add it to gpuflex/gpus.py"


def test_live_gpu_endpoint_sees_exactly_its_gpu(live_config):
    config, outcome = live_config
    with backend_in_use(lambda: PodBackend(config)) as backend:
        app.where()
        if not backend.hosts[0].gpu_holders:
            pytest.skip("the host has no GPU")
        device = app.on_gpu(0.0)
    outcome.append(f"CUDA_VISIBLE_DEVICES={device}")
    assert device in backend.hosts[0].gpu_holders


def test_live_dependencies_build_an_environment_there(live_config):
    """uv (the host's, or fetched from the index) makes an environment from the host's index."""
    config, outcome = live_config
    with backend_in_use(lambda: PodBackend(config)):
        out = app.with_dependency()
    outcome.append(f"six {out['six']} in {out['python']}")
    assert out["six"] == "1.16.0"


def test_live_a_dropped_connection_is_recovered_and_leaves_no_stranded_worker(live_config, tmp_path):
    """The client's end of the connection goes away mid-call: the call is retried on a new connection, and the
    first worker, which the host may still be running, is killed there."""
    config, outcome = live_config
    marker = f"/tmp/gpuflex-live-{uuid.uuid4().hex[:8]}"
    with backend_in_use(lambda: PodBackend(config)) as backend:
        job = app.slow_retry.spawn(20.0, marker)
        deadline = time.monotonic() + 120
        while job.status is not gpuflex.JobStatus.RUNNING and time.monotonic() < deadline:
            time.sleep(0.2)
        host = backend.hosts[0]
        first = next(iter(backend._remote_pids.values()))

        async def drop() -> None:  # the client's end of the connection goes away (on gpuflex's loop)
            host.ssh.drop()

        get_session().run(drop())
        job.result(timeout=300)
        still = get_session().run(host.ssh.run(f"kill -0 {first} 2>/dev/null && echo alive || echo gone; "
                                               f"rm -f {marker}")).decode().strip()
    outcome.append(f"attempts {job.attempts}; first worker {still}")
    assert job.attempts == 2 and still == "gone"


def test_live_close_leaves_no_gpuflex_process_on_the_host(live_config):
    config, outcome = live_config
    with backend_in_use(lambda: PodBackend(config)) as backend:
        app.where()
        host = backend.hosts[0]
        root = host.root
    check = PodBackend(config)
    try:
        session = get_session()
        session.run(check.hosts[0].probe())
        out = session.run(check.hosts[0].ssh.run(f"ps -eo pid,args | grep -F -- '-m gpuflex.runtime' | grep -v grep "
                                                 f"| grep -c {root} || true"))
    finally:
        get_session().run(check.aclose())
    outcome.append(f"workers left: {out.decode().strip()}")
    assert out.decode().strip() == "0"
