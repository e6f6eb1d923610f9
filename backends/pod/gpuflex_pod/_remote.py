"""One pod host: what it has (probe), the files it holds (content-addressed pushes), its environments, its
GPU slots, and its uptime (what it is billed for)."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import shlex
import tarfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import attrs

import gpuflex
from gpuflex.errors import BackendUnavailable, VersionMismatch

from ._ssh import SshConnection

if TYPE_CHECKING:
    from ._config import HostSpec, PodConfig

__all__ = ["RUNTIME_PACKAGES", "PushResult", "RemoteHost", "TreeFile", "runtime_tree"]

AGENT_SOURCE = (Path(__file__).parent / "_remote_agent.py").read_text()
# What gpuflex's worker runtime imports besides the standard library (import name -> requirement)
RUNTIME_PACKAGES = {"attrs": "attrs>=23.1", "cloudpickle": "cloudpickle>=3.0", "anyio": "anyio>=4.4",
                    "pluggy": "pluggy>=1.5"}


@attrs.frozen
class TreeFile:
    path: str  # relative, POSIX
    sha256: str
    source: Path


@attrs.frozen
class PushResult:
    tree: str  # absolute path on the host
    sent_files: int
    sent_bytes: int
    seconds: float


@functools.lru_cache(maxsize=1)
def runtime_tree() -> tuple[str, tuple[TreeFile, ...]]:
    """gpuflex's own package, pushed to each host so its workers run exactly this version (pure Python)."""
    package = Path(gpuflex.__file__).parent
    files = []
    for path in sorted(package.rglob("*")):
        if "__pycache__" in path.parts or not path.is_file() or path.suffix not in (".py", ".typed"):
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        files.append(TreeFile(f"gpuflex/{path.relative_to(package).as_posix()}", digest, path))
    combined = hashlib.sha256("\n".join(f"{f.path} {f.sha256}" for f in files).encode()).hexdigest()[:16]
    return f"runtime/{gpuflex.__version__}-{combined}", tuple(files)


class RemoteHost:
    def __init__(self, spec: HostSpec, config: PodConfig, control_dir: str) -> None:
        self.spec, self.config = spec, config
        self.ssh = SshConnection(spec, config, control_dir)
        self.facts: dict[str, Any] | None = None
        self._probe_lock = anyio.Lock()
        self._push_locks: dict[str, anyio.Lock] = {}
        self._env_lock = anyio.Lock()
        self.pushed: set[str] = set()  # trees known to exist on the host
        self.known_objects: set[str] = set()  # file contents known to be in the host's object store
        self.envs: dict[str, str] = {}  # environment key -> python path on the host
        # GPU index -> worker id; declared GPUs are known before the first connection (for `gpuflex plan`)
        self.gpu_holders: dict[str, str | None] = {str(i): None for i in range(spec.gpus or 0)}
        self.workers: set[str] = set()  # worker ids placed here
        self.down_until = 0.0  # after a failed connection, placement avoids the host until then
        self.start_failures = 0  # workers in a row whose ssh failed (exit 255) before they were ready

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def python(self) -> str:
        return self.spec.python or self.config.python

    @property
    def root(self) -> str:
        assert self.facts is not None
        return str(self.facts["root"])

    def agent(self, *args: str, python: str | None = None) -> str:
        """A shell line that runs the agent with ``args``."""
        words = [python or self.python, "-c", AGENT_SOURCE, *args]
        return " ".join(shlex.quote(w) for w in words)

    async def probe(self) -> dict[str, Any]:
        """Connect and learn the host (once per connection): Python, GPUs, CPUs, uv, the runtime's packages."""
        async with self._probe_lock:
            if self.facts is not None and self.ssh.alive:
                return self.facts
            try:
                await self.ssh.ensure()
            except BackendUnavailable:
                self.down_until = time.monotonic() + 5.0
                raise
            out = await self.ssh.run(self.agent("probe", self.config.remote_dir, ",".join(RUNTIME_PACKAGES)))
            facts: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
            if self.facts is None:  # first contact: GPU slots as discovered or declared
                count = self.spec.gpus if self.spec.gpus is not None else len(facts["gpus"])
                indexes = [g["index"] for g in facts["gpus"]][:count] or [str(i) for i in range(count)]
                self.gpu_holders = {index: None for index in indexes}
            self.facts = facts
            return facts

    def check_python(self, local: str) -> None:
        assert self.facts is not None
        remote = self.facts["python"]
        if remote.split(".")[:2] != local.split(".")[:2]:
            raise VersionMismatch("Python", local, f"{remote} on pod host {self.label} ({self.facts['executable']}); "
                                  "set python= to an interpreter of the same minor version there")

    # -- files --------------------------------------------------------------------------------------------------

    async def push(self, tree: str, files: tuple[TreeFile, ...]) -> PushResult:
        """Make ``<root>/<tree>`` hold ``files``, sending only the contents the host does not have."""
        begun = time.perf_counter()
        lock = self._push_locks.setdefault(tree, anyio.Lock())
        async with lock:
            path = f"{self.root}/{tree}"
            if tree in self.pushed:
                return PushResult(path, 0, 0, time.perf_counter() - begun)
            manifest = json.dumps({"tree": tree, "files": [{"path": f.path, "sha256": f.sha256} for f in files]})
            answer: dict[str, Any]
            if self.known_objects:  # talked before: send what it lacked or never had, in one round trip
                answer = {"tree_exists": False, "missing": [f.sha256 for f in files
                                                            if f.sha256 not in self.known_objects]}
            else:
                answer = json.loads(await self.ssh.run(self.agent("missing", self.root),
                                                       input=manifest.encode() + b"\n"))
            sent = sent_bytes = 0
            if not answer["tree_exists"]:
                wanted = set(answer["missing"])
                for _ in range(4):  # again with what the host says it lacks (its store was cleared)
                    archive = await anyio.to_thread.run_sync(_tar_objects, files, wanted)
                    sent, sent_bytes = sent + len(wanted), sent_bytes + len(archive)
                    put = json.loads(await self.ssh.run(self.agent("put", self.root),
                                                        input=manifest.encode() + b"\n" + archive, timeout=600))
                    wanted = set(put["missing"])
                    if not wanted:
                        break
                else:
                    raise BackendUnavailable(f"pod host {self.label}: could not store the files of {tree}")
            self.pushed.add(tree)
            self.known_objects.update(f.sha256 for f in files)
            return PushResult(path, sent, sent_bytes, time.perf_counter() - begun)

    # -- environments ---------------------------------------------------------------------------------------------

    async def environment(self, dependencies: tuple[str, ...]) -> str:
        """The interpreter for workers with ``dependencies``: the host's own when it already has what the runtime
        needs and nothing else is asked for, else a virtual environment per dependency set (uv), made once."""
        facts = await self.probe()
        if not dependencies and all(facts["importable"].get(name) for name in RUNTIME_PACKAGES):
            return self.python
        requirements = sorted({*RUNTIME_PACKAGES.values(), *dependencies})
        key = hashlib.sha256(json.dumps([facts["executable"], requirements]).encode()).hexdigest()[:16]
        async with self._env_lock:
            if key in self.envs:
                return self.envs[key]
            env_dir = f"{self.root}/envs/{key}"
            uv = facts["uv"] or f"{self.root}/tools/uv/bin/uv"
            q = shlex.quote
            install_uv = "" if facts["uv"] else (
                f"test -x {q(uv)} || {{ {q(self.python)} -m venv {q(self.root)}/tools/uv && "
                f"{q(self.root)}/tools/uv/bin/pip install -q uv; }}; ")
            script = (
                f"test -f {q(env_dir)}/.ready || {{ {install_uv}"
                f"{q(uv)} venv -q --allow-existing --python {q(facts['executable'])} {q(env_dir)} && "
                f"{q(uv)} pip install -q --python {q(env_dir)}/bin/python {' '.join(q(r) for r in requirements)} && "
                f"touch {q(env_dir)}/.ready; }}"
            )
            await self.ssh.run(script, timeout=1800)
            self.envs[key] = f"{env_dir}/bin/python"
            return self.envs[key]

    # -- GPUs and placement ------------------------------------------------------------------------------------

    def take_gpus(self, worker_id: str, count: int) -> tuple[str, ...] | None:
        free = [index for index, holder in self.gpu_holders.items() if holder is None]
        if len(free) < count:
            return None
        for index in free[:count]:
            self.gpu_holders[index] = worker_id
        return tuple(free[:count])

    def release(self, worker_id: str) -> None:
        self.workers.discard(worker_id)
        for index, holder in self.gpu_holders.items():
            if holder == worker_id:
                self.gpu_holders[index] = None

    @property
    def cpu_slots(self) -> int:
        if self.config.workers_per_host is not None:
            return self.config.workers_per_host
        return int(self.facts["cpus"]) if self.facts else 1

    async def kill_group(self, pid: int) -> None:
        await self.ssh.run(self.agent("kill", str(pid)), timeout=30)


def _tar_objects(files: tuple[TreeFile, ...], wanted: set[str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        done: set[str] = set()
        for file in files:
            if file.sha256 in wanted and file.sha256 not in done:
                done.add(file.sha256)
                data = file.source.read_bytes()
                info = tarfile.TarInfo(file.sha256)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
