"""``gpuflex.Job``: a handle on one call, usable from threads and from async code."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import threading
import time
import typing
from typing import Any

from ._envelope import decode_outcome
from ._models import Cost, JobStatus
from .errors import JobCancelled, JobFailed, JobTimeout, QuotaExceeded, WorkerLost

if typing.TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Coroutine, Iterator

    from .backend import JobUpdate, Payload

    Submitter = Callable[[Coroutine[Any, Any, None]], concurrent.futures.Future[None]]

__all__ = ["ChunkChannel", "Job"]

LOOP_THREAD_NAME = "gpuflex-loop"  # the thread every backend and hook runs on (the client starts it)

_END = object()


class ChunkChannel:
    """Chunks of a generator job, handed from the gpuflex loop thread to a sync or async consumer."""

    def __init__(self) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self._cond = threading.Condition()
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None
        self.delivered = 0

    def put(self, item: Any) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify()
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            loop, fut = waiter
            loop.call_soon_threadsafe(_wake, fut)

    def close(self) -> None:
        self.put(_END)

    def get(self) -> Any:
        with self._cond:
            while not self._items:
                self._cond.wait()
            return self._items.popleft()

    async def aget(self) -> Any:
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._items:
                    return self._items.popleft()
                fut: asyncio.Future[None] = loop.create_future()
                self._waiter = (loop, fut)
            await fut


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


@typing.final
class Job:
    """One call of an endpoint: its status, timings, attempts, cost, and (eventually) its result.

    Returned by ``fn.spawn(...)``; the core keeps it up to date from the gpuflex loop thread.
    """

    def __init__(self, job_id: str, endpoint: str, backend: str, *, streaming: bool = False) -> None:
        self.id = job_id
        self.endpoint = endpoint
        self.backend = backend
        self.status = JobStatus.QUEUED
        self.attempts = 0
        self.submitted_at = time.time()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.worker: str | None = None
        self.reason: str | None = None
        self.cost = Cost()
        # per-second billing: what the worker bills idle after this job if no call follows within its idle
        # timeout; once per burst of calls, not per call (gpuflex costs and the cost meter count it that way)
        self.tail = Cost()
        self.chunks: ChunkChannel | None = ChunkChannel() if streaming else None
        self._future: concurrent.futures.Future[JobUpdate] = concurrent.futures.Future()
        self._cancel: Callable[[], Coroutine[Any, Any, None]] | None = None  # runs on the gpuflex loop
        self._submit: Submitter | None = None  # hands a coroutine to the gpuflex loop
        # cancels several jobs with one hop to the loop (None once the session is closed)
        self._cancel_many: Callable[[list[Job]], concurrent.futures.Future[None] | None] | None = None
        self._cancel_requested = False
        self._handle: str | None = None
        self._source_root: str | None = None  # the caller's project: remote tracebacks point into it
        self._budget_stop: str | None = None  # why the budget guard stopped it
        self._refused = False  # it failed because the budget guard stopped it: result() raises QuotaExceeded

    def __repr__(self) -> str:
        return f"<gpuflex.Job {self.id} {self.endpoint} {self.status.value} attempts={self.attempts}>"

    # -- timings --------------------------------------------------------------------------------------------

    @property
    def queue_time(self) -> float | None:
        """Seconds from submission until a worker started the (last) attempt."""
        return None if self.started_at is None else max(0.0, self.started_at - self.submitted_at)

    @property
    def run_time(self) -> float | None:
        """Seconds the (last) attempt ran on its worker."""
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0.0, self.finished_at - self.started_at)

    def done(self) -> bool:
        return self._future.done()

    # -- results --------------------------------------------------------------------------------------------

    def _raise_or_return(self, update: JobUpdate) -> Any:
        if update.status is JobStatus.COMPLETED and update.outcome is not None:
            return decode_outcome(update.outcome, source_root=self._source_root)
        if update.status is JobStatus.FAILED and update.outcome is not None:
            # raises the user's exception as its own type
            return decode_outcome(update.outcome, source_root=self._source_root)
        reason = update.reason or self.reason or "no reason given"
        if self._refused:
            raise QuotaExceeded(f"job {self.id} of {self.endpoint!r} was {reason}")
        if update.status is JobStatus.CANCELLED:
            raise JobCancelled(f"job {self.id} of {self.endpoint!r} was cancelled: {reason}", job_id=self.id)
        if update.status is JobStatus.TIMED_OUT:
            raise JobTimeout(f"job {self.id} of {self.endpoint!r} timed out: {reason}", job_id=self.id)
        error = WorkerLost if update.retryable else JobFailed
        raise error(
            f"job {self.id} of {self.endpoint!r} failed after {self.attempts} attempt(s): {reason}", job_id=self.id
        )

    def result(self, timeout: float | None = None) -> Any:
        """Block until the job ends; return its value or raise its error. ``timeout`` bounds only this wait
        (raising :class:`TimeoutError`); the job itself keeps running."""
        if threading.current_thread().name == LOOP_THREAD_NAME and not self._future.done():
            raise RuntimeError(  # waiting here would block the very loop that finishes the job: a deadlock
                f"job {self.id} of {self.endpoint!r}: a blocking call on gpuflex's own event loop thread (from a hook "
                "or a backend); use `await job.aresult()` or `await endpoint.aio(...)` there"
            )
        try:
            update = self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"job {self.id} still {self.status.value} after waiting {timeout} s") from None
        return self._raise_or_return(update)

    async def aresult(self) -> Any:
        """``result()`` for async code. Cancelling the task that awaits it stops only the wait (as
        ``result(timeout=)`` does): the job keeps running until :meth:`acancel`."""
        if not self._future.done():
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()

            def wake(_: object) -> None:
                with contextlib.suppress(RuntimeError):  # the waiting loop is closed: nobody is left to wake
                    loop.call_soon_threadsafe(_wake, waiter)

            # not asyncio.wrap_future: cancelling its future would cancel the job's own future with it
            self._future.add_done_callback(wake)
            await waiter
        return self._raise_or_return(self._future.result())

    def _request_cancel(self) -> concurrent.futures.Future[None] | None:
        """Send the cancel request without waiting for it; ``None`` when the job has ended already."""
        if self._cancel is None or self._submit is None or self.done():
            return None
        return self._submit(self._cancel())

    def cancel(self) -> None:
        """Ask the backend to stop the job; returns once the request is sent. ``result()`` then raises
        :class:`~gpuflex.errors.JobCancelled` (unless the job had already finished)."""
        request = self._request_cancel()
        if request is not None:
            request.result()

    async def acancel(self) -> None:
        request = self._request_cancel()
        if request is not None:
            await asyncio.wrap_future(request)

    # -- streams --------------------------------------------------------------------------------------------

    def iter_chunks(self) -> Iterator[Any]:
        assert self.chunks is not None, "not a generator job"
        while True:
            item = self.chunks.get()
            if item is _END:
                break
            yield decode_outcome(typing.cast("Payload", item), source_root=self._source_root)
        self.result()  # re-raise the job's error, if it ended with one

    async def aiter_chunks(self) -> AsyncIterator[Any]:
        assert self.chunks is not None, "not a generator job"
        while True:
            item = await self.chunks.aget()
            if item is _END:
                break
            yield decode_outcome(typing.cast("Payload", item), source_root=self._source_root)
        await self.aresult()

    # -- called by the core on the loop thread ----------------------------------------------------------------

    def _finish(self, update: JobUpdate) -> None:
        self.status = update.status
        self.finished_at = update.finished_at or time.time()
        if update.reason:
            self.reason = update.reason
        if self.chunks is not None:
            self.chunks.close()
        if not self._future.done():
            self._future.set_result(update)

