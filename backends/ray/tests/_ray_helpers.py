"""A real multi-node Ray cluster on this machine, for the Ray backend's tests (a module of its own: test files import
it by name).

Started once per test session with ``ray.cluster_utils.Cluster``: a head node and one worker node, one CPU each
(an actor holds no CPU while it runs, so the nodes take as many actors as memory allows), small object stores,
token authentication on (the token in a temporary file, never in ``~/.ray``), node failures detected within
about two seconds. Everything Ray writes goes under one temporary directory (``RAY_TMPDIR``), which
:meth:`TestCluster.shutdown` removes after checking that no process of the cluster is left.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from gpuflex_ray import RayConfig

OBJECT_STORE = 80 * 2**20  # Ray's minimum is 75 MiB
SYSTEM_CONFIG = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_failure_threshold": 3,
    "enable_worker_prestart": False,
}
ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}


def processes_under(directory: str) -> list[int]:
    """Pids of the processes that mention ``directory`` in their command line or environment (Ray's, here)."""
    needle = directory.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes() or needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def actor_processes(directory: str) -> list[int]:
    """Pids of the gpuflex actors of the cluster under ``directory`` (Ray titles them ``ray::WorkerActor...``)."""
    pids = []
    for pid in processes_under(directory):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::WorkerActor"):
                pids.append(pid)
    return pids


class TestCluster:
    """The session's cluster: ``address``, ``config(**options)`` for backends, ``add_node``/``remove_node``."""

    __test__ = False

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="gfr-", dir="/tmp")  # short: Ray's socket paths have a length limit
        token = Path(self.root) / "auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        self.env = dict(ENV, RAY_TMPDIR=self.root, RAY_AUTH_TOKEN_PATH=str(token))
        self._saved = {key: os.environ.get(key) for key in self.env}
        os.environ.update(self.env)  # the nodes, the drivers and every subprocess of the tests inherit them
        if "ray" in sys.modules:  # imported before: its settings were read without token authentication
            from ray._private.authentication_test_utils import reset_auth_token_state

            reset_auth_token_state()
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "object_store_memory": OBJECT_STORE, "include_dashboard": False,
            "_system_config": SYSTEM_CONFIG,
        })
        self.worker = self.add_node()

    @property
    def address(self) -> str:
        return str(self.cluster.address)


    def config(self, **options: object) -> RayConfig:
        options.setdefault("strict_gpu", False)  # no GPU here: GPU endpoints run on CPU, as a laptop's would
        return RayConfig(address=self.address, **options)  # type: ignore[arg-type]

    def add_node(self, **resources: object):
        return self.cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE, **resources)

    def remove_node(self, node) -> None:
        self.cluster.remove_node(node, allow_graceful=False)

    def node_of(self, node_id: str):
        for node in [self.cluster.head_node, *self.cluster.worker_nodes]:
            if node.node_id == node_id:
                return node
        raise LookupError(f"no node {node_id} in the test cluster")

    def shutdown(self) -> list[int]:
        """Stop every node; return the pids still alive under the cluster's directory after 20 s (then killed)."""
        self.cluster.shutdown()
        deadline = time.monotonic() + 20
        while processes_under(self.root) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = processes_under(self.root)
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(self.root, ignore_errors=True)
        return left
