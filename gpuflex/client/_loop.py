"""Helpers of the gpuflex loop thread: the loop itself, the task spawner backends get, and how the core follows
a job's updates (pushed by the backend, or polled)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import TYPE_CHECKING, Any

import anyio

from ..backend import Backend

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

    from anyio.abc import TaskGroup

    from ..backend import JobUpdate

__all__ = ["GuardedTaskGroup", "closing", "new_loop", "updates"]


logger = logging.getLogger("gpuflex")


class GuardedTaskGroup:
    """The session's task group as backends see it: a background task that raises is logged, and never
    cancels the other backends' work (which a bare task group would do)."""

    def __init__(self, inner: TaskGroup) -> None:
        self._inner = inner

    def start_soon(self, func: Callable[..., Awaitable[Any]], *args: Any, name: object = None) -> None:
        async def guarded() -> None:
            try:
                await func(*args)
            except Exception:
                logger.exception("gpuflex: a backend background task (%s) failed", name or func)

        self._inner.start_soon(guarded, name=name or getattr(func, "__qualname__", None))


def updates(backend: Backend, handle: str) -> AsyncIterator[JobUpdate]:
    """Push-based updates where the backend offers them, else polling ``status`` with backoff."""
    if type(backend).updates is not Backend.updates:
        return backend.updates(handle)
    return poll(backend, handle)


async def poll(backend: Backend, handle: str) -> AsyncIterator[JobUpdate]:
    delay, last = 0.005, None
    while True:
        update = await backend.status(handle)
        if update.status is not last:
            last = update.status
            yield update
        if update.status.is_terminal:
            return
        await anyio.sleep(delay)
        delay = min(delay * 1.5, 1.0)


@contextlib.asynccontextmanager
async def closing(iterator: AsyncIterator[JobUpdate]) -> AsyncGenerator[AsyncIterator[JobUpdate], None]:
    """Close an async generator we stop reading early (plain iterators need nothing)."""
    try:
        yield iterator
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (a dependency on Linux and macOS), else the standard loop."""
    if os.environ.get("GPUFLEX_NO_UVLOOP") is None:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()
