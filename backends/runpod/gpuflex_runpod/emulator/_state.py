"""The emulator's model of RunPod Serverless: endpoints (with their nested template), jobs and workers, and the
rules that move them: queueing, the scaler, idle timeouts, execution timeouts, cancels and lost workers."""

from __future__ import annotations

import collections
import math
import time
import uuid
from typing import Any

import anyio
import attrs

__all__ = ["EmulatedEndpoint", "EmulatedJob", "EmulatedWorker", "Notifier", "TERMINAL"]

TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
DEFAULT_EXECUTION_TIMEOUT_MS = 600_000  # RunPod's documented default policy.executionTimeout


class Notifier:
    """Wakes every waiter of a long poll when something changed."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = anyio.Event()

    async def wait(self, seconds: float) -> None:
        event = self._event
        with anyio.move_on_after(seconds):
            await event.wait()


@attrs.define(eq=False)
class EmulatedJob:
    id: str
    endpoint_id: str
    input: Any
    execution_timeout_ms: int
    status: str = "IN_QUEUE"
    submitted: float = attrs.field(factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    worker_id: str | None = None
    output: Any = None
    error: Any = None
    stream: list[Any] = attrs.field(factory=list)
    stream_read: int = 0
    changed: Notifier = attrs.field(factory=Notifier)

    def finish(self, status: str, *, output: Any = None, error: Any = None) -> None:
        self.status, self.output, self.error = status, output, error
        self.finished = time.monotonic()
        self.changed.notify()

    def view(self) -> dict[str, Any]:
        """The job as ``/status`` shows it."""
        body: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.started is not None:
            body["delayTime"] = int((self.started - self.submitted) * 1000)
            body["workerId"] = self.worker_id
        if self.finished is not None and self.started is not None:
            body["executionTime"] = int((self.finished - self.started) * 1000)
        if self.output is not None:
            body["output"] = self.output
        if self.error is not None:
            body["error"] = self.error
        return body


@attrs.define(eq=False)
class EmulatedWorker:
    id: str
    endpoint_id: str
    key: str
    version: int
    process: Any = None  # anyio.abc.Process once started
    state: str = "initializing"  # -> "ready" at its first request
    jobs: set[str] = attrs.field(factory=set)
    idle_since: float = attrs.field(factory=time.monotonic)
    to_stop: list[str] = attrs.field(factory=list)  # job ids for the worker's job-stop poll
    kill_at: float | None = None  # a stopped job did not let go of the worker: kill it then
    stopping: bool = False
    stop_signal: Notifier = attrs.field(factory=Notifier)


@attrs.define(eq=False)
class EmulatedEndpoint:
    id: str
    settings: dict[str, Any]
    template: dict[str, Any]  # the template object itself: saveTemplate changes it in place
    version: int = 1
    created: float = attrs.field(factory=time.time)
    queue: collections.deque[str] = attrs.field(factory=collections.deque)
    workers: dict[str, EmulatedWorker] = attrs.field(factory=dict)
    completed: int = 0
    failed: int = 0
    retried: int = 0
    crashes: int = 0  # workers in a row that died before asking for a job (reset when one asks)
    restart_at: float = 0.0
    changed: Notifier = attrs.field(factory=Notifier)
    vendor: dict[str, Any] = attrs.field(factory=dict)  # output-only values RunPod sets itself (workersStandby)

    # -- settings, with RunPod's defaults for what the caller left out ------------------------------------------

    def setting(self, name: str, default: Any) -> Any:
        value = self.settings.get(name)
        return default if value is None else value

    @property
    def workers_min(self) -> int:
        return int(self.setting("workersMin", 0))

    @property
    def workers_max(self) -> int:
        return int(self.setting("workersMax", 3))

    @property
    def idle_timeout(self) -> float:
        return float(self.setting("idleTimeout", 5))

    @property
    def execution_timeout_ms(self) -> int:
        return int(self.setting("executionTimeoutMs", 0)) or DEFAULT_EXECUTION_TIMEOUT_MS

    # -- the scaler ----------------------------------------------------------------------------------------------

    def live_workers(self) -> list[EmulatedWorker]:
        return [w for w in self.workers.values() if not w.stopping]

    def in_progress(self) -> int:
        return sum(len(w.jobs) for w in self.workers.values())

    def wanted_workers(self, jobs: dict[str, EmulatedJob], now: float) -> int:
        """How many workers the scaler wants now: the floor (workersMin: active workers), plus what the queue asks
        for. ``workersStandby`` is no floor: RunPod reports it (an output field, set by RunPod itself, not a
        billed always-on worker as far as runpod/flash#364 shows), and the emulator reports it as 0."""
        floor = self.workers_min
        live = self.live_workers()
        queued = len(self.queue)  # cancelled jobs leave the queue when they are cancelled
        scaler = self.setting("scalerType", "QUEUE_DELAY")
        value = float(self.setting("scalerValue", 4)) or 1.0
        if scaler == "REQUEST_COUNT":
            demand = math.ceil((queued + self.in_progress()) / value)
        else:  # QUEUE_DELAY: add a worker when a job waited longer than scalerValue seconds (or none exists)
            demand = len(live)
            oldest = jobs.get(self.queue[0]) if queued else None
            waiting = oldest is not None and not any(w.state == "initializing" or not w.jobs for w in live)
            if oldest is not None and (not live or (waiting and now - oldest.submitted >= value)):
                demand += 1
        return max(0, min(self.workers_max, max(floor, demand)))

    def idle_to_stop(self, now: float) -> list[EmulatedWorker]:
        """Idle workers past idleTimeout above the floor, outdated idle workers, and any above workersMax."""
        floor = self.workers_min
        live = self.live_workers()
        idle = [w for w in live if w.state == "ready" and not w.jobs]
        chosen = [w for w in idle if w.version != self.version]
        keep = len(live) - len(chosen)
        for worker in sorted(idle, key=lambda w: w.idle_since):
            if worker in chosen:
                continue
            over_max = keep > self.workers_max
            expired = keep > floor and now - worker.idle_since >= self.idle_timeout
            if over_max or expired:
                chosen.append(worker)
                keep -= 1
        return chosen


def new_job_id() -> str:
    return f"{uuid.uuid4()}-e1"
