"""``PodBackend``: endpoints run in gpuflex worker processes on machines reachable over SSH.

Nothing is installed on a host beforehand: the first deploy probes it (Python, GPUs, CPUs), pushes gpuflex's own
runtime and the bundle as content-addressed files, and makes an environment per dependency set when one is
needed. A worker is ``ssh host "cd ... && exec python -m gpuflex.runtime"`` on the host's shared
connection, speaking frames over the SSH channel: no open ports. It leads its own process group and takes it down
when its SSH session ends, so a dropped connection leaves nothing running.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shlex
import shutil
import time
import warnings
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import anyio
import attrs

from gpuflex import Bundle, EndpointSpec, Price, WorkerState
from gpuflex.errors import BackendUnavailable, ConfigError, GpuflexWarning
from gpuflex.gpus import identify_gpu
from gpuflex.worker import OWN_GROUP_ENV, PYTHON_VERSION, RUNTIME_MODULE, endpoint_environ, worker_init
from gpuflex.workerpool import Placement, StartFailed, WorkerPoolBackend, WorkerProcess

from ._config import PodConfig
from ._deploy import PodReleases, http_api
from ._prices import host_hourly_rate
from ._remote import RemoteHost, TreeFile, runtime_tree
from ._ssh import MARKER
from ._ssh_args import client_platform, control_dir

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Mapping

    from gpuflex.backend import DeployedEndpoint, EndpointPlan, Release, Version

T = TypeVar("T")

__all__ = ["HostUsage", "PodBackend"]


@attrs.frozen
class HostUsage:
    """One host's bill so far: connected time at its hourly rate."""

    host: str
    uptime_seconds: float
    usd_per_hour: float
    usd: float
    reconnects: int


class PodBackend(WorkerPoolBackend):
    """Worker processes on SSH hosts (RunPod/Lambda/Vast pods, your own boxes), scaled by the core autoscaler."""

    name: ClassVar[str] = "pod"
    aliases: ClassVar[tuple[str, ...]] = ("ssh",)
    config_cls: ClassVar[type[Any]] = PodConfig
    capabilities: ClassVar[Mapping[str, str | None]] = {
        "gpu": None, "streaming": None, "classes": None, "cancel": None, "kill_worker": None, "scaling": None,
        "releases": None,
    }
    config: PodConfig
    worker_preamble = MARKER  # every remote command prints it first: a login shell's banner is skipped
    capture_stderr = True  # the remote side's stderr (and ssh's own) arrives marked with endpoint and worker

    def __init__(self, config: PodConfig | None = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)  # cheap, no I/O: hosts are checked and reached at the first deploy
        self.reload_in_place = self.config.reload_in_place
        self.preamble_timeout = self.config.start_timeout
        # short, private: control socket paths have a length limit (none on Windows, refused at the first deploy)
        self._control_dir = None if client_platform() == "win32" else control_dir()
        self.hosts = [RemoteHost(spec, self.config, self._control_dir) for spec in self.config.hosts]
        self._remote_pids: dict[str, int] = {}  # worker id -> its pid on its host, once it is ready
        self._workers: dict[str, WorkerProcess] = {}  # worker id -> the worker, while placed
        self._placed: dict[str, RemoteHost] = {}
        self._bundle_paths: dict[tuple[str, str], str] = {}  # (host, bundle hash) -> path there
        self._runtime_paths: dict[str, str] = {}  # host -> runtime path there
        self._pythons: dict[tuple[str, str], str] = {}  # (host, endpoint) -> interpreter there
        self._warned_cpu: set[str] = set()
        self.releases = PodReleases(self)

    # -- deploy: probe, push, environments -------------------------------------------------------------------

    async def _reachable_hosts(self) -> list[RemoteHost]:
        """Probe every host; keep the reachable ones. All unreachable: raise the first host's error."""
        errors: dict[str, Exception] = {}

        async def probe(host: RemoteHost) -> None:
            try:
                await host.probe()
            except BackendUnavailable as exc:
                errors[host.label] = exc

        await _each(self.hosts, probe)
        live = [h for h in self.hosts if h.label not in errors]
        if not live:
            raise next(iter(errors.values()))
        for label, exc in errors.items():
            warnings.warn(f"pod host {label} is left out: {exc}", GpuflexWarning, stacklevel=2)
        return live

    @staticmethod
    def _model_filter(spec: EndpointSpec) -> Callable[[str | None], bool]:
        """Which GPU models (portable names; ``None`` for one the catalog lacks) serve ``spec``."""
        if spec.gpu is None or spec.gpu.is_any:
            return lambda model: True
        choices = set(spec.gpu.choices)
        return lambda model: model in choices

    def _eligible(self, host: RemoteHost, spec: EndpointSpec) -> bool:
        if spec.gpu is None or spec.gpu.is_any or not host.facts or not host.gpu_models:
            return True  # no GPU asked for, any will do, or GPUs declared with gpus= (their model unknown)
        accept = self._model_filter(spec)
        return sum(1 for index in host.gpu_holders if accept(host.gpu_models.get(index))) >= spec.gpu.count

    async def prepare(self, endpoint: EndpointSpec, bundle: Bundle) -> None:
        if not self.hosts:
            raise ConfigError("the pod backend needs at least one host: gpuflex.use('pod', hosts=['user@host:port']) "
                              "or [tool.gpuflex.backends.pod] hosts = [...]")
        if self._control_dir is None:
            control_dir()  # raises: Windows' OpenSSH cannot share a connection
        live = await self._reachable_hosts()
        await _each(live, lambda host: host.ensure_python(PYTHON_VERSION))  # before any push
        any_gpu = any(h.gpu_holders for h in live)
        if endpoint.gpu is not None and not any_gpu:
            why = "; ".join(f"{h.label}: {h.facts['gpu_problem']}" for h in live if h.facts and h.facts["gpu_problem"])
            why = f" ({why})" if why else ""
            if self.config.strict_gpu:
                raise BackendUnavailable(f"endpoint {endpoint.name!r} asks for GPU {endpoint.gpu} but no pod host has "
                                         f"one{why} (strict_gpu=True)")
            if endpoint.name not in self._warned_cpu:
                self._warned_cpu.add(endpoint.name)
                warnings.warn(f"no pod host has a GPU{why}: endpoint {endpoint.name!r} (gpu={endpoint.gpu}) runs on "
                              "CPU", GpuflexWarning, stacklevel=2)
        if endpoint.gpu is not None and any_gpu:
            fits = [h for h in live if self._eligible(h, endpoint) and len(h.gpu_holders) >= endpoint.gpu.count]
            if not fits:
                raise BackendUnavailable(
                    f"endpoint {endpoint.name!r} needs {endpoint.gpu} per worker; no pod host has that: "
                    + "; ".join(_describe_gpus(h) for h in live))
        missing = [name for name in endpoint.secrets if name not in os.environ]
        if missing:
            raise ConfigError(f"endpoint {endpoint.name!r} needs the secret(s) {', '.join(missing)}, which are not "
                              "set in this environment; export them before calling")
        await _each(live, lambda host: self._prepare_host(host, endpoint, bundle))

    async def _prepare_host(self, host: RemoteHost, endpoint: EndpointSpec, bundle: Bundle) -> None:
        tree, files = runtime_tree()
        self._runtime_paths[host.label] = (await host.push(tree, files)).tree
        self._bundle_paths[(host.label, bundle.hash)] = (await self.push_bundle(host, bundle)).tree
        self._pythons[(host.label, endpoint.name)] = await host.environment(endpoint.dependencies)

    async def push_bundle(self, host: RemoteHost, bundle: Bundle) -> Any:
        files = tuple(TreeFile(f.path, f.sha256, bundle.root / f.path, os.access(bundle.root / f.path, os.X_OK))
                      for f in bundle.files)
        return await host.push(f"bundles/{bundle.hash}", files)

    # -- workers ---------------------------------------------------------------------------------------------

    def place_worker(self, spec: EndpointSpec, worker_id: str) -> Placement | None:
        now = time.monotonic()
        candidates = [h for h in self.hosts if h.facts is not None and h.down_until <= now and
                      self._eligible(h, spec) and (h.label, spec.name) in self._pythons]
        candidates.sort(key=lambda h: len(h.workers))  # spread: the least busy host first
        for host in candidates:
            if spec.gpu is not None and host.gpu_holders:
                gpus = host.take_gpus(worker_id, spec.gpu.count, self._model_filter(spec) if host.gpu_models
                                      else lambda model: True)
                if gpus is None:
                    continue
            elif len(host.workers) >= host.cpu_slots:
                continue
            else:
                gpus = ()
            host.workers.add(worker_id)
            self._placed[worker_id] = host
            return Placement(gpus=gpus, host=host.label)
        return None

    def release_worker(self, worker_id: str) -> None:
        host = self._placed.pop(worker_id, None)
        pid = self._remote_pids.pop(worker_id, None)
        worker = self._workers.pop(worker_id, None)
        if host is not None:
            host.release(worker_id)
            host.ssh.release(worker_id)
            if pid is not None and worker is not None and worker.info.state is not WorkerState.STOPPING:
                # gone without being asked to: its process may still run there (a silent network loss leaves it
                # holding its GPUs); it is killed before the host gets another worker
                host.lost_pids.add(pid)
                if self.task_group is not None:
                    self.task_group.start_soon(_quietly, self._reap_lost(host))

    async def _reap_lost(self, host: RemoteHost) -> None:
        """Kill the host's lost workers there (one reaping at a time: a worker start waits for one under way)."""
        async with host.reap_lock:
            pids, host.lost_pids = sorted(host.lost_pids), set()
            if not pids:
                return
            try:
                await host.kill_groups(pids)
            except Exception:
                host.lost_pids.update(pids)  # the host is still out of reach: the next worker start tries again
                raise

    def _host_of(self, worker_id: str) -> RemoteHost:
        return self._placed[worker_id]

    def retry_start(self, worker: WorkerProcess, failure: StartFailed) -> bool:
        """ssh itself failed (exit 255: the connection, not the worker): reconnect and try another worker, up to
        ``reconnect_attempts`` times in a row, before the waiting jobs fail."""
        host = self._placed.get(worker.id)
        if host is None or worker.channel is None or worker.channel.returncode != 255:
            return False
        host.ssh.drop()
        host.start_failures += 1
        return host.start_failures <= self.config.reconnect_attempts

    def worker_ready(self, worker: WorkerProcess) -> None:
        host = self._placed.get(worker.id)
        if host is not None:
            host.start_failures = 0
            if worker.info.pid is not None:
                self._remote_pids[worker.id] = worker.info.pid

    def worker_cwd(self, bundle: Bundle) -> str:
        return os.getcwd()  # the local end is only the ssh client

    async def worker_command(self, spec: EndpointSpec, worker: WorkerProcess) -> tuple[list[str], dict[str, str]]:
        host = self._host_of(worker.id)
        try:
            await host.ssh.ensure(verify=True)  # reconnects with backoff after a dropped connection
        except BackendUnavailable:
            host.down_until = time.monotonic() + 5.0
            raise
        # workers lost with an earlier connection may still run there, holding their GPUs: end them first
        with contextlib.suppress(Exception):
            await self._reap_lost(host)
        self._workers[worker.id] = worker
        python = self._pythons[(host.label, spec.name)]
        runtime = self._runtime_paths[host.label]
        assignments = {"PYTHONPATH": runtime, OWN_GROUP_ENV: "1", "PYTHONUNBUFFERED": "1"}
        if host.gpu_holders:  # nvidia-smi's numbering, which is the PCI bus order CUDA then uses too
            assignments.update(CUDA_DEVICE_ORDER="PCI_BUS_ID", CUDA_VISIBLE_DEVICES=",".join(worker.info.gpus))
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in assignments.items())
        cwd = self._bundle_paths[(host.label, worker.info.bundle_hash)]
        worker.on_kill = functools.partial(self._kill_remote, worker)
        line = (f"{host.env_prefix}cd {shlex.quote(cwd)} && exec env {env} {shlex.quote(python)} "
                f"-m {RUNTIME_MODULE}")
        try:
            argv = await host.ssh.session_for(worker.id, line)  # a connection with a free session (MaxSessions)
        except BackendUnavailable:
            host.down_until = time.monotonic() + 5.0
            raise
        return argv, dict(os.environ)

    def worker_init(self, spec: EndpointSpec, bundle: Bundle, worker: WorkerProcess) -> dict[str, Any]:
        host = self._host_of(worker.id)
        return worker_init(spec, bundle, report_started=False, environ=endpoint_environ(spec),
                           bundle_root=self._bundle_paths[(host.label, bundle.hash)])

    def live_capabilities(self) -> Mapping[str, str | None]:
        caps = dict(self.capabilities)
        if self.hosts and all(h.facts is not None and not h.gpu_holders for h in self.hosts):
            why = "; ".join(f"{h.label}: {h.facts['gpu_problem']}" for h in self.hosts
                            if h.facts and h.facts["gpu_problem"]) or "nvidia-smi found none"
            caps["gpu"] = f"no pod host has a GPU ({why}); GPU endpoints run on CPU"
        return caps

    # -- releases: `gpuflex deploy` leaves a service on each host (see _deploy) -------------------------------

    async def plan_release(self, release: Release) -> list[EndpointPlan]:
        return await self.releases.plan(release)

    async def apply_release(self, release: Release, plans: list[EndpointPlan]) -> list[DeployedEndpoint]:
        return await self.releases.apply(release, plans)

    async def versions(self, env: str, endpoint: str) -> list[Version]:
        return await self.releases.versions(env, endpoint)

    async def rollback(self, env: str, endpoint: str, version: int | None = None) -> Version:
        return await self.releases.rollback(env, endpoint, version)

    async def call_json(self, env: str, endpoint: str, body: Any) -> Any:
        return await self.releases.call_json(env, endpoint, body)

    def http_api(self, deployed: DeployedEndpoint, calls: list[Mapping[str, Any]]) -> dict[str, Any]:
        return http_api(deployed, calls)

    # -- faults, prices, shutdown ----------------------------------------------------------------------------

    def _kill_remote(self, worker: WorkerProcess) -> None:
        """SIGKILL a worker's process group on its host (closing its SSH channel alone would not stop a call
        that is running: signals do not pass through SSH for root logins)."""
        host = self._placed.get(worker.id)
        pid = self._remote_pids.get(worker.id)
        if host is None or pid is None or self.task_group is None:
            return
        self.task_group.start_soon(_quietly, host.kill_groups([pid]))

    def kill_worker_of(self, handle: str) -> int | None:
        """Kill the remote worker running a job, on its host (tests and fault drills): returns its pid there."""
        worker = self.worker_of(handle)
        if worker is None or worker.info.pid is None:
            return None
        self._kill_remote(worker)  # only there: the channel then closes as the process dies ("died")
        return worker.info.pid

    def price(self, endpoint: EndpointSpec) -> Price:
        rates = []
        for host in self.hosts:
            rate = host_hourly_rate(host)
            if rate is None:
                continue
            gpus = len(host.gpu_holders)
            if endpoint.gpu is not None and gpus:
                share = min(1.0, endpoint.gpu.count / gpus)
            else:
                share = 1.0 / max(1, host.cpu_slots)
            rates.append(rate * share)
        if not rates:
            return Price(source="pod hosts with no hourly_rate and no known GPU price")
        hosts = sum(host_hourly_rate(h) or 0.0 for h in self.hosts)
        return Price(usd_per_hour=max(rates), billing="uptime",
                     source=f"pod host hourly rate x this worker's share of the host (highest across hosts); the "
                            f"hosts bill ${hosts:.2f}/hour while they are up, used or not")

    def usage(self) -> list[HostUsage]:
        """What each host has cost so far: the time this backend held a connection to it, at its hourly rate."""
        out = []
        for host in self.hosts:
            rate = host_hourly_rate(host) or 0.0
            seconds = host.ssh.uptime()
            out.append(HostUsage(host.label, seconds, rate, seconds * rate / 3600, host.ssh.reconnects))
        return out

    async def aclose(self) -> None:
        await super().aclose()
        with anyio.CancelScope(shield=True):
            for host in self.hosts:
                await host.ssh.close()
        if self._control_dir is not None:
            shutil.rmtree(self._control_dir, ignore_errors=True)



async def _each(items: Iterable[T], action: Callable[[T], Awaitable[object]]) -> None:
    """Run ``action`` on every item at once; re-raise the first failure itself (not an exception group)."""
    failures: list[BaseException] = []

    async def one(item: T) -> None:
        try:
            await action(item)
        except Exception as exc:  # noqa: BLE001 - collected, re-raised below
            failures.append(exc)

    async with anyio.create_task_group() as tg:
        for item in items:
            tg.start_soon(one, item)
    if failures:
        raise failures[0]


def _describe_gpus(host: RemoteHost) -> str:
    if not host.facts:
        return f"{host.label}: ?"
    names = sorted({g["name"] + ("" if identify_gpu(g["name"], g["memory_mib"]) else " (not in gpuflex's catalog: "
                                                                                  "ask for gpu='any')")
                    for g in host.facts["gpus"]}) or ["no GPU"]
    problem = f" ({host.facts['gpu_problem']})" if host.facts["gpu_problem"] else ""
    return f"{host.label}: {len(host.gpu_holders)} x {', '.join(names)}{problem}"


async def _quietly(work: Awaitable[object]) -> None:
    """Best effort (killing a worker whose host is gone already): the outcome shows up as the channel closing."""
    with contextlib.suppress(Exception):
        await work
