"""The interrupt check: whatever a caller started is cancelled when it stops waiting for it.

Each way of stopping runs a ``map`` (or one call) of ``conformance_hold`` whose first results come back at once
and whose later calls wait for a gate the check never opens; the caller stops waiting, and the check then wants
every job of that endpoint ended, with no call started beyond those already running. A backend that lets the
abandoned calls run would start them one after another, and the check would fail on the count (or on the wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
import typing
from typing import TYPE_CHECKING

from gpuflex.client._session import get_session

from . import _endpoints as ep
from ._harness import WAIT, BackendFactory, backend_in_use, needs, tmp_dir, wait_until

if TYPE_CHECKING:
    from collections.abc import Callable, Generator
    from pathlib import Path

__all__ = ["check_interrupt"]

CALLS = 10  # calls each map starts
DELIVERED = 2  # results the caller takes before it stops waiting
ENDPOINT = "conformance_hold"
# a call after a stopped sync call may wait for a fresh worker (the old one exits to stop it): a RunPod worker's boot
# on a loaded 2-core machine took over a minute
START = 3 * WAIT


def _map(marks: Path) -> Generator[int, None, None]:
    return typing.cast("Generator[int, None, None]", ep.hold.map(range(CALLS), [str(marks)] * CALLS,
                                                                 [DELIVERED] * CALLS))


def _settled(how: str, marks: Path, delivered: int) -> None:
    """Every job of the endpoint has ended, and no call started beyond those running when the caller stopped."""
    session = get_session()

    def all_ended() -> bool:
        return all(job.done() for job in list(session.jobs.values()) if job.endpoint == ENDPOINT)

    try:
        wait_until(all_ended, f"the calls left behind by {how} to be cancelled")
        started = len(list(marks.glob("started-*")))
        bound = delivered + ep.hold.spec.max_workers
        assert started <= bound, (
            f"{how}: {started} calls started although the caller stopped waiting after {delivered} results (at "
            f"most {bound} could have been running then): the abandoned calls were not cancelled"
        )
        finished = sorted(int(p.name.split("-")[1]) for p in marks.glob("done-*"))
        assert all(index < DELIVERED for index in finished), f"{how}: held calls {finished} ran to their end"
    finally:
        (marks / "open").touch()  # let anything still waiting go


def _interrupt_main_thread_when(ready: Callable[[], bool], delay: float = 0.0) -> threading.Thread:
    """Send SIGINT (Ctrl-C) to the main thread once ``ready()`` holds (and ``delay`` seconds later), as a terminal
    would."""
    main = threading.main_thread().ident
    assert main is not None

    def fire() -> None:
        wait_until(ready, "the interrupted call to start", limit=START)
        time.sleep(delay)
        signal.pthread_kill(main, signal.SIGINT)

    thread = threading.Thread(target=fire, name="gpuflex-conformance-ctrl-c", daemon=True)
    thread.start()
    return thread


def _can_send_ctrl_c() -> bool:
    return (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler)


def _sync_ways() -> None:
    marks = tmp_dir()
    for value in _map(marks):
        if value == DELIVERED - 1:
            break  # the iterator is dropped and closed at once
    _settled("a `break` out of map()", marks, DELIVERED)

    marks = tmp_dir()
    results = _map(marks)
    taken = [next(results) for _ in range(DELIVERED)]
    assert taken == list(range(DELIVERED))
    results.close()
    _settled("closing a map() iterator", marks, DELIVERED)

    marks = tmp_dir()
    results = _map(marks)
    taken = [next(results) for _ in range(DELIVERED)]
    del results  # garbage-collected
    _settled("a map() iterator collected unfinished", marks, DELIVERED)

    if not _can_send_ctrl_c():
        return  # Ctrl-C reaches only the main thread, through Python's default handler
    marks = tmp_dir()
    interrupted = False
    try:
        for value in _map(marks):
            if value == DELIVERED - 1:  # the next result waits on a gate: Ctrl-C lands in that wait
                _interrupt_main_thread_when(lambda: True, delay=0.2)
    except KeyboardInterrupt:
        interrupted = True
    assert interrupted, "the map was expected to be waiting when Ctrl-C came"
    _settled("Ctrl-C during map()", marks, DELIVERED)

    marks = tmp_dir()
    with contextlib.suppress(KeyboardInterrupt):
        _interrupt_main_thread_when((marks / f"started-{DELIVERED}").exists)
        ep.hold(DELIVERED, str(marks), DELIVERED)
        raise AssertionError("a held call returned although its gate never opened")
    _settled("Ctrl-C during a call", marks, 0)


async def _async_ways() -> None:
    marks = tmp_dir()
    got: list[int] = []

    async def consume() -> None:
        async for value in ep.hold.aio.map(range(CALLS), [str(marks)] * CALLS, [DELIVERED] * CALLS):
            got.append(value)

    task = asyncio.ensure_future(consume())
    for _ in range(6000):
        if len(got) >= DELIVERED:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await asyncio.to_thread(_settled, "cancelling the task iterating aio.map()", marks, DELIVERED)

    marks = tmp_dir()
    async for value in ep.hold.aio.map(range(CALLS), [str(marks)] * CALLS, [DELIVERED] * CALLS):
        if value == DELIVERED - 1:
            break
    await asyncio.to_thread(_settled, "a `break` out of aio.map()", marks, DELIVERED)

    marks = tmp_dir()
    call = asyncio.ensure_future(ep.hold.aio(DELIVERED, str(marks), DELIVERED))
    started = marks / f"started-{DELIVERED}"
    await asyncio.to_thread(wait_until, started.exists, "the awaited call to start", START)
    call.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await call
    await asyncio.to_thread(_settled, "cancelling the task awaiting a call", marks, 0)


def check_interrupt(make_backend: BackendFactory) -> None:
    """A caller that stops waiting cancels what it started, on the backend: a ``break`` out of ``map``, its
    iterator closed or collected, Ctrl-C during ``map`` or a call, a cancelled task iterating ``aio.map`` or
    awaiting a call. The endpoint then serves the next call at once."""
    with backend_in_use(make_backend) as backend:
        needs(backend, "cancel")
        _sync_ways()
        asyncio.run(_async_ways())
        marks = tmp_dir()
        assert ep.hold(0, str(marks), 1) == 0, "the endpoint must keep working after its calls were cancelled"
