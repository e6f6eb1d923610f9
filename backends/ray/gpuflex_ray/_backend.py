"""``RayBackend``: each endpoint is a pool of Ray actors on a cluster you run, sized by gpuflex's autoscaler.

Ray does the cluster's work: it places each actor on a node with the resources the endpoint asks for (GPUs of the
right accelerator type, CPUs, memory), starts its process, and brings node failures and node autoscaling. gpuflex
keeps its own: the queue and the autoscaler of the worker pool (``min_workers``, ``max_workers``,
``idle_timeout``, ``concurrency``), bundles and hot reload, retries, costs, and the worker runtime inside each
actor (:mod:`._actor`).
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import anyio
import attrs

import gpuflex
from gpuflex import Bundle, EndpointSpec, Price
from gpuflex.errors import ConfigError, GpuflexWarning
from gpuflex.gpus import CATALOG
from gpuflex.worker import worker_init
from gpuflex.workerpool import Placement, WorkerPoolBackend, WorkerProcess

from ._bundles import BundleUploads
from ._config import RayConfig
from ._connect import Connection, connect, disconnect, ray_module
from ._prices import gpu_rate
from ._resources import ClusterFacts, Plan, plan_endpoint, ray_types
from ._worker import RayWorker

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["ActorUsage", "RayBackend"]


def shipped_packages() -> list[str]:
    """The package directories ``ship_gpuflex`` sends with the job: this machine's gpuflex and gpuflex_ray."""
    return [str(Path(gpuflex.__file__).parent), str(Path(__file__).parent)]


@attrs.frozen
class ActorUsage:
    """One actor's bill so far: its uptime at its hourly rate (idle time included: its node is held)."""

    worker: str
    endpoint: str
    node: str | None
    uptime_seconds: float
    usd_per_hour: float
    usd: float


@attrs.define
class _Uptime:
    endpoint: str
    node: str | None
    started: float
    usd_per_hour: float
    stopped: float | None = None


class RayBackend(WorkerPoolBackend):
    """Endpoints as pools of Ray actors on a Ray cluster (KubeRay, Anyscale, VMs, or a local one)."""

    name: ClassVar[str] = "ray"
    aliases: ClassVar[tuple[str, ...]] = ()
    config_cls: ClassVar[type[Any]] = RayConfig
    capabilities: ClassVar[Mapping[str, str | None]] = {
        "gpu": None, "streaming": None, "classes": None, "cancel": None, "kill_worker": None, "scaling": None,
        "worker_output": None, "batching": None,
    }
    worker_class = RayWorker
    config: RayConfig

    def __init__(self, config: RayConfig | None = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)  # cheap, no I/O: Ray is imported and reached at the first deploy
        self.reload_in_place = self.config.reload_in_place
        self.prefetch = self.config.prefetch
        self.connection: Connection | None = None
        self.facts: ClusterFacts | None = None
        self._connecting = anyio.Lock()
        self._uploads: BundleUploads | None = None
        self._bundles: dict[str, dict[str, Any]] = {}  # bundle hash -> its description for actors
        self._plans: dict[str, Plan] = {}
        self._warned: set[str] = set()
        self._uptime: dict[str, _Uptime] = {}

    # -- the cluster ------------------------------------------------------------------------------------------

    async def _connect(self) -> Connection:
        async with self._connecting:
            if self.connection is None:
                config = self.config
                ship = shipped_packages() if config.ship_gpuflex else []
                self.connection = await anyio.to_thread.run_sync(
                    connect, config.address, config.namespace, config.init_options, ship)
                self._uploads = BundleUploads(ray_module())
            return self.connection

    def actor_class(self) -> Any:
        """The actor class (importing it imports ray)."""
        from ._actor import WorkerActor

        return WorkerActor

    def runtime_env(self, spec: EndpointSpec) -> dict[str, Any]:
        """The endpoint's runtime environment: the configured one plus its ``dependencies`` through pip (the
        job's, set at ``ray.init``, carries this machine's gpuflex packages with ``ship_gpuflex``)."""
        env = dict(self.config.runtime_env)
        if spec.dependencies:
            pip = env.get("pip") or []
            if isinstance(pip, dict):
                env["pip"] = {**pip, "packages": [*pip.get("packages", []), *spec.dependencies]}
            else:
                env["pip"] = [*pip, *spec.dependencies]
        return env

    def actor_options(self, spec: EndpointSpec, worker_id: str) -> dict[str, Any]:
        """``.options(...)`` of one actor of ``spec``."""
        options: dict[str, Any] = {"name": f"gpuflex-{worker_id}", "runtime_env": self.runtime_env(spec),
                                   "max_concurrency": spec.calls_per_worker}
        options.update(self._plans[spec.name].options)
        options.update(self.config.actor_options)
        return options

    def describe_request(self, options: Mapping[str, Any]) -> str:
        wants = [f"{key}={options[key]}" for key in ("num_cpus", "num_gpus", "accelerator_type", "memory")
                 if options.get(key)]
        have = ""
        if self.facts is not None:
            have = f"; the cluster had {self.facts.gpus:g} GPU(s), types {sorted(self.facts.types) or 'none'}"
        return (", ".join(wants) or "1 CPU to be placed") + have

    def kill_actor(self, actor: Any) -> None:
        with contextlib.suppress(Exception):  # gone already, or the connection with it
            ray_module().kill(actor, no_restart=True)

    # -- WorkerPoolBackend ------------------------------------------------------------------------------------

    async def prepare(self, endpoint: EndpointSpec, bundle: Bundle) -> None:
        missing = [name for name in endpoint.secrets if name not in os.environ]
        if missing:
            raise ConfigError(f"endpoint {endpoint.name!r} needs the secret(s) {', '.join(missing)}, which are not "
                              "set in this environment; export them before calling")
        connection = await self._connect()
        self.facts = await anyio.to_thread.run_sync(
            lambda: ClusterFacts.read(ray_module(), started_here=connection.started_here))
        plan = plan_endpoint(endpoint, self.facts, self.config.strict_gpu)
        if plan.warning and endpoint.name not in self._warned:
            self._warned.add(endpoint.name)
            warnings.warn(plan.warning, GpuflexWarning, stacklevel=2)
        self._plans[endpoint.name] = plan
        if bundle.hash not in self._bundles:
            uploads = self._uploads
            assert uploads is not None
            self._bundles[bundle.hash] = await anyio.to_thread.run_sync(uploads.plan, bundle)

    def place_worker(self, spec: EndpointSpec, worker_id: str) -> Placement | None:
        return Placement(host="ray")  # Ray places the actor; one it cannot place yet waits in Ray's queue

    async def worker_command(self, spec: EndpointSpec, worker: WorkerProcess) -> tuple[list[str], dict[str, str]]:
        address = self.connection.address if self.connection else "?"
        return [f"a Ray actor on {address}"], {}  # no process here: RayWorker.start creates the actor

    def worker_init(self, spec: EndpointSpec, bundle: Bundle, worker: WorkerProcess) -> dict[str, Any]:
        environ = dict(spec.env)
        environ.update({name: os.environ[name] for name in spec.secrets if name in os.environ})
        init = worker_init(spec, bundle, report_started=False, environ=environ)
        init["ray_bundle"] = self._bundles[bundle.hash]  # the actor unpacks it and sets bundle_root
        return init

    def worker_ready(self, worker: WorkerProcess) -> None:
        node = worker.node_id if isinstance(worker, RayWorker) else None
        rate = self.price(worker.pool.spec).usd_per_hour
        self._uptime[worker.id] = _Uptime(worker.info.endpoint, node, time.time(), rate)

    def release_worker(self, worker_id: str) -> None:
        uptime = self._uptime.get(worker_id)
        if uptime is not None and uptime.stopped is None:
            uptime.stopped = time.time()

    def live_capabilities(self) -> Mapping[str, str | None]:
        caps = dict(self.capabilities)
        if self.facts is not None and self.facts.gpus <= 0:
            caps["gpu"] = "no node of the Ray cluster has a GPU"
        return caps

    # -- prices -----------------------------------------------------------------------------------------------

    def price(self, endpoint: EndpointSpec) -> Price:
        plan = self._plans.get(endpoint.name)
        if plan is None:  # not deployed yet: price what it asks for
            plan = plan_endpoint(endpoint, ClusterFacts(1.0, frozenset(), started_here=False), self.config.strict_gpu)
        if not plan.gpus:
            if self.config.cpu_hourly_rate:
                return Price(usd_per_hour=self.config.cpu_hourly_rate, billing="uptime",
                             source="cpu_hourly_rate while the actor runs")
            return Price(source="a Ray actor without a GPU (no cpu_hourly_rate set)")
        models = [plan.model] if plan.model else self._models_present()  # any GPU: the dearest the cluster has
        rates, unknown = [], []
        for model in models:
            found = gpu_rate(model, self.config.gpu_hourly_rates)
            if found is None:
                unknown.append(model)
            else:
                rates.append((found[0], model, found[1]))
        if unknown or not rates:
            return Price(billing="unknown", source=f"no known price for {', '.join(unknown) or 'any GPU'} on Ray: "
                                                   "set gpu_hourly_rates (USD per GPU-hour) to count it")
        rate, model, source = max(rates)
        return Price(usd_per_hour=rate * plan.gpus, billing="uptime",
                     source=f"{plan.gpus} x {model} at ${rate:g}/GPU-hour ({source}) while the actor runs")

    def _models_present(self) -> list[str]:
        types = self.facts.types if self.facts is not None else frozenset()
        return [model for model in CATALOG if types & set(ray_types(model))]

    def usage(self) -> list[ActorUsage]:
        """What each actor has cost so far: its uptime (idle included) at its endpoint's hourly rate."""
        now = time.time()
        out = []
        for worker_id, up in self._uptime.items():
            seconds = (up.stopped or now) - up.started
            out.append(ActorUsage(worker_id, up.endpoint, up.node, seconds, up.usd_per_hour,
                                  seconds * up.usd_per_hour / 3600))
        return out

    # -- the end ----------------------------------------------------------------------------------------------

    async def aclose(self) -> None:
        await super().aclose()  # stops (kills) every actor
        connection, self.connection = self.connection, None
        if connection is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(disconnect, connection)
