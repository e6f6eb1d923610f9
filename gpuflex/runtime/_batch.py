"""Dynamic batching in the worker: calls of a batched endpoint are grouped into lists for the user's function.

:class:`BatchQueue` is the policy, a state machine with no clock and no I/O of its own (property-tested over arrival
patterns): items arrive with a time; a batch starts when it is full (``max_size`` items), or when its oldest item
has waited ``wait_s``, and only while fewer than ``slots`` batches run. Items keep their arrival order, across and
within batches.

:class:`Batcher` drives one queue on the worker's asyncio loop: it arms a timer for the next deadline, runs each
batch through ``run_batch`` and answers every call of the batch with its own result, or all of them with the
batch's exception.
"""

from __future__ import annotations

import asyncio
import collections
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import attrs

from ..errors import BatchError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

__all__ = ["BatchQueue", "Batcher"]

T = TypeVar("T")


@attrs.define
class _Waiting(Generic[T]):
    item: T
    arrived: float


class BatchQueue(Generic[T]):
    """Which items form the next batch, and when. Call :meth:`take` whenever time passes or an item arrives;
    call :meth:`finished` when a batch it gave out has ended."""

    def __init__(self, max_size: int, wait_s: float, slots: int = 1) -> None:
        if max_size < 1 or slots < 1 or wait_s < 0:
            raise ValueError(f"max_size and slots must be at least 1 and wait_s not negative: "
                             f"{max_size}, {slots}, {wait_s}")
        self.max_size, self.wait_s, self.slots = max_size, wait_s, slots
        self.running = 0
        self._waiting: collections.deque[_Waiting[T]] = collections.deque()

    def __len__(self) -> int:
        return len(self._waiting)

    def arrive(self, item: T, now: float) -> None:
        self._waiting.append(_Waiting(item, now))

    def remove(self, item: T) -> bool:
        """Take a waiting item back (its call was cancelled); ``False`` when it is not waiting (any more)."""
        for entry in self._waiting:
            if entry.item is item:
                self._waiting.remove(entry)
                return True
        return False

    def deadline(self) -> float | None:
        """When the oldest waiting item's wait is over (``None`` with nothing waiting)."""
        return self._waiting[0].arrived + self.wait_s if self._waiting else None

    def take(self, now: float) -> list[list[T]]:
        """The batches to start now: full ones, and the one whose oldest item has waited long enough."""
        batches: list[list[T]] = []
        while self._waiting and self.running < self.slots:
            deadline = self._waiting[0].arrived + self.wait_s
            if len(self._waiting) < self.max_size and now < deadline:
                break
            size = min(self.max_size, len(self._waiting))
            batches.append([self._waiting.popleft().item for _ in range(size)])
            self.running += 1
        return batches

    def finished(self) -> None:
        if self.running <= 0:
            raise RuntimeError("finished() called with no batch running")
        self.running -= 1


class Batcher(Generic[T]):
    """One batched callable on the worker's loop: ``add(item)`` returns a future of that item's result."""

    def __init__(self, queue: BatchQueue[_Call[T]],
                 run_batch: Callable[[list[T]], Awaitable[Sequence[Any]]],
                 on_start: Callable[[list[Any]], None] | None = None) -> None:
        self.queue = queue
        self.run_batch = run_batch
        self.on_start = on_start
        self._timer: asyncio.TimerHandle | None = None
        self.sizes: list[int] = []  # every batch's size, for the conformance suite and benchmarks

    def add(self, item: T, key: Any = None) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        call = _Call(item, key, loop.create_future())
        self.queue.arrive(call, loop.time())
        self._pump()
        return call.future

    def cancel(self, key: Any) -> bool:
        """Cancel a waiting call by its key; ``False`` when it is not waiting (it runs, or it is done)."""
        for entry in list(self.queue._waiting):
            if entry.item.key == key:
                self.queue.remove(entry.item)
                entry.item.future.cancel()
                return True
        return False

    def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        for batch in self.queue.take(loop.time()):
            loop.create_task(self._run(batch))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.queue.deadline()
        if deadline is not None and self.queue.running < self.queue.slots:
            self._timer = loop.call_at(deadline, self._pump)

    async def _run(self, batch: list[_Call[T]]) -> None:
        self.sizes.append(len(batch))
        if self.on_start is not None:
            self.on_start([call.key for call in batch])
        try:
            results = await self.run_batch([call.item for call in batch])
            if not isinstance(results, (list, tuple)) or len(results) != len(batch):
                got = f"{len(results)} results" if isinstance(results, (list, tuple)) else type(results).__name__
                raise BatchError(f"a batched endpoint must return a list with one result per item: it got "
                                       f"{len(batch)} items and returned {got}")
        except BaseException as exc:  # the batch's exception is every call's exception
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(exc)
        else:
            for call, result in zip(batch, results, strict=True):
                if not call.future.done():
                    call.future.set_result(result)
        finally:
            self.queue.finished()
            self._pump()


@attrs.define(eq=False)
class _Call(Generic[T]):
    item: T
    key: Any
    future: asyncio.Future[Any]
