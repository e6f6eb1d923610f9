"""The budget guard's watch over running work: the client's half of :class:`gpuflex._budget.BudgetGuard`."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from .._budget import BudgetGuard
    from .._job import Job

__all__ = ["MARGIN_SECONDS", "BudgetWatch"]

MARGIN_SECONDS = 0.1  # running work stops this long before it would pass the limit (a busy loop wakes late)


class BudgetWatch:
    """While jobs run under a budget, one task on the gpuflex loop sleeps until their cost would reach the limit,
    then stops them (and those waiting behind them), so the limit is not passed. A job that starts running wakes it
    to plan again. Everything here runs on the loop thread."""

    def __init__(self, guard: BudgetGuard, loop: asyncio.AbstractEventLoop, jobs: Mapping[str, Job],
                 cancel: Callable[[list[Job]], Awaitable[None]]) -> None:
        self.guard, self.loop, self.jobs, self.cancel = guard, loop, jobs, cancel
        self._task: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None

    def started(self, job: Job) -> None:
        """An attempt of ``job`` started running (``job.started_at``)."""
        if self.guard.current_limit() is None or job.started_at is None:
            return
        self.guard.started(job.id, job.started_at, job.cost.usd, job.worker)
        if self._task is None:
            self._task = self.loop.create_task(self._watch())
        elif self._changed is not None:
            self._changed.set()

    async def _watch(self) -> None:
        try:
            while True:
                self._changed = asyncio.Event()
                left = self.guard.seconds_left()
                if left is None:
                    return  # nothing runs (and no await since the check: a job that starts now starts a new watch)
                if left <= MARGIN_SECONDS:
                    reason = self.guard.reason_to_stop()
                    stopping = [job for job_id in self.guard.stop_all() if (job := self.jobs.get(job_id))]
                    for job in stopping:
                        job._budget_stop = reason
                    await self.cancel(stopping)
                    continue
                with anyio.move_on_after(left - MARGIN_SECONDS):
                    await self._changed.wait()
        finally:
            self._task = None
