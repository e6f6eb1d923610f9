"""The queue and the workers of one endpoint of a ``WorkerPoolBackend``, and the per-job mailboxes."""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import anyio
import attrs

from .._models import Bundle, EndpointKind, EndpointSpec, JobStatus, WorkerState
from ..backend import Call, JobUpdate, Payload
from ._autoscaler import ScalePolicy, WorkerView, decide, next_check
from ._process import StartFailed, WorkerProcess

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from ..backend import BackendEvents, TaskSpawner
    from ..runtime._shm import SegmentPool

__all__ = ["EndpointPool", "Mailbox", "Placement", "PoolJob", "PoolOwner", "empty_updates"]

T = TypeVar("T")
AUTO_PREFETCH = 16  # calls sent ahead into a busy worker's pipe while calls are short
AUTO_PREFETCH_BELOW = 0.002  # seconds: the average call time under which prefetching pays


@attrs.frozen
class Placement:
    """Where a new worker runs: its GPUs (as CUDA_VISIBLE_DEVICES spells them) and its host."""

    gpus: tuple[str, ...] = ()
    host: str = "localhost"


class PoolOwner(Protocol):
    """What a pool asks of the backend that owns it (``WorkerPoolBackend`` is the one implementation)."""

    events: BackendEvents
    task_group: TaskSpawner | None
    shared_memory: bool
    prefetch: int | None
    worker_preamble: bytes
    preamble_timeout: float
    capture_stderr: bool
    worker_class: type[WorkerProcess]

    @property
    def shm_pool(self) -> SegmentPool | None: ...
    def place_worker(self, spec: EndpointSpec, worker_id: str) -> Placement | None: ...
    def release_worker(self, worker_id: str) -> None: ...
    def retry_start(self, worker: WorkerProcess, failure: StartFailed) -> bool: ...
    def worker_ready(self, worker: WorkerProcess) -> None: ...
    def worker_idle(self, worker: WorkerProcess) -> None: ...
    def worker_released(self, pool: EndpointPool) -> None: ...
    async def worker_command(self, spec: EndpointSpec, worker: WorkerProcess) -> tuple[list[str], dict[str, str]]: ...
    def worker_cwd(self, bundle: Bundle) -> str: ...
    def worker_init(self, spec: EndpointSpec, bundle: Bundle, worker: WorkerProcess) -> dict[str, Any]: ...


class Mailbox(Generic[T]):
    """An unbounded single-consumer queue on the backend's loop: ``put`` never blocks, iteration ends at close.

    It waits on a bare asyncio future rather than an ``anyio.Event``: one is made per job and per update, and
    anyio's event looks up the running async library each time (a tenth of the loop's time in ``.map``). The
    gpuflex loop is always asyncio (or uvloop).
    """

    def __init__(self) -> None:
        self._items: collections.deque[T] = collections.deque()
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: T) -> None:
        self._items.append(item)
        self._wake()

    def close(self) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> Mailbox[T]:
        return self

    async def __anext__(self) -> T:  # a plain method, not an async generator: nothing left for the GC to close
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._items.popleft()


@attrs.define(eq=False)
class PoolJob:
    handle: str
    call: Call
    status: JobStatus = JobStatus.QUEUED
    worker: WorkerProcess | None = None
    started_at: float | None = None
    update: JobUpdate | None = None
    cancel_status: JobStatus | None = None
    updates: Mailbox[JobUpdate] = attrs.field(factory=Mailbox)
    forget: Callable[[], object] | None = None
    wire_payload: Payload | None = None  # the call's payload with large buffers already in shared memory
    shm_segments: list[str] = attrs.field(factory=list)  # the segments it holds in its backend's pool
    shm_pool: SegmentPool | None = None
    chunks: Mailbox[Payload] | None = None

    @property
    def shm_holder(self) -> str:
        return f"job-{self.handle}"

    def push(self, update: JobUpdate) -> None:
        self.status, self.update = update.status, update
        self.updates.put(update)
        if update.status.is_terminal:
            self.updates.close()
            if self.chunks is not None:
                self.chunks.close()
            if self.shm_pool is not None and self.shm_segments:
                self.shm_pool.release(self.shm_segments, self.shm_holder)  # reused once its workers let go too
                self.shm_segments = []
            if self.forget is not None:
                self.forget()  # the core holds the mailboxes it reads; nothing here keeps the data alive


class EndpointPool:
    """The queue and the workers of one endpoint (for its current bundle, plus draining ones from before)."""

    def __init__(self, backend: PoolOwner, spec: EndpointSpec, bundle: Bundle) -> None:
        self.backend, self.spec, self.bundle = backend, spec, bundle
        self.queue: collections.deque[PoolJob] = collections.deque()
        self.workers: dict[str, WorkerProcess] = {}
        self.policy = ScalePolicy.from_spec(spec)
        self._timer_armed_for: float | None = None
        self.retired = False
        sync_one_at_a_time = (spec.concurrency == 1 and not spec.batched
                              and spec.kind in (EndpointKind.FUNCTION, EndpointKind.GENERATOR))
        # None: adapt (prefetch only while calls are short, see _adapt_prefetch); a number: fixed
        self.auto_prefetch = sync_one_at_a_time and backend.prefetch is None
        self.prefetch = (backend.prefetch or 0) if sync_one_at_a_time else 0
        self.mean_call_seconds: float | None = None

    # -- scaling -------------------------------------------------------------------------------------------

    def kick(self) -> None:
        """Dispatch queued jobs to free workers; scale when jobs still wait or the pool is below its minimum."""
        if self.retired:
            return  # replaced by a redeploy or torn down: its workers belong to the new pool or are stopping
        self._dispatch()
        alive = sum(1 for w in self.workers.values() if not w.draining and w.info.state is not WorkerState.DEAD)
        if (self.queue and alive < self.policy.max_workers) or alive < self.policy.min_workers:
            self.scale()
        elif self._timer_armed_for is None and any(w.idle_since is not None for w in self.workers.values()):
            self._arm_timer(time.monotonic() + self.policy.idle_timeout)

    def scale(self) -> None:
        """Start or stop workers as the autoscaler decides, and arm a timer for the next idle expiry."""
        if self.retired:
            return
        current = [w for w in self.workers.values() if not w.draining]
        views = [WorkerView(id=w.id, state=w.info.state, active=len(w.active),
                            idle_since=w.idle_since if not w.active else None) for w in current]
        now = time.monotonic()
        decision = decide(self.policy, queued=len(self.queue), workers=views, now=now)
        tg = self.backend.task_group
        assert tg is not None, "the core attaches a task group before deploy"
        for _ in range(decision.start):
            worker_id = f"{self.spec.name}-{uuid.uuid4().hex[:8]}"
            placement = self.backend.place_worker(self.spec, worker_id)
            if placement is None:
                break  # every device (or host slot) is held: the queue waits for one to free up
            worker = self.backend.worker_class(worker_id, self.spec.name, self.bundle.hash, placement.gpus,
                                               concurrency=self.spec.calls_per_worker,
                                               use_shm=self.backend.shared_memory, prefetch=self.prefetch,
                                               host=placement.host)
            worker.shm_pool = self.backend.shm_pool
            self.workers[worker_id] = worker
            tg.start_soon(self._run_worker, worker)
        for worker_id in decision.stop:
            tg.start_soon(self.workers[worker_id].stop)
        wake = next_check(self.policy, views, now)
        if wake is not None:
            self._arm_timer(wake)

    def _arm_timer(self, when: float) -> None:
        if self._timer_armed_for is not None and self._timer_armed_for <= when:
            return  # an earlier wake-up is pending; it re-arms for later expiries
        self._timer_armed_for = when
        tg = self.backend.task_group
        assert tg is not None
        tg.start_soon(self._wake_at, when)

    async def _wake_at(self, when: float) -> None:
        await anyio.sleep(max(0.0, when - time.monotonic()) + 0.01)
        if self._timer_armed_for != when:
            return  # superseded by an earlier timer
        self._timer_armed_for = None
        self._dispatch()
        self.scale()

    def _dispatch(self) -> None:
        """Give queued jobs to workers: free slots first, then (sync workers) one call prefetched into a busy
        worker's pipe, so it starts the next call without a round trip."""
        outgoing: dict[WorkerProcess, list[tuple[Any, ...]]] = {}
        while self.queue:
            worker, best = None, (0, 0)
            for candidate in self.workers.values():
                room = (candidate.free_slots, candidate.pipeline_room)
                if room > best:
                    worker, best = candidate, room
            if worker is None or best[1] <= 0:
                break
            if best[0] == 0 and best[1] < worker.prefetch_batch and len(self.queue) >= worker.prefetch_batch:
                break  # top up a busy worker's pipe in batches: one write carries several calls
            starts_now = best[0] > 0
            job = self.queue.popleft()
            job.worker = worker
            worker.active[job.handle] = job
            worker.info.state, worker.idle_since = WorkerState.BUSY, None
            outgoing.setdefault(worker, []).append(
                ("call", job.handle, job.call.method, job.wire_payload or job.call.payload)
            )
            if starts_now:
                self._started(job, worker)
        for worker, messages in outgoing.items():
            worker.send_many(messages)

    def _started(self, job: PoolJob, worker: WorkerProcess) -> None:
        job.started_at = time.time()
        job.push(JobUpdate(status=JobStatus.RUNNING, worker=worker.id, started_at=job.started_at))

    # -- a worker's life ---------------------------------------------------------------------------------

    def init_spec(self, worker: WorkerProcess) -> dict[str, Any]:
        """What a worker needs to load this pool's endpoint from its bundle."""
        # a job runs as soon as it reaches a free slot: RUNNING is pushed at dispatch, no "started" frame needed
        return self.backend.worker_init(self.spec, self.bundle, worker)

    async def _run_worker(self, worker: WorkerProcess) -> None:
        worker.pool = self
        command = ["python"]
        try:
            command, env = await self.backend.worker_command(self.spec, worker)
            await worker.start(command, env, self.backend.worker_cwd(self.bundle), self.init_spec(worker),
                               route_frame, preamble=self.backend.worker_preamble,
                               preamble_timeout=self.backend.preamble_timeout,
                               capture_stderr=self.backend.capture_stderr)
        except StartFailed as exc:
            if self.backend.retry_start(worker, exc):  # a passing fault (a connection to re-establish)
                worker.pool._worker_gone(worker, exc.reason)  # the queue stays; kick() starts another
            else:
                worker.pool._worker_gone(worker, exc.reason, start_failure=exc)
            return
        except Exception as exc:  # never let one worker's failure take the backend's task group down
            reason = f"could not start {command[0]}: {type(exc).__name__}: {exc}"
            worker.pool._worker_gone(worker, reason, start_failure=StartFailed(reason))
            return
        self.backend.worker_ready(worker)
        self.backend.events.worker_started(worker.info)
        if worker.draining:  # a redeploy with new settings came while it started
            await worker.stop()
        worker.pool.kick()
        if not worker.active and worker.info.state is WorkerState.IDLE:
            self.backend.worker_idle(worker)
        how = await worker.wait_closed()
        worker.pool._worker_gone(worker, how)  # the pool that holds it now (a reload may have moved it)

    # -- hot reload in place --------------------------------------------------------------------------------

    def adopt(self, worker: WorkerProcess, *, reload_in_place: bool) -> None:
        """Take over a worker of the endpoint's previous deploy. With ``reload_in_place`` it loads the new
        bundle in its running process once its current calls finish (heavy imports like torch stay loaded);
        otherwise it drains and stops."""
        self.workers[worker.id] = worker
        worker.pool = self
        if reload_in_place and worker.info.state in (WorkerState.IDLE, WorkerState.BUSY):
            worker.reload_pending = True
            self._maybe_reload(worker)
        else:
            worker.draining = True
            if not worker.active:
                tg = self.backend.task_group
                assert tg is not None
                tg.start_soon(worker.stop)

    def _maybe_reload(self, worker: WorkerProcess) -> None:
        if worker.reload_pending and not worker.active:
            worker.reload_pending = False
            worker.info.state = WorkerState.STARTING
            worker.reload_started = time.monotonic()
            worker.send(("reload", self.init_spec(worker)))

    def _on_frame(self, worker: WorkerProcess, frame: tuple[Any, ...]) -> None:
        kind = frame[0]
        if kind == "output":
            self.backend.events.worker_output(self.spec.name, worker.id, frame[1], frame[2])
            return
        if kind == "ready":  # a reload in place finished: the worker now runs this pool's bundle
            worker.info.state, worker.idle_since = WorkerState.IDLE, time.monotonic()
            worker.info.bundle_hash = self.bundle.hash
            self.kick()
            if not worker.active:
                self.backend.worker_idle(worker)
            return
        if kind == "fatal":  # the new code does not load: replace the process (a fresh start reports why)
            worker.kill()
            return
        handle = frame[1]
        job = worker.active.get(handle)
        if job is None:
            return
        if kind == "started":
            job.started_at = time.time()
            if job.cancel_status is None:
                job.push(JobUpdate(status=JobStatus.RUNNING, worker=worker.id, started_at=job.started_at))
        elif kind == "chunk":
            if job.chunks is not None and job.cancel_status is None:
                job.chunks.put(frame[2])
        elif kind == "done":
            _, _, status, outcome = frame
            del worker.active[handle]
            worker.info.jobs_done += 1
            if not worker.active:
                worker.info.state, worker.idle_since = WorkerState.IDLE, time.monotonic()
            if not job.status.is_terminal:
                self._finish(job, worker, status, outcome)
            if self.auto_prefetch and job.started_at is not None:
                self._adapt_prefetch(time.time() - job.started_at)
            # a sync worker runs the calls in its pipe in order: the next one has started now
            waiting = next((j for j in worker.active.values() if j.started_at is None), None)
            if waiting is not None and not waiting.status.is_terminal:
                self._started(waiting, worker)
            if worker.draining and not worker.active:
                tg = self.backend.task_group
                assert tg is not None
                tg.start_soon(worker.stop)
            self._maybe_reload(worker)
            self.kick()
            if not worker.active and worker.info.state is WorkerState.IDLE:
                self.backend.worker_idle(worker)  # nothing queued took its slot

    def _adapt_prefetch(self, seconds: float) -> None:
        """Short calls (a moving average under ``AUTO_PREFETCH_BELOW`` seconds) get up to ``AUTO_PREFETCH`` more
        sent ahead into each busy worker's pipe, so a worker goes from one to the next without a round trip; a
        call waits behind another for at most a few milliseconds then. Longer calls go only to idle workers."""
        mean = seconds if self.mean_call_seconds is None else 0.8 * self.mean_call_seconds + 0.2 * seconds
        self.mean_call_seconds = mean
        depth = AUTO_PREFETCH if mean < AUTO_PREFETCH_BELOW else 0
        if depth != self.prefetch:
            self.prefetch = depth
            for worker in self.workers.values():
                worker.prefetch = depth

    def _finish(self, job: PoolJob, worker: WorkerProcess, status: str, outcome: Payload | None) -> None:
        now = time.time()
        common: dict[str, Any] = {"worker": worker.id, "started_at": job.started_at, "finished_at": now}
        if job.cancel_status is not None or status == "cancelled":
            job.push(JobUpdate(status=job.cancel_status or JobStatus.CANCELLED, reason="cancelled while running",
                               **common))
        elif status == "ok":
            job.push(JobUpdate(status=JobStatus.COMPLETED, outcome=outcome, **common))
        else:
            job.push(JobUpdate(status=JobStatus.FAILED, outcome=outcome, reason="the function raised", **common))

    def _worker_gone(self, worker: WorkerProcess, how: str, start_failure: StartFailed | None = None) -> None:
        self.workers.pop(worker.id, None)
        self.backend.release_worker(worker.id)
        self.backend.worker_released(self)
        was_running = worker.info.state not in (WorkerState.STOPPING, WorkerState.STARTING)
        worker.info.state = WorkerState.DEAD
        now = time.time()
        for job in list(worker.active.values()):
            if job.status.is_terminal:
                continue
            if job.started_at is None:
                job.worker = None
                self.queue.appendleft(job)  # it never ran: give it to another worker
                continue
            reason = f"worker {worker.id} (pid {worker.info.pid}) died while running the job: {how}"
            job.push(JobUpdate(status=JobStatus.FAILED, worker=worker.id, started_at=job.started_at,
                               finished_at=now, reason=reason, retryable=True))
        worker.active.clear()
        if start_failure is not None:
            for job in self.queue:  # fail what is waiting, or the autoscaler would start workers forever
                job.push(JobUpdate(status=JobStatus.FAILED, outcome=start_failure.outcome, finished_at=now,
                                   reason=f"worker {worker.id} could not start: {start_failure.reason}"))
            self.queue.clear()
        if was_running or start_failure is None:
            self.backend.events.worker_stopped(worker.info, how)
        self.kick()

    def cancel(self, job: PoolJob, status: JobStatus) -> None:
        if job.status.is_terminal:
            return
        if job in self.queue:
            self.queue.remove(job)
            job.push(JobUpdate(status=status, finished_at=time.time(), reason="cancelled while queued"))
            return
        job.cancel_status = status
        worker = job.worker
        if worker is None:
            return
        kind = self.spec.kind_of(job.call.method)
        inline_sync = self.spec.concurrency == 1 and not self.spec.batched and kind.value in ("function", "generator")
        if inline_sync and job.started_at is not None:
            worker.kill()  # a running sync call cannot be interrupted; its worker is replaced
            job.push(JobUpdate(status=status, worker=worker.id, started_at=job.started_at, finished_at=time.time(),
                               reason="cancelled while running; its worker process was stopped"))
        else:
            worker.send(("cancel", job.handle))
            if kind.value in ("function", "generator"):  # runs on in a thread; its result will be dropped
                job.push(JobUpdate(status=status, worker=worker.id, started_at=job.started_at,
                                   finished_at=time.time(), reason="cancelled while running"))


async def empty_updates() -> AsyncIterator[JobUpdate]:
    return
    yield  # an async generator that yields nothing


def route_frame(worker: WorkerProcess, frame: tuple[Any, ...]) -> None:
    worker.pool._on_frame(worker, frame)


