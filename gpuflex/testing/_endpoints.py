"""Endpoints the conformance suite calls. Module-level, so every backend's workers import them by reference."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gpuflex

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator


class ConformanceError(Exception):
    """A user-defined exception type: it must come back as itself."""


class UnpicklableError(Exception):
    """An exception whose instances cannot be rebuilt (it needs two arguments): it must become RemoteError."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


def _wait_for_file(path: str, limit: float = 60.0) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return True
        time.sleep(0.01)
    return False


@gpuflex.endpoint(name="conformance_echo", max_workers=2)
def echo(value: Any, *, suffix: str = "") -> Any:
    return value + suffix if suffix else value


@gpuflex.endpoint(name="conformance_async_echo")
async def async_echo(value: Any) -> Any:
    await asyncio.sleep(0)
    return value


@gpuflex.endpoint(name="conformance_pid")
def worker_pid() -> int:
    return os.getpid()


@gpuflex.endpoint(name="conformance_stream")
def stream(count: int, gate: str) -> Iterator[int]:
    """Yield one chunk, then wait for the caller to create ``gate`` (proves chunks arrive while running)."""
    yield 0
    yield 1 if _wait_for_file(gate) else -1
    yield from range(2, count)


@gpuflex.endpoint(name="conformance_async_stream")
async def async_stream(count: int, gate: str) -> AsyncIterator[int]:
    yield 0
    opened = False
    for _ in range(6000):
        opened = await asyncio.to_thread(os.path.exists, gate)
        if opened:
            break
        await asyncio.sleep(0.01)
    yield 1 if opened else -1
    for i in range(2, count):
        yield i


@gpuflex.endpoint(name="conformance_counter", max_workers=1)
class Counter:
    """Class endpoint: ``setup`` runs once per worker, state is kept between calls."""

    def setup(self) -> None:
        self.setups = getattr(self, "setups", 0) + 1
        self.calls = 0
        self.token = f"{os.getpid()}-{time.time_ns()}"

    def __call__(self, step: int = 1) -> dict[str, Any]:
        self.calls += step
        return {"calls": self.calls, "setups": self.setups, "token": self.token}

    async def double(self, value: int) -> int:
        await asyncio.sleep(0)
        return 2 * value

    def letters(self, word: str) -> Iterator[str]:
        yield from word


@gpuflex.endpoint(name="conformance_fail")
def fail(kind: str) -> None:
    if kind == "value":
        raise ValueError("boom from the worker")
    if kind == "custom":
        raise ConformanceError("custom boom")
    if kind == "unpicklable":
        raise UnpicklableError("a", "b")
    raise KeyError(kind)


@gpuflex.endpoint(name="conformance_sleep", max_workers=2)
def sleep(seconds: float, started: str | None = None) -> float:
    if started:
        Path(started).touch()
    time.sleep(seconds)
    return seconds


@gpuflex.endpoint(name="conformance_async_sleep", concurrency=4)
async def async_sleep(seconds: float, started: str | None = None) -> float:
    if started:
        await asyncio.to_thread(Path(started).touch)
    await asyncio.sleep(seconds)
    return seconds


@gpuflex.endpoint(name="conformance_timeout", timeout=1.0)
def sleep_past_timeout(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@gpuflex.endpoint(name="conformance_die_once", retries=1)
def die_once(marker: str) -> str:
    """The first attempt kills its own worker process; the retry finds the marker and succeeds."""
    if not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


@gpuflex.endpoint(name="conformance_die_always")
def die_always() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@gpuflex.endpoint(name="conformance_scaled", max_workers=2, idle_timeout=1)
def scaled(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@gpuflex.endpoint(name="conformance_warm", min_workers=1, max_workers=1)
def warm() -> int:
    return os.getpid()


@gpuflex.endpoint(name="conformance_unpicklable_result")
def unpicklable_result() -> Any:
    return threading.Lock()


@gpuflex.endpoint(name="conformance_chatty")
def chatty(tag: str, gate: str) -> str:
    """Print to stdout and stderr and log a warning, then wait for the caller to create ``gate`` (proves the
    output arrives while the call runs, not after it)."""
    import logging
    import sys

    print(f"{tag} to stdout")
    print(f"{tag} to stderr", file=sys.stderr)
    logging.getLogger("conformance").warning("%s logged", tag)
    return tag if _wait_for_file(gate) else "gate never opened"


@gpuflex.endpoint(name="conformance_batched", max_batch_size=4, batch_wait_ms=300, max_workers=1)
def batched(items: list[int]) -> list[tuple[int, tuple[int, ...]]]:
    """Doubles each item and says which batch it rode in. -1 in a batch fails the batch; -2 returns too few."""
    if -1 in items:
        raise ConformanceError(f"bad item in batch {items}")
    results = [(2 * i, tuple(items)) for i in items]
    return results[:-1] if -2 in items else results


@gpuflex.endpoint(name="conformance_hold", max_workers=2)
def hold(index: int, marks: str, release_below: int) -> int:
    """Mark that call ``index`` started; calls below ``release_below`` return at once, the others wait (a minute at
    most) for the caller to create ``marks/open``. Marks ``done-<index>`` when it returns."""
    Path(marks, f"started-{index}").touch()
    if index >= release_below:
        _wait_for_file(os.path.join(marks, "open"))
    Path(marks, f"done-{index}").touch()
    return index


ENV_VALUE = "set by env="
SECRET_NAME = "GPUFLEX_CONFORMANCE_SECRET"


@gpuflex.endpoint(name="conformance_environ", env={"GPUFLEX_CONFORMANCE_ENV": ENV_VALUE}, secrets=[SECRET_NAME])
def environ() -> dict[str, Any]:
    """What the worker sees of the endpoint's ``env`` and ``secrets``, and the command lines of its process and
    its parent (where no secret may appear)."""
    cmdlines = []
    for pid in (os.getpid(), os.getppid()):
        try:
            cmdlines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            pass
    return {"env": os.environ.get("GPUFLEX_CONFORMANCE_ENV"), "secret": os.environ.get(SECRET_NAME),
            "cmdlines": cmdlines}
