"""``WorkerPoolBackend``: the base of backends whose workers are processes started from a command.

The local backend starts ``python -m gpuflex.runtime`` on this machine; the pod backend starts the same
command through ``ssh`` on another one. Both hand the process frames over its stdin/stdout, and both scale with the
core autoscaler: one queue per endpoint, workers started while jobs wait (never above ``max_workers``), kept at
``min_workers``, stopped after ``idle_timeout``. A subclass says *where* a worker runs:

* :meth:`WorkerPoolBackend.place_worker`: which GPUs (and host) a new worker gets, or ``None`` while none are free;
* :meth:`WorkerPoolBackend.worker_command`: the command line and environment that start it;
* :meth:`WorkerPoolBackend.prepare`: checks and set-up before an endpoint's pool exists (environments, uploads).

Hot reload: a redeploy with the same process settings loads the new bundle in the running workers once their
current calls finish (``reload_in_place``); otherwise old workers drain and new ones start.
"""

from __future__ import annotations

import abc
import collections
import functools
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from .._models import JobStatus
from ..backend import Backend, Call, JobUpdate, Payload
from ..errors import BackendUnavailable
from ..runtime._protocol import endpoint_environ, worker_init
from ..runtime._shm import SegmentPool, shm_available
from ..runtime._wire import SHM_MIN_BYTES, export_payload
from ._pool import EndpointPool, Mailbox, Placement, PoolJob, empty_updates
from ._process import StartFailed, WorkerProcess

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from .._models import Bundle, EndpointSpec, WorkerInfo

__all__ = ["EndpointPool", "Placement", "PoolJob", "StartFailed", "WorkerPoolBackend", "WorkerProcess"]


class WorkerPoolBackend(Backend, abc.ABC):
    """A backend whose workers are gpuflex worker processes spoken to in frames (see :mod:`gpuflex.worker`)."""

    #: move large buffers through shared memory (only when the worker shares this machine's memory; Linux)
    shared_memory: bool = False
    #: calls sent ahead into a busy one-call-at-a-time worker's pipe; None adapts (only while calls are short)
    prefetch: int | None = None
    #: a redeploy with unchanged process settings loads new code in the running workers
    reload_in_place: bool = True
    #: bytes the worker command prints before its frames (a remote login shell may print first: skipped)
    worker_preamble: bytes = b""
    #: seconds a command with a ``worker_preamble`` has to print it before its start fails
    preamble_timeout: float = 60.0
    #: the worker process's own stderr (what escapes the runtime's capture: a crash, C libraries, a remote
    #: shell) reaches the caller marked with endpoint and worker, like the output the runtime sends
    capture_stderr: bool = False
    #: the class of this backend's workers: a subclass of ``WorkerProcess`` speaks to workers that are not local
    #: processes (the Ray backend's actors) with the same messages
    worker_class: type[WorkerProcess] = WorkerProcess

    def __init__(self, config: Any = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.pools: dict[str, EndpointPool] = {}
        self.jobs: dict[str, PoolJob] = {}
        self._closed = False
        self._shm_pool: SegmentPool | None = None

    @property
    def shm_pool(self) -> SegmentPool | None:
        """The segments large call buffers are copied into (one pool for all workers), made on first use."""
        if self._shm_pool is None and self.shared_memory and shm_available():
            self._shm_pool = SegmentPool()
        return self._shm_pool

    # -- what a subclass provides ---------------------------------------------------------------------------

    @abc.abstractmethod
    def place_worker(self, spec: EndpointSpec, worker_id: str) -> Placement | None:
        """Reserve room for a new worker of ``spec`` (GPUs, a host slot); ``None`` when there is none now.
        The reservation is given back with :meth:`release_worker` when the worker is gone."""

    def release_worker(self, worker_id: str) -> None:  # noqa: B027 - optional
        """Give back what :meth:`place_worker` reserved for ``worker_id``."""

    def retry_start(self, worker: WorkerProcess, failure: StartFailed) -> bool:
        """A worker failed to start: ``True`` when the cause is passing (a dropped connection being re-made)
        and the jobs waiting should wait for another worker rather than fail with it. Default: never."""
        return False

    def worker_ready(self, worker: WorkerProcess) -> None:  # noqa: B027 - optional
        """A worker started and loaded its endpoint."""

    def worker_idle(self, worker: WorkerProcess) -> None:  # noqa: B027 - optional
        """A worker has no call left to run (it started, finished its last call, or loaded new code). The pool stops
        it after the endpoint's ``idle_timeout`` by itself; override to act sooner (release a host, evict)."""

    def worker_released(self, pool: EndpointPool) -> None:
        """A worker's reservation was given back: endpoints waiting for room (GPUs held by another endpoint's
        workers) may start one now."""
        for other in list(self.pools.values()):
            if other is not pool and other.queue:
                other.kick()

    @abc.abstractmethod
    async def worker_command(self, spec: EndpointSpec, worker: WorkerProcess) -> tuple[list[str], dict[str, str]]:
        """The command line and environment that start ``worker`` (its placement is in ``worker.info``)."""

    def worker_cwd(self, bundle: Bundle) -> str:
        """The directory the command starts in, on this machine."""
        return str(bundle.root)

    def worker_init(self, spec: EndpointSpec, bundle: Bundle, worker: WorkerProcess) -> dict[str, Any]:
        """The ``init``/``reload`` message for ``worker``: where it finds the bundle, and the endpoint's ``env`` and
        ``secrets`` (:func:`gpuflex.worker.endpoint_environ`: in the frame, never on a command line). A job runs as
        soon as it reaches a free slot, so RUNNING is reported at dispatch and the worker need not send ``started``.
        An override that points ``bundle_root`` elsewhere passes ``environ=endpoint_environ(spec)`` too."""
        return worker_init(spec, bundle, report_started=False, environ=endpoint_environ(spec))

    async def prepare(self, endpoint: EndpointSpec, bundle: Bundle) -> None:  # noqa: B027 - optional
        """Checks and set-up before ``endpoint`` gets a pool (or a new bundle): raise to refuse the deploy."""

    # -- Backend ----------------------------------------------------------------------------------------------

    async def deploy(self, endpoint: EndpointSpec, bundle: Bundle) -> None:
        if self._closed:
            raise BackendUnavailable(f"the {self.name} backend is closed")
        await self.prepare(endpoint, bundle)
        old = self.pools.get(endpoint.name)
        pool = EndpointPool(self, endpoint, bundle)
        if old is not None:  # hot reload: running calls finish on the old code, queued ones move over
            pool.queue, old.queue = old.queue, collections.deque()
            # same process settings (env, GPUs, dependencies, concurrency): load the new code in place
            in_place = self.reload_in_place and old.spec.config_hash() == endpoint.config_hash()
            old.retired = True
            for worker in list(old.workers.values()):
                pool.adopt(worker, reload_in_place=in_place and not worker.draining)
            old.workers.clear()
        self.pools[endpoint.name] = pool
        pool.kick()

    async def submit(self, call: Call) -> str:
        pool = self.pools.get(call.endpoint.name)
        if pool is None:
            raise BackendUnavailable(f"endpoint {call.endpoint.name!r} is not deployed on the {self.name} backend")
        handle = f"{call.job_id}-{call.attempt}"
        job = PoolJob(handle, call)
        big = self.shared_memory and any(memoryview(b).nbytes >= SHM_MIN_BYTES for b in call.payload.buffers)
        if big and (segments := self.shm_pool) is not None:  # copying hundreds of MB is blocking: off the loop
            job.shm_pool = segments
            job.wire_payload, job.shm_segments = await anyio.to_thread.run_sync(
                export_payload, call.payload, segments, job.shm_holder)
        if call.endpoint.kind_of(call.method).streams:
            job.chunks = Mailbox()
        self.jobs[handle] = job
        job.forget = functools.partial(self.jobs.pop, handle, None)
        pool.queue.append(job)
        pool.kick()
        return handle

    def _job(self, handle: str) -> PoolJob:
        try:
            return self.jobs[handle]
        except KeyError:
            raise BackendUnavailable(f"no job {handle!r} on the {self.name} backend") from None

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
        if self._shm_pool is not None:
            self._shm_pool.close()

    def worker_of(self, handle: str) -> WorkerProcess | None:
        """The worker running a job, if it runs now."""
        job = self.jobs.get(handle)
        return None if job is None else job.worker

    def kill_worker_of(self, handle: str) -> int | None:
        """Kill the worker running a job (tests and fault drills): returns its pid."""
        worker = self.worker_of(handle)
        if worker is None:
            return None
        worker.kill()
        return worker.info.pid
