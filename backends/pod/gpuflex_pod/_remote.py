"""One pod host: what it has (probe), its Python, the files it holds (content-addressed pushes), its
environments, its GPU slots, and its uptime (what it is billed for)."""

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
from gpuflex.gpus import identify_gpu
from gpuflex.worker import PYTHON_VERSION, RUNTIME_MODULE

from ._ssh import SshConnection

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._config import HostSpec, PodConfig

__all__ = ["RUNTIME_PACKAGES", "PushResult", "RemoteHost", "TreeFile", "runtime_tree"]

# The host agent: one script, _remote_tools' functions first, then _remote_service's, then the actions that use
# them. It travels on stdin, as one JSON string, and a short loader runs it: the command line stays one short line
# any login shell takes.
AGENT_SOURCE = "\n".join(
    (Path(__file__).parent / name).read_text().replace("from __future__ import annotations\n", "", 1 if i else 0)
    for i, name in enumerate(("_remote_tools.py", "_remote_service.py", "_remote_agent.py")))
_AGENT_LINE = json.dumps(AGENT_SOURCE).encode() + b"\n"
_LOADER = "import sys, json; exec(compile(json.loads(sys.stdin.buffer.readline()), 'gpuflex-pod-agent', 'exec'))"
# What gpuflex's worker runtime imports besides the standard library (import name -> requirement)
RUNTIME_PACKAGES = {"attrs": "attrs>=23.1", "cloudpickle": "cloudpickle>=3.0", "anyio": "anyio>=4.4",
                    "pluggy": "pluggy>=1.5"}


@attrs.frozen
class TreeFile:
    path: str  # relative, POSIX
    sha256: str
    source: Path
    executable: bool = False

    @property
    def object(self) -> str:
        """Its name in the host's object store (an executable is a copy of its own: links share one mode)."""
        return f"{self.sha256}.x" if self.executable else self.sha256


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
    def __init__(self, spec: HostSpec, config: PodConfig, control_dir: str | None = None) -> None:
        self.spec, self.config = spec, config
        self.ssh = SshConnection(spec, config, control_dir)
        self.facts: dict[str, Any] | None = None
        self.interpreter: dict[str, Any] | None = None  # the Python workers run on: python, executable, importable
        self._probe_lock = anyio.Lock()
        self._push_locks: dict[str, anyio.Lock] = {}
        self._env_lock = anyio.Lock()
        self.pushed: set[str] = set()  # trees known to exist on the host
        self.known_objects: set[str] = set()  # objects known to be in the host's store
        self.envs: dict[str, str] = {}  # environment key -> python path on the host
        # GPU index -> worker id; declared GPUs are known before the first connection (for `gpuflex plan`)
        self.gpu_holders: dict[str, str | None] = {str(i): None for i in range(spec.gpus or 0)}
        self.gpu_models: dict[str, str | None] = {}  # GPU index -> portable model name (None: not in the catalog)
        self.workers: set[str] = set()  # worker ids placed here
        self.down_until = 0.0  # after a failed connection, placement avoids the host until then
        self.start_failures = 0  # workers in a row whose ssh failed (exit 255) before they were ready
        self.lost_pids: set[int] = set()  # workers lost with a connection: killed there before new ones start
        self.reap_lock = anyio.Lock()

    @property
    def label(self) -> str:
        return self.spec.label

    @property
    def explicit_python(self) -> str | None:
        return self.spec.python or self.config.python

    @property
    def root(self) -> str:
        assert self.facts is not None
        return str(self.facts["root"])

    # -- the agent ---------------------------------------------------------------------------------------------

    def _agent_line(self, action: str, *args: str) -> str:
        if self.facts is not None:
            python = shlex.quote(self.facts["agent_python"])
        elif self.explicit_python:
            python = shlex.quote(self.explicit_python)
        else:  # any Python 3 runs the agent; one of the wanted version first spares a search
            names = (f"python{PYTHON_VERSION}", "python3", "python")
            python = '"$(' + " || ".join(f"command -v {n}" for n in names) + ' || echo python3)"'
        words = " ".join(shlex.quote(w) for w in ("-c", _LOADER, action, *args))
        # host_env arrives as the first line of stdin, so its values never sit on a command line
        return f'IFS= read -r gpuflex_env; eval "$gpuflex_env"; exec {python} {words}'

    async def call(self, action: str, *args: str, payload: bytes = b"", timeout: float = 120.0) -> dict[str, Any]:  # noqa: ASYNC109
        """Run one agent action; its answer. ``host_env`` and the agent's source travel on stdin, ahead of
        ``payload``."""
        env = self.config.host_env
        exports = ("export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())) if env else ""
        header = exports.encode() + b"\n" + _AGENT_LINE
        try:
            out = await self.ssh.run(self._agent_line(action, *args), input=header + payload, timeout=timeout)
        except BackendUnavailable as exc:
            if "exit code 127" in str(exc):
                raise BackendUnavailable(
                    f"pod host {self.label}: no Python found to run gpuflex's helper ({exc}); install python3 "
                    "there or set python= to an interpreter on the host") from None
            raise
        lines = out.decode(errors="replace").strip().splitlines()
        try:
            answer: dict[str, Any] = json.loads(lines[-1])
        except (IndexError, ValueError):
            raise BackendUnavailable(f"pod host {self.label}: gpuflex's helper gave no answer to {action!r} "
                                     f"(it printed {out[:300]!r})") from None
        return answer

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
            want = "" if self.explicit_python else PYTHON_VERSION
            facts = await self.call("probe", self.config.remote_dir, ",".join(RUNTIME_PACKAGES), want,
                                    ",".join(self.config.host_env))
            if self.facts is None:  # first contact: GPU slots as discovered or declared
                count = self.spec.gpus if self.spec.gpus is not None else len(facts["gpus"])
                indexes = [g["index"] for g in facts["gpus"]][:count] or [str(i) for i in range(count)]
                self.gpu_holders = {index: None for index in indexes}
                self.gpu_models = {g["index"]: identify_gpu(g["name"], g["memory_mib"]) for g in facts["gpus"]}
            self.facts = facts
            return facts

    async def ensure_python(self, local: str) -> dict[str, Any]:
        """The interpreter workers use: ``python=`` as given (its minor version must be ``local``'s), else one of
        that version found on the host, else one uv installs under ``remote_dir`` (once per host)."""
        facts = await self.probe()
        if self.interpreter is not None:  # chosen (or installed) at an earlier deploy
            return self.interpreter
        if facts["match"] is not None:  # python= as given (checked below), or one of the right version
            self.interpreter = facts["match"]
            self.check_python(local)
            return self.interpreter
        if not self.config.install_python:
            raise VersionMismatch("Python", local, f"{facts['python']} on pod host {self.label} "
                                  f"({facts['executable']}), which has no Python {local}; install it there, set "
                                  "python= to one, or leave install_python on to let gpuflex install it with uv")
        answer = await self.call("python", facts["root"], local, ",".join(RUNTIME_PACKAGES), timeout=1800)
        self.interpreter = answer["match"]
        self.check_python(local)
        return answer["match"]  # type: ignore[no-any-return]

    def check_python(self, local: str) -> None:
        interpreter = self.interpreter or self.facts
        assert interpreter is not None
        remote = interpreter["python"]
        if remote.split(".")[:2] != local.split(".")[:2]:
            raise VersionMismatch("Python", local, f"{remote} on pod host {self.label} ({interpreter['executable']}); "
                                  "set python= to an interpreter of the same minor version there, or leave it unset "
                                  "so gpuflex finds or installs one")

    @property
    def env_prefix(self) -> str:
        """The shell words that apply ``host_env`` before a worker starts (from the file the probe wrote, so no
        value appears on a command line)."""
        path = self.facts.get("env_file") if self.facts else None
        return f". {shlex.quote(path)} && " if path else ""

    # -- files --------------------------------------------------------------------------------------------------

    async def push(self, tree: str, files: tuple[TreeFile, ...]) -> PushResult:
        """Make ``<root>/<tree>`` hold ``files``, sending only the contents the host does not have."""
        begun = time.perf_counter()
        lock = self._push_locks.setdefault(tree, anyio.Lock())
        async with lock:
            path = f"{self.root}/{tree}"
            if tree in self.pushed:
                return PushResult(path, 0, 0, time.perf_counter() - begun)
            manifest = json.dumps({"tree": tree, "files": [{"path": f.path, "sha256": f.sha256,
                                                            "executable": f.executable} for f in files]}).encode()
            answer: dict[str, Any]
            if self.known_objects:  # talked before: send what it lacked or never had, in one round trip
                answer = {"tree_exists": False, "missing": [f.object for f in files
                                                            if f.object not in self.known_objects]}
            else:
                answer = await self.call("missing", self.root, payload=manifest + b"\n")
            sent = sent_bytes = 0
            if not answer["tree_exists"]:
                wanted = set(answer["missing"])
                for _ in range(4):  # again with what the host says it lacks (its store was cleared)
                    archive = await anyio.to_thread.run_sync(_tar_objects, files, wanted)
                    sent, sent_bytes = sent + len(wanted), sent_bytes + len(archive)
                    put = await self.call("put", self.root, payload=manifest + b"\n" + archive, timeout=600)
                    wanted = set(put["missing"])
                    if not wanted:
                        break
                else:
                    raise BackendUnavailable(f"pod host {self.label}: could not store the files of {tree}")
            self.pushed.add(tree)
            self.known_objects.update(f.object for f in files)
            return PushResult(path, sent, sent_bytes, time.perf_counter() - begun)

    # -- environments ---------------------------------------------------------------------------------------------

    async def environment(self, dependencies: tuple[str, ...]) -> str:
        """The interpreter for workers with ``dependencies``: the chosen Python itself when it already has what
        the runtime needs and nothing else is asked for, else a virtual environment per dependency set (uv, which
        gpuflex fetches when the host has none), made once."""
        interpreter = self.interpreter
        assert interpreter is not None, "ensure_python comes first"
        if not dependencies and all(interpreter["importable"].get(name) for name in RUNTIME_PACKAGES):
            return str(interpreter["executable"])
        requirements = sorted({*RUNTIME_PACKAGES.values(), *dependencies})
        key = hashlib.sha256(json.dumps([interpreter["executable"], requirements]).encode()).hexdigest()[:16]
        async with self._env_lock:
            if key not in self.envs:
                answer = await self.call("env", self.root, interpreter["executable"], key,
                                         payload=json.dumps(requirements).encode() + b"\n", timeout=1800)
                self.envs[key] = answer["python"]
            return self.envs[key]

    # -- GPUs and placement ------------------------------------------------------------------------------------

    def take_gpus(self, worker_id: str, count: int, accept: Callable[[str | None], bool]) -> tuple[str, ...] | None:
        """Reserve ``count`` free GPUs whose model ``accept`` takes; ``None`` when there are not enough."""
        free = [index for index, holder in self.gpu_holders.items()
                if holder is None and accept(self.gpu_models.get(index))]
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

    async def kill_groups(self, pids: list[int]) -> list[int]:
        """SIGKILL the process groups of these workers on the host (pids no longer gpuflex workers are spared)."""
        answer = await self.call("kill", self.root, RUNTIME_MODULE, *map(str, pids), timeout=30)
        return list(answer["killed"])


def _tar_objects(files: tuple[TreeFile, ...], wanted: set[str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        done: set[str] = set()
        for file in files:
            if file.object in wanted and file.object not in done:
                done.add(file.object)
                data = file.source.read_bytes()
                info = tarfile.TarInfo(file.object)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
