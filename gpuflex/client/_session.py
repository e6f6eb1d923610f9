"""The core client: binds endpoints to backends, and drives each job through retries, deadlines, polling,
streaming, cost accounting and hooks.

All backend I/O happens on one background thread running an event loop ("the gpuflex loop"); sync callers wait
on futures, async callers await them from their own loop.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import itertools
import logging
import threading
import time
import uuid
import warnings
import weakref
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio
import attrs

from .. import _plugins
from .._budget import BudgetGuard
from .._bundle import build_bundle
from .._config import BackendChoice, resolve_backend
from .._costs import CostMeter, job_cost, tail_cost
from .._envelope import error_summary
from .._job import LOOP_THREAD_NAME, Job
from .._models import Bundle, Cost, EndpointSpec, JobStatus, Price, WorkerInfo
from .._registry import get_registry
from ..backend import Backend, BackendEvents, Call, JobUpdate, Payload, TaskSpawner
from ..errors import (
    ConfigError,
    GpuflexError,
    GpuflexWarning,
    JobFailed,
    PayloadTooLarge,
    QuotaExceeded,
)
from ._budget import BudgetWatch
from ._loop import GuardedTaskGroup, closing, new_loop
from ._loop import updates as job_updates

if TYPE_CHECKING:
    import concurrent.futures
    from collections.abc import Coroutine
    from pathlib import Path

__all__ = ["BoundEndpoint", "Session", "get_session"]

T = TypeVar("T")
logger = logging.getLogger("gpuflex")
_CANCEL_GRACE_SECONDS = 10.0
_GENERIC_REASONS = (None, "", "the function raised")  # what backends say when the outcome says more


class BoundEndpoint(Protocol):
    """What the session needs of an endpoint (``gpuflex.Endpoint`` is the one implementation)."""

    @property
    def name(self) -> str: ...
    @property
    def spec(self) -> EndpointSpec: ...
    @property
    def project_root(self) -> Path: ...


class _HookEvents(BackendEvents):
    def __init__(self, backend_name: str) -> None:
        self.backend_name = backend_name

    def worker_started(self, worker: WorkerInfo) -> None:
        _plugins.call_hook("gpuflex_worker_started", worker=worker, backend=self.backend_name)

    def worker_stopped(self, worker: WorkerInfo, reason: str) -> None:
        _plugins.call_hook("gpuflex_worker_stopped", worker=worker, backend=self.backend_name, reason=reason)

    def worker_output(self, endpoint: str, worker: str, stream: str, text: str) -> None:
        _plugins.call_hook("gpuflex_worker_output", endpoint=endpoint, worker=worker, stream=stream, text=text,
                           backend=self.backend_name)
        super().worker_output(endpoint, worker, stream, text)


@attrs.define
class _Binding:
    spec: EndpointSpec  # after the gpuflex_endpoint_spec hooks
    source: EndpointSpec  # as decorated: a re-imported module (hot reload) brings a new one
    bundle_hash: str | None = None
    lock: anyio.Lock = attrs.field(factory=anyio.Lock)


class Session:
    """Process-wide state: the loop thread, backend instances, deployed bundles, jobs and costs."""

    def __init__(self) -> None:
        self.loop = new_loop()
        self._thread = threading.Thread(target=self._run_loop, name=LOOP_THREAD_NAME, daemon=True)
        self._thread.start()
        self.task_group: TaskSpawner = self.submit(self._start_supervisor()).result()
        self.meter = CostMeter()
        self.budget = BudgetGuard(self.meter)
        self._backends: dict[tuple[str, str], Backend] = {}
        self._bindings: dict[tuple[tuple[str, str], str], _Binding] = {}
        self._bundles: dict[Any, Bundle] = {}
        self._prices: dict[tuple[int, str], Price] = {}
        self._bundle_lock = threading.Lock()
        # jobs still referenced somewhere (by their caller, or while running); results are not kept alive here
        self.jobs: weakref.WeakValueDictionary[str, Job] = weakref.WeakValueDictionary()
        self.accepted = 0  # jobs accepted since the session started
        self._count_lock = threading.Lock()
        self._closed = False
        self._id_prefix = uuid.uuid4().hex[:8]
        self._ids = itertools.count(1)
        self.budget_watch = BudgetWatch(self.budget, self.loop, self.jobs, self._cancel_many)

    async def _start_supervisor(self) -> TaskSpawner:
        started: asyncio.Future[TaskSpawner] = self.loop.create_future()

        async def supervise() -> None:
            async with anyio.create_task_group() as tg:
                started.set_result(GuardedTaskGroup(tg))
                await anyio.sleep_forever()

        self._supervisor = self.loop.create_task(supervise())
        return await started

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.submit(coro).result()

    # -- backends and deploys ------------------------------------------------------------------------------

    def _backend_sync(self, choice: BackendChoice) -> Backend:
        key = choice.key()
        backend = self._backends.get(key)
        if backend is None:
            cls = get_registry().get(choice.name)
            try:
                config = cls.config_cls(**choice.options)
            except (TypeError, ValueError) as exc:  # an unknown option, or a value its validators refuse
                raise ConfigError(f"bad options for the {cls.name} backend: {exc}") from None
            backend = cls(config, events=_HookEvents(cls.name))
            backend.attach(self.task_group)
            self._backends[key] = backend
        return backend

    def install_backend(self, backend: Backend) -> BackendChoice:
        """Use this backend instance for ``gpuflex.use(backend.name)`` (tests, the conformance suite)."""
        choice = BackendChoice(backend.name, {})
        backend.attach(self.task_group)
        self._backends[choice.key()] = backend
        return choice

    async def remove_backend(self, backend: Backend) -> None:
        for key, installed in list(self._backends.items()):
            if installed is backend:
                del self._backends[key]
                for binding_key in [k for k in self._bindings if k[0] == key]:
                    del self._bindings[binding_key]
        await backend.aclose()

    def bundle_for(self, endpoint: BoundEndpoint) -> Bundle:
        root = endpoint.project_root
        with self._bundle_lock:
            bundle = self._bundles.get(root)
            if bundle is None:
                ignores: list[str] = []
                for extra in _plugins.get_plugin_manager().hook.gpuflex_bundle_ignore(root=str(root)):
                    ignores.extend(extra or [])
                bundle = build_bundle(root, extra_ignores=ignores)
                self._bundles[root] = bundle
            return bundle

    def invalidate_bundles(self) -> None:
        """Forget built bundles: the next call of each endpoint rebuilds and redeploys if the code changed."""
        with self._bundle_lock:
            self._bundles.clear()

    def _rebind(self, backend: Backend, key: tuple[str, str], endpoint: BoundEndpoint,
                old: _Binding | None) -> _Binding:
        """First call of an endpoint on a backend, or its decorator ran again (a re-imported module)."""
        if old is not None:
            before, after = old.source.target, endpoint.spec.target
            if (before.module, before.qualname, before.path) != (after.module, after.qualname, after.path):
                raise ConfigError(
                    f"two endpoints are named {endpoint.name!r}: {before.label} and {after.label}; "
                    "give one of them another name (@gpuflex.endpoint(name=...))"
                )
            if old.source == endpoint.spec:
                old.source = endpoint.spec
                return old
        spec = _plugins.call_endpoint_spec(endpoint.spec)
        _check_capabilities(backend, spec)
        binding = _Binding(spec, endpoint.spec)  # a new spec: deploy again on the next call
        self._bindings[(key, endpoint.name)] = binding
        self._prices.pop((id(backend), endpoint.name), None)
        return binding

    async def _bind(self, backend: Backend, key: tuple[str, str], endpoint: BoundEndpoint) -> EndpointSpec:
        binding = self._bindings.get((key, endpoint.name))
        if binding is None or binding.source is not endpoint.spec:
            binding = self._rebind(backend, key, endpoint, binding)
        bundle = self._bundles.get(endpoint.project_root)
        if bundle is None or binding.bundle_hash != bundle.hash:
            # One call at a time, in the order they came (the lock is FIFO): a map's calls then reach the backend
            # in order, as they would not if each waited on a thread of its own (threads return in any order).
            async with binding.lock:
                bundle = self._bundles.get(endpoint.project_root)
                if bundle is None:  # first call, or the code changed: hashing files is blocking work
                    bundle = await anyio.to_thread.run_sync(self.bundle_for, endpoint)
                if binding.bundle_hash != bundle.hash:
                    await backend.deploy(binding.spec, bundle)
                    binding.bundle_hash = bundle.hash
                    _plugins.call_hook("gpuflex_deployed", spec=binding.spec, bundle=bundle, backend=backend.name)
        return binding.spec

    # -- jobs ----------------------------------------------------------------------------------------------

    def spawn(self, endpoint: BoundEndpoint, method: str | None, payload: Payload, *, streaming: bool) -> Job:
        """Accept a job (caller's thread) and start driving it (loop thread)."""
        return self.spawn_many(endpoint, method, [payload], streaming=streaming)[0]

    def spawn_many(
        self, endpoint: BoundEndpoint, method: str | None, payloads: list[Payload], *, streaming: bool = False
    ) -> list[Job]:
        """Accept several jobs of one endpoint with a single hop to the loop thread (``map``)."""
        choice = resolve_backend(endpoint.name, endpoint.spec.backend, endpoint.spec)
        backend = self._backend_sync(choice)
        limit = backend.max_payload_bytes
        for payload in payloads:
            if limit is not None and payload.nbytes > limit:
                raise PayloadTooLarge(payload.nbytes, limit, backend.name)
        jobs = []
        source_root = str(endpoint.project_root)
        for _ in payloads:
            job = Job(f"{self._id_prefix}{next(self._ids):x}", endpoint.name, backend.name, streaming=streaming)
            job._cancel = functools.partial(self._cancel_ref, weakref.ref(job), backend)  # no cycle: see there
            job._submit = self.submit
            job._cancel_many = self.cancel_jobs
            job._source_root = source_root
            self.jobs[job.id] = job
            jobs.append(job)
        with self._count_lock:  # callers on several threads
            self.accepted += len(jobs)
        key = choice.key()
        drives = [(job, payload) for job, payload in zip(jobs, payloads, strict=True)]
        self.loop.call_soon_threadsafe(self._start_drives, drives, backend, key, endpoint, method)
        return jobs

    def _start_drives(self, drives: list[tuple[Job, Payload]], backend: Backend, key: tuple[str, str],
                      endpoint: BoundEndpoint, method: str | None) -> None:
        for job, payload in drives:
            self.loop.create_task(self._drive(job, backend, key, endpoint, method, payload))

    async def _cancel_ref(self, ref: weakref.ref[Job], backend: Backend) -> None:
        """``job._cancel``: through a weak reference, so a finished job (and the result it holds, which may be views
        of shared memory a worker waits to reuse) goes as soon as its caller drops it, not at the next GC."""
        job = ref()
        if job is not None:
            await self._cancel(job, backend)

    async def _cancel(self, job: Job, backend: Backend) -> None:
        job._cancel_requested = True
        handle = job._handle
        if handle is not None and not job.done():
            await backend.cancel(handle)

    def cancel_jobs(self, jobs: list[Job]) -> concurrent.futures.Future[None] | None:
        """Cancel jobs whose caller stopped waiting for them (an interrupted ``map``), with one hop to the loop;
        ``None`` once the session is closed (its backends stopped every job already)."""
        if self._closed or not self.loop.is_running():
            return None
        return self.submit(self._cancel_many(jobs))

    async def _cancel_many(self, jobs: list[Job]) -> None:
        async def cancel_one(job: Job) -> None:
            try:
                if job._cancel is not None:
                    await job._cancel()
            except Exception:  # one backend's failure must not keep the other jobs running
                logger.exception("gpuflex: could not cancel job %s of %r", job.id, job.endpoint)

        async with anyio.create_task_group() as tg:
            for job in jobs:
                if not job.done():
                    tg.start_soon(cancel_one, job)

    async def _drive(
        self, job: Job, backend: Backend, key: tuple[str, str], endpoint: BoundEndpoint, method: str | None,
        payload: Payload,
    ) -> None:
        try:
            spec = await self._bind(backend, key, endpoint)
            refusal = _plugins.call_check_budget(spec, self.meter.total, backend.name) or self.budget.admit(
                job.id, spec.name, self._price(backend, spec))
            if refusal:
                raise QuotaExceeded(refusal)
            _plugins.call_hook("gpuflex_job_submitted", job=job)
            update = self._final_update(job, await self._attempts(job, backend, spec, method, payload))
        except BaseException as exc:
            self.budget.finished(job.id)
            if isinstance(exc, GpuflexError):
                error: BaseException = exc
            else:
                error = JobFailed(f"gpuflex could not run job {job.id}: {type(exc).__name__}: {exc}", job_id=job.id)
                error.__cause__ = exc  # the library's own bug or a backend's: keep its traceback
            job.status, job.reason, job.finished_at = JobStatus.FAILED, str(error), time.time()
            if job.chunks is not None:
                job.chunks.close()
            job._future.set_exception(error)
            _plugins.call_hook("gpuflex_job_finished", job=job)
            if not isinstance(exc, Exception):
                raise
            return
        gpus = spec.gpu.count if spec.gpu else 0
        self.meter.record(spec.name, job.cost, gpus, tail=job.tail, worker=update.worker or job.worker,
                          started_at=update.started_at or job.started_at, finished_at=update.finished_at or time.time())
        self.budget.finished(job.id)  # after recording: never counted as neither spent nor in flight
        job._finish(update)
        _plugins.call_hook("gpuflex_job_finished", job=job)

    @staticmethod
    def _final_update(job: Job, update: JobUpdate) -> JobUpdate:
        """The terminal update as the job records it: a failure with an outcome names the exception in its reason
        (the backend only knows that the call raised), and a job the budget guard stopped failed for that."""
        if job._budget_stop is not None and update.status is not JobStatus.COMPLETED:
            job._refused = True
            return attrs.evolve(update, status=JobStatus.FAILED, outcome=None, reason=job._budget_stop,
                                retryable=False)
        if update.status is JobStatus.FAILED and update.outcome is not None:
            summary = error_summary(update.outcome)
            if summary:
                reason = summary if update.reason in _GENERIC_REASONS else f"{update.reason}: {summary}"
                return attrs.evolve(update, reason=reason)
        return update

    def _price(self, backend: Backend, spec: EndpointSpec) -> Price:
        key = (id(backend), spec.name)
        price = self._prices.get(key)
        if price is None:
            price = self._prices[key] = _plugins.call_price(spec, backend.name, backend.price(spec))
        return price

    async def _attempts(
        self, job: Job, backend: Backend, spec: EndpointSpec, method: str | None, payload: Payload
    ) -> JobUpdate:
        price = self._price(backend, spec)
        attempt = 0
        while True:
            attempt += 1
            job.attempts = attempt
            if job._cancel_requested:
                return JobUpdate(status=JobStatus.CANCELLED, reason="cancelled before it started")
            call = Call(job_id=job.id, attempt=attempt, endpoint=spec, method=method, payload=payload,
                        timeout=spec.timeout)
            handle = await backend.submit(call)
            job._handle = handle
            if job._cancel_requested:
                await backend.cancel(handle)
            update = await self._follow(job, backend, handle, spec)
            if update.started_at is not None or update.billed_seconds is not None:
                started = update.started_at or job.started_at or time.time()
                finished = update.finished_at or time.time()
                seconds = update.billed_seconds if update.billed_seconds is not None else finished - started
                job.cost = job.cost + job_cost(price, run_seconds=max(0.0, seconds))
                job.tail = tail_cost(price)  # billed once per burst, not per call: see CostMeter
            retry = (
                update.status is JobStatus.FAILED
                and attempt <= spec.retries
                and not backend.retries_in_target
                and not job._cancel_requested
                and (job.chunks is None or job.chunks.delivered == 0)
            )
            if not retry:
                return update
            reason = update.reason or "the function raised an exception"
            _plugins.call_hook("gpuflex_job_retrying", job=job, reason=reason)
            job.status = JobStatus.QUEUED

    async def _follow(self, job: Job, backend: Backend, handle: str, spec: EndpointSpec) -> JobUpdate:
        """Follow one attempt to its terminal update, streaming chunks and enforcing the endpoint's timeout."""
        if job.chunks is None:
            final = await self._watch(job, backend, handle, spec)
        else:
            chunks = job.chunks

            async def pump_chunks() -> None:
                async for chunk in backend.stream(handle):
                    chunks.put(chunk)
                    chunks.delivered += 1

            async with anyio.create_task_group() as tg:
                tg.start_soon(pump_chunks)
                final = await self._watch(job, backend, handle, spec)
        if final.worker:
            job.worker = final.worker
        if final.started_at:
            job.started_at = final.started_at
        return final

    # -- shutdown ------------------------------------------------------------------------------------------

    async def _watch(self, job: Job, backend: Backend, handle: str, spec: EndpointSpec) -> JobUpdate:
        scope = anyio.CancelScope() if spec.timeout is not None else contextlib.nullcontext()
        with scope:
            async with closing(job_updates(backend, handle)) as updates:
                async for update in updates:
                    if update.status is JobStatus.RUNNING and job.status is not JobStatus.RUNNING:
                        job.status = JobStatus.RUNNING
                        job.started_at = update.started_at or time.time()
                        job.worker = update.worker
                        self.budget_watch.started(job)
                        _plugins.call_hook("gpuflex_job_started", job=job)
                        if isinstance(scope, anyio.CancelScope) and spec.timeout is not None:
                            scope.deadline = anyio.current_time() + spec.timeout
                    if update.status.is_terminal:
                        return update
        # the deadline passed: stop the job, and report TIMED_OUT unless it completed in the meantime
        final: JobUpdate | None = None
        with anyio.CancelScope(shield=True):
            await backend.cancel(handle)
            with anyio.move_on_after(_CANCEL_GRACE_SECONDS):
                async with closing(job_updates(backend, handle)) as updates:
                    async for update in updates:
                        if update.status.is_terminal:
                            final = update
                            break
        if final is not None and final.status is JobStatus.COMPLETED:
            return final
        return attrs.evolve(
            final or JobUpdate(status=JobStatus.TIMED_OUT), status=JobStatus.TIMED_OUT, outcome=None,
            reason=f"ran past the endpoint's timeout of {spec.timeout} s and was stopped",
        )

    async def aclose_backends(self) -> None:
        backends, self._backends = list(self._backends.values()), {}
        self._bindings.clear()
        for backend in backends:
            with anyio.move_on_after(15):
                await backend.aclose()
        self._supervisor.cancel()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.submit(self.aclose_backends()).result(timeout=20)
        except Exception as exc:  # never let shutdown raise
            warnings.warn(f"gpuflex: backends did not close cleanly: {exc}", GpuflexWarning, stacklevel=1)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


def _check_capabilities(backend: Backend, spec: EndpointSpec) -> None:
    caps = backend.live_capabilities()
    needs = []
    if spec.kind.streams or any(k.streams for k in spec.methods.values()):
        needs.append("streaming")
    if spec.methods:
        needs.append("classes")
    for feature in needs:
        reason = caps.get(feature)
        if reason:
            raise ConfigError(
                f"endpoint {spec.name!r} needs {feature}, which the {backend.name} backend lacks: {reason}"
            )
    if spec.batched and (reason := caps.get("batching")):
        warnings.warn(f"endpoint {spec.name!r} is batched, but the {backend.name} backend does not group calls "
                      f"({reason}): each call runs as a batch of one", GpuflexWarning, stacklevel=2)


_session: Session | None = None
_session_lock = threading.Lock()


def get_session() -> Session:
    global _session
    with _session_lock:
        if _session is None:
            _session = Session()
            atexit.register(_session.close)
        return _session


def shutdown() -> None:
    """Stop every worker this process started and forget all backends (``gpuflex.shutdown()``)."""
    global _session
    with _session_lock:
        session, _session = _session, None
    if session is not None:
        atexit.unregister(session.close)
        session.close()


def total_cost() -> Cost:
    return get_session().meter.total()


