"""The counting behind ``gpuflex.stats()``: a plugin on the job and worker lifecycle hooks (registered by the plugin
manager in every process), and the worker output each backend reports (``gpuflex_worker_output``).

Hooks run on the gpuflex loop thread; :meth:`StatsCollector.snapshot` may be called from any thread. Memory is
bounded: per endpoint a few counters and histograms, the last :data:`RECENT_JOBS` jobs, the workers alive and the
last :data:`STOPPED_WORKERS` stopped ones, and the last :data:`OUTPUT_LINES` lines of each worker.
"""

from __future__ import annotations

import bisect
import collections
import threading
import time
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

from ._models import JobStatus, WorkerState
from ._stats import (
    BATCH_BUCKETS,
    PHASES,
    SECONDS_BUCKETS,
    EndpointStats,
    Histogram,
    JobStats,
    Stats,
    WorkerStats,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._job import Job
    from ._models import Bundle, EndpointSpec, WorkerInfo

__all__ = ["PLUGIN_NAME", "StatsCollector", "collector"]

PLUGIN_NAME = "gpuflex-stats"
RECENT_JOBS = 200
STOPPED_WORKERS = 50
OUTPUT_LINES = 50
BATCH_WINDOW = 0.02  # seconds: calls of one batch finish together, give or take a thread switch (batch_size)
hookimpl = pluggy.HookimplMarker("gpuflex")  # the same marker as gpuflex.hookimpl (no import of the plugin manager)


class _Hist:
    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def freeze(self) -> Histogram:
        total, cumulative = 0, []
        for le, n in zip(self.bounds, self.counts, strict=True):
            total += n
            cumulative.append((le, total))
        return Histogram(buckets=tuple(cumulative), count=self.count, sum=self.sum)


@attrs.define
class _Endpoint:
    name: str
    backend: str
    gpu: str | None = None
    settings: dict[str, Any] = attrs.field(factory=dict)
    max_batch: int | None = None
    jobs: collections.Counter[str] = attrs.field(factory=collections.Counter)
    phases: dict[str, _Hist] = attrs.field(factory=lambda: {p: _Hist(SECONDS_BUCKETS) for p in PHASES})
    cost_usd: float = 0.0
    unpriced: int = 0
    batch: _Hist | None = None


@attrs.define
class _Worker:
    id: str
    endpoint: str
    backend: str
    state: WorkerState | None  # None: the backend reports no lifecycle for it (only its output, or its jobs)
    gpus: tuple[str, ...] = ()
    host: str = ""
    pid: int | None = None
    started_at: float | None = None
    ready_at: float | None = None
    stopped_at: float | None = None
    reason: str | None = None
    active: set[str] = attrs.field(factory=set)
    jobs_done: int = 0
    from_hooks: bool = False


@attrs.define
class _Flight:
    """A job not finished yet: its view is built when someone reads it, not on every hook call."""

    job: Job
    worker: _Worker | None = None
    cold_start: float | None = None
    status: JobStatus | None = None  # QUEUED again while a retry waits (job.status says otherwise until then)
    reason: str | None = None


@attrs.define
class _Batch:
    first_finished: float
    size: int


def _settings(spec: EndpointSpec) -> dict[str, Any]:
    return {"min_workers": spec.min_workers, "max_workers": spec.max_workers, "concurrency": spec.concurrency,
            "max_batch_size": spec.max_batch_size, "idle_timeout": spec.idle_timeout, "timeout": spec.timeout,
            "retries": spec.retries}


class StatsCollector:
    """A plugin: counts jobs, phases, costs, workers and their output (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._endpoints: dict[tuple[str, str], _Endpoint] = {}
        self._workers: dict[str, _Worker] = {}
        self._output: dict[str, collections.deque[tuple[float, str, str]]] = {}
        self._flight: dict[str, _Flight] = {}  # jobs submitted and not finished
        self._done: collections.deque[JobStats] = collections.deque(maxlen=RECENT_JOBS)
        self._batches: dict[tuple[str, str, str], _Batch] = {}
        self._listeners: list[Callable[[], None]] = []

    # -- listeners (the dev server's live page) -----------------------------------------------------------------

    def subscribe(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener()`` (on the gpuflex loop thread: it must be quick) after each change; returns the
        function that unsubscribes it."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def _changed(self) -> None:
        for listener in list(self._listeners):
            listener()

    def _endpoint(self, name: str, backend: str) -> _Endpoint:
        entry = self._endpoints.get((name, backend))
        if entry is None:
            entry = self._endpoints[(name, backend)] = _Endpoint(name, backend)
        return entry

    # -- hooks ---------------------------------------------------------------------------------------------------

    @hookimpl
    def gpuflex_deployed(self, spec: EndpointSpec, bundle: Bundle, backend: str) -> None:
        with self._lock:
            entry = self._endpoint(spec.name, backend)
            entry.gpu = str(spec.gpu) if spec.gpu else None
            entry.settings = {**_settings(spec), "bundle": bundle.hash[:12]}
            entry.max_batch = spec.max_batch_size
            if spec.batched and entry.batch is None:
                entry.batch = _Hist(BATCH_BUCKETS)
        self._changed()

    @hookimpl
    def gpuflex_job_submitted(self, job: Job) -> None:
        with self._lock:
            self._endpoint(job.endpoint, job.backend)
            self._flight[job.id] = _Flight(job)
        self._changed()

    @hookimpl
    def gpuflex_job_started(self, job: Job) -> None:
        with self._lock:
            flight = self._flight.get(job.id)
            if flight is None:
                flight = self._flight[job.id] = _Flight(job)
            worker = self._workers.get(job.worker or "")
            if worker is None and job.worker:
                worker = self._workers[job.worker] = _Worker(job.worker, job.endpoint, job.backend, None)
            flight.worker, flight.status = worker, None
            if worker is not None:
                worker.active.add(job.id)
                if worker.from_hooks:
                    worker.state = WorkerState.BUSY
                    flight.cold_start = self._cold_start(worker, job)
        self._changed()

    @hookimpl
    def gpuflex_job_retrying(self, job: Job, reason: str) -> None:
        with self._lock:
            flight = self._flight.get(job.id)
            if flight is not None:
                self._release(flight)
                flight.worker, flight.status, flight.reason = None, JobStatus.QUEUED, reason
        self._changed()

    @hookimpl
    def gpuflex_job_finished(self, job: Job) -> None:
        with self._lock:
            entry = self._endpoint(job.endpoint, job.backend)
            entry.jobs[job.status.value] += 1
            entry.cost_usd += job.cost.usd
            entry.unpriced += job.cost.rule == "unknown"
            flight = self._flight.pop(job.id, None) or _Flight(job)
            worker = self._release(flight, finished=True)
            view = _view(flight)
            self._done.append(view)
            for phase in PHASES:
                value = getattr(view, phase)
                if value is not None:
                    entry.phases[phase].observe(value)
            if entry.batch is not None and worker is not None and job.finished_at:
                self._batch(entry, worker, job.finished_at)
        self._changed()

    @hookimpl
    def gpuflex_worker_started(self, worker: WorkerInfo, backend: str) -> None:
        with self._lock:
            view = self._workers.get(worker.id)
            if view is None:
                view = self._workers[worker.id] = _Worker(worker.id, worker.endpoint, backend, WorkerState.IDLE)
            view.from_hooks, view.state = True, WorkerState.BUSY if view.active else WorkerState.IDLE
            view.gpus, view.host, view.pid = tuple(worker.gpus), worker.host, worker.pid
            view.started_at, view.ready_at = worker.started_at, time.time()
        self._changed()

    @hookimpl
    def gpuflex_worker_stopped(self, worker: WorkerInfo, backend: str, reason: str) -> None:
        with self._lock:
            view = self._workers.get(worker.id)
            if view is None:
                view = self._workers[worker.id] = _Worker(worker.id, worker.endpoint, backend, None)
            view.from_hooks, view.state, view.stopped_at, view.reason = True, WorkerState.DEAD, time.time(), reason
            stopped = [w for w in self._workers.values() if w.state is WorkerState.DEAD]
            for old in stopped[: max(0, len(stopped) - STOPPED_WORKERS)]:
                del self._workers[old.id]
                self._output.pop(old.id, None)
        self._changed()

    @hookimpl
    def gpuflex_worker_output(self, endpoint: str, worker: str, stream: str, text: str, backend: str) -> None:
        with self._lock:
            lines = self._output.get(worker)
            if lines is None:
                lines = self._output[worker] = collections.deque(maxlen=OUTPUT_LINES)
                if worker not in self._workers:
                    self._workers[worker] = _Worker(worker, endpoint, backend, None)
            lines.append((time.time(), stream, text))
        self._changed()

    # -- helpers (under the lock) ----------------------------------------------------------------------------------

    def _cold_start(self, worker: _Worker, job: Job) -> float:
        """The part of ``job``'s wait spent starting ``worker``: the overlap of the two (a job that came once the
        worker was ready had none)."""
        if worker.ready_at is None or job.started_at is None:
            return 0.0
        began = max(job.submitted_at, worker.started_at or job.submitted_at)
        return max(0.0, min(job.started_at, worker.ready_at) - began)

    def _release(self, flight: _Flight, *, finished: bool = False) -> _Worker | None:
        """Take the job off its worker; returns that worker."""
        worker = flight.worker
        if worker is not None and flight.job.id in worker.active:
            worker.active.discard(flight.job.id)
            worker.jobs_done += finished
            if worker.from_hooks and worker.state is WorkerState.BUSY and not worker.active:
                worker.state = WorkerState.IDLE
        return worker

    def _batch(self, entry: _Endpoint, worker: _Worker, finished_at: float) -> None:
        """Count calls of a batched endpoint that ``worker`` answered together: they finish within
        :data:`BATCH_WINDOW` of each other. A group is complete when it is full, when a call of the worker finishes
        outside its window, or when the worker has no call of the endpoint left running."""
        assert entry.batch is not None
        key = (entry.name, entry.backend, worker.id)
        group = self._batches.pop(key, None)
        limit = entry.max_batch or 1
        if group is not None and abs(finished_at - group.first_finished) <= BATCH_WINDOW and group.size < limit:
            group.size += 1
        else:
            if group is not None:
                entry.batch.observe(group.size)
            group = _Batch(finished_at, 1)
        running = any(self._flight[j].job.endpoint == entry.name for j in worker.active if j in self._flight)
        if group.size >= limit or not running:
            entry.batch.observe(group.size)
        else:
            self._batches[key] = group

    # -- reading -------------------------------------------------------------------------------------------------

    def observe_workers(self, backend: str, infos: list[WorkerInfo]) -> None:
        """Merge a backend's own list of its workers (``Backend.workers()``): workers still starting or stopping,
        which no hook reports, and the states of workers the backend reports only this way."""
        with self._lock:
            before = self._worker_states()
            seen = set()
            for info in infos:
                seen.add(info.id)
                view = self._workers.get(info.id)
                if view is None:
                    view = self._workers[info.id] = _Worker(info.id, info.endpoint, backend, info.state)
                if view.state is not WorkerState.DEAD:
                    view.state = info.state
                view.gpus = tuple(info.gpus) or view.gpus
                view.host, view.pid = info.host or view.host, info.pid or view.pid
                view.started_at = view.started_at or info.started_at or None
            for view in list(self._workers.values()):  # listed before, gone now, and no hook reports on it
                if view.backend == backend and view.id not in seen and not view.from_hooks and view.state \
                        is not None and view.id not in self._output:
                    del self._workers[view.id]
            changed = self._worker_states() != before
        if changed:
            self._changed()

    def _worker_states(self) -> list[tuple[str, WorkerState | None, tuple[str, ...]]]:
        return [(w.id, w.state, w.gpus) for w in self._workers.values()]

    def snapshot(self, *, spent_usd: float | None = None, budget_usd: float | None = None) -> Stats:
        with self._lock:
            workers = [WorkerStats(
                id=w.id, endpoint=w.endpoint, backend=w.backend, state=w.state, gpus=w.gpus, host=w.host, pid=w.pid,
                started_at=w.started_at, ready_at=w.ready_at, stopped_at=w.stopped_at, reason=w.reason,
                active_jobs=len(w.active), jobs_done=w.jobs_done, output=tuple(self._output.get(w.id, ())))
                for w in self._workers.values()]
            flying = [_view(f) for f in self._flight.values()]
            jobs = tuple(sorted([*self._done, *flying], key=lambda j: j.submitted_at)[-RECENT_JOBS:])
            endpoints = []
            for (name, backend), e in sorted(self._endpoints.items()):
                states = collections.Counter(w.state.value for w in workers if w.endpoint == name
                                             and w.backend == backend and w.state not in (None, WorkerState.DEAD))
                flight = collections.Counter(j.status.value for j in flying if j.endpoint == name
                                             and j.backend == backend and not j.status.is_terminal)
                endpoints.append(EndpointStats(
                    endpoint=name, backend=backend, gpu=e.gpu, settings=dict(e.settings), jobs=dict(e.jobs),
                    in_flight=dict(flight), phases={p: h.freeze() for p, h in e.phases.items()},
                    workers=dict(states), cost_usd=e.cost_usd, unpriced_jobs=e.unpriced,
                    batch_size=e.batch.freeze() if e.batch else None))
            spent = sum(e.cost_usd for e in self._endpoints.values()) if spent_usd is None else spent_usd
        return Stats(endpoints=tuple(endpoints), workers=tuple(workers), jobs=jobs, spent_usd=spent,
                     budget_usd=budget_usd, taken_at=time.time())

    def reset(self) -> None:
        """Forget everything counted (tests)."""
        with self._lock:
            self._endpoints.clear()
            self._workers.clear()
            self._output.clear()
            self._flight.clear()
            self._done.clear()
            self._batches.clear()


def _view(flight: _Flight) -> JobStats:
    job, cold = flight.job, flight.cold_start
    status = flight.status or job.status
    queue = job.queue_time
    return JobStats(
        id=job.id, endpoint=job.endpoint, backend=job.backend, status=status, worker=job.worker,
        attempts=job.attempts, submitted_at=job.submitted_at, started_at=job.started_at,
        finished_at=job.finished_at if status.is_terminal else None,
        queued=None if queue is None else max(0.0, queue - min(cold or 0.0, queue)),
        cold_start=None if queue is None or cold is None else min(cold, queue),
        run=job.run_time if status.is_terminal else None, cost_usd=job.cost.usd, billing=job.cost.rule,
        reason=job.reason or flight.reason)


_collector: StatsCollector | None = None
_collector_lock = threading.Lock()


def collector() -> StatsCollector:
    """The process's collector (the plugin manager registers it when it is built)."""
    global _collector
    with _collector_lock:
        if _collector is None:
            _collector = StatsCollector()
        return _collector
