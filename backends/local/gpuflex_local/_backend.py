"""``LocalBackend``: endpoints run in worker processes on this machine, scaled by the core autoscaler."""

from __future__ import annotations

import collections
import functools
import inspect
import os
import sys
import warnings
from typing import TYPE_CHECKING, Any, ClassVar

import anyio
import attrs

from gpuflex import Bundle, EndpointSpec, JobStatus, Price, WorkerInfo
from gpuflex._progress import status
from gpuflex._wire import SHM_MIN_BYTES, export_payload
from gpuflex.backend import Backend, Call, JobUpdate, Payload
from gpuflex.errors import BackendUnavailable, ConfigError, GpuflexWarning
from gpuflex.worker import worker_command

from ._config import LocalConfig
from ._deps import worker_python
from ._gpus import GpuAllocator, detect_gpus
from ._pool import EndpointPool, LocalJob, Mailbox, empty_updates

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

__all__ = ["LocalBackend"]

def _warn_at(spec: EndpointSpec, message: str) -> None:
    """Warn pointing at the endpoint's definition in the user's code (deploys run on the gpuflex loop thread,
    so a stack level would point inside gpuflex)."""
    filename, lineno = "<gpuflex>", 0
    try:
        obj: Any = sys.modules[spec.target.module]
        for part in spec.target.qualname.split("."):
            obj = getattr(obj, part)
        raw = getattr(obj, "__gpuflex_raw__", obj)
        filename, lineno = inspect.getsourcefile(raw) or filename, inspect.getsourcelines(raw)[1]
    except (KeyError, AttributeError, OSError, TypeError):
        pass
    warnings.warn_explicit(message, GpuflexWarning, filename, lineno, module=spec.target.module)


class LocalBackend(Backend):
    """Worker processes on this machine. Each is pinned to its GPUs with CUDA_VISIBLE_DEVICES when CUDA exists;
    without CUDA, GPU endpoints run on CPU with one warning (or fail, with ``strict_gpu=True``)."""

    name: ClassVar[str] = "local"
    aliases: ClassVar[tuple[str, ...]] = ("local-cuda",)
    config_cls: ClassVar[type[Any]] = LocalConfig
    capabilities: ClassVar[Mapping[str, str | None]] = {
        "gpu": None, "streaming": None, "classes": None, "cancel": None, "kill_worker": None, "scaling": None,
    }
    config: LocalConfig

    def __init__(self, config: LocalConfig | None = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.gpus = GpuAllocator(detect_gpus())
        self.pools: dict[str, EndpointPool] = {}
        self.jobs: dict[str, LocalJob] = {}
        self._warned_cpu: set[str] = set()
        self._closed = False

    def live_capabilities(self) -> Mapping[str, str | None]:
        caps = dict(self.capabilities)
        if not self.gpus.gpus:
            caps["gpu"] = "no CUDA device on this machine (nvidia-smi found none); GPU endpoints run on CPU"
        return caps

    def worker_command(self, spec: EndpointSpec, gpus: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ)
        env.update(spec.env)
        for secret in spec.secrets:
            if secret not in os.environ:
                raise ConfigError(f"endpoint {spec.name!r} needs the secret {secret}, which is not set here")
            env[secret] = os.environ[secret]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus) if gpus else ""
        if not self.gpus.gpus:
            env.pop("CUDA_VISIBLE_DEVICES")
        if self.config.shared_memory:
            env["GPUFLEX_WORKER_SHM"] = "1"
        python = worker_python(spec, self.config)
        return worker_command(python), env

    def _prepare_python(self, endpoint: EndpointSpec) -> str:
        if not self.config.isolate:
            return worker_python(endpoint, self.config)
        with status(f"gpuflex: preparing the environment for {endpoint.name} ({len(endpoint.dependencies)} deps)"):
            return worker_python(endpoint, self.config)

    async def deploy(self, endpoint: EndpointSpec, bundle: Bundle) -> None:
        if self._closed:
            raise BackendUnavailable("the local backend is closed")
        if endpoint.gpu is not None and not self.gpus.gpus:
            if self.config.strict_gpu:
                raise BackendUnavailable(
                    f"endpoint {endpoint.name!r} asks for GPU {endpoint.gpu} but this machine has no CUDA device "
                    "(strict_gpu=True); run it on another backend or drop strict_gpu to use the CPU"
                )
            if endpoint.name not in self._warned_cpu:
                self._warned_cpu.add(endpoint.name)
                _warn_at(endpoint, f"no CUDA device here: endpoint {endpoint.name!r} (gpu={endpoint.gpu}) runs on CPU")
        if endpoint.gpu is not None and self.gpus.gpus and endpoint.gpu.count > len(self.gpus.gpus):
            raise BackendUnavailable(f"endpoint {endpoint.name!r} needs {endpoint.gpu.count} GPUs per worker; "
                                     f"this machine has {len(self.gpus.gpus)}")
        missing = [name for name in endpoint.secrets if name not in os.environ]
        if missing:
            raise ConfigError(f"endpoint {endpoint.name!r} needs the secret(s) {', '.join(missing)}, which are not "
                              "set in this environment; export them before calling")
        await anyio.to_thread.run_sync(self._prepare_python, endpoint)  # build an isolated env up front
        old = self.pools.get(endpoint.name)
        pool = EndpointPool(self, endpoint, bundle)
        if old is not None:  # hot reload: running calls finish on the old code, queued ones move over
            pool.queue, old.queue = old.queue, collections.deque()
            # same process settings (env, GPUs, dependencies, concurrency): load the new code in place
            in_place = self.config.reload_in_place and old.spec.config_hash() == endpoint.config_hash()
            old.retired = True
            for worker in list(old.workers.values()):
                pool.adopt(worker, reload_in_place=in_place and not worker.draining)
            old.workers.clear()
        self.pools[endpoint.name] = pool
        pool.kick()

    async def submit(self, call: Call) -> str:
        pool = self.pools.get(call.endpoint.name)
        if pool is None:
            raise BackendUnavailable(f"endpoint {call.endpoint.name!r} is not deployed on the local backend")
        handle = f"{call.job_id}-{call.attempt}"
        job = LocalJob(handle, call)
        big = self.config.shared_memory and any(memoryview(b).nbytes >= SHM_MIN_BYTES for b in call.payload.buffers)
        if big:  # copying hundreds of MB into /dev/shm is blocking work: keep it off the loop
            job.wire_payload, job.shm_refs = await anyio.to_thread.run_sync(export_payload, call.payload)
        if call.endpoint.kind_of(call.method).streams:
            job.chunks = Mailbox()
        self.jobs[handle] = job
        job.forget = functools.partial(self.jobs.pop, handle, None)
        pool.queue.append(job)
        pool.kick()
        return handle

    def _job(self, handle: str) -> LocalJob:
        try:
            return self.jobs[handle]
        except KeyError:
            raise BackendUnavailable(f"no job {handle!r} on the local backend") from None

    async def status(self, handle: str) -> JobUpdate:
        job = self._job(handle)
        return job.update or JobUpdate(status=job.status)

    def updates(self, handle: str) -> AsyncIterator[JobUpdate]:
        job = self.jobs.get(handle)
        if job is None:  # finished and delivered already: nothing more will happen to it
            return empty_updates()
        return job.updates

    async def stream(self, handle: str) -> AsyncIterator[Payload]:
        job = self._job(handle)
        if job.chunks is None:
            return
        async for chunk in job.chunks:
            yield chunk

    async def cancel(self, handle: str) -> None:
        job = self.jobs.get(handle)
        if job is None or job.status.is_terminal:
            return
        self.pools[job.call.endpoint.name].cancel(job, JobStatus.CANCELLED)

    def price(self, endpoint: EndpointSpec) -> Price:
        if not self.config.hourly_rate:
            return Price(source="local machine (no hourly_rate set)")
        return Price(usd_per_hour=self.config.hourly_rate, billing="uptime", source="local hourly_rate")

    async def scale(self, endpoint: str, *, min_workers: int, max_workers: int) -> None:
        pool = self.pools[endpoint]
        pool.spec = attrs.evolve(pool.spec, min_workers=min_workers, max_workers=max_workers)
        pool.policy = attrs.evolve(pool.policy, min_workers=min_workers, max_workers=max_workers)
        pool.kick()

    async def workers(self) -> list[WorkerInfo]:
        return [attrs.evolve(w.info, active_jobs=len(w.active)) for p in self.pools.values()
                for w in p.workers.values()]

    async def teardown(self, endpoint: str | None = None) -> None:
        names = [endpoint] if endpoint else list(self.pools)
        for name in names:
            pool = self.pools.pop(name, None)
            if pool is None:
                continue
            pool.retired = True
            for job in pool.queue:
                job.push(JobUpdate(status=JobStatus.CANCELLED, reason="the endpoint was torn down"))
            pool.queue.clear()
            async with anyio.create_task_group() as tg:
                for worker in list(pool.workers.values()):
                    tg.start_soon(worker.stop)

    async def aclose(self) -> None:
        self._closed = True
        await self.teardown()

    def kill_worker_of(self, handle: str) -> int | None:
        """Kill the process running a job (tests and fault drills): returns its pid."""
        job = self.jobs.get(handle)
        if job is None or job.worker is None:
            return None
        job.worker.kill()
        return job.worker.info.pid

