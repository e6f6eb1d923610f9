"""What runs inside a Modal container: gpuflex's worker runtime, in process, driven call by call.

The Modal class of an endpoint holds one :class:`EndpointRunner`: ``start()`` (from ``@modal.enter``) loads the
endpoint from the bundle and runs a class's ``setup()`` once per container; ``run()`` takes the same call envelope
as every other backend (bytes in) and yields, through Modal's generator output:

* ``("started", worker, started_at, function_call_id)`` as the call begins in this container: the caller's
  RUNNING, its clock for the call's deadline and cost, and the id it cancels by;
* ``("chunk", data)`` per generator chunk, as produced;
* ``("done", status, outcome, finished_at)`` last: status ``"ok"`` or ``"error"``, the worker's outcome.

When Modal cancels the input (a cancel, the caller's deadline) it cancels this generator's task; the runner then
cancels the user's call in the runtime and waits for it, so async user code stops before the container takes its
next input. Sync user code runs in a thread, which nothing can interrupt: the caller cancels those calls with
``terminate_containers`` (Modal stops the container).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuflex.backend import Payload
from gpuflex.worker import WorkerRuntime

from ._plan import BUNDLE_DIR

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator

__all__ = ["LOG_MARK", "EndpointRunner", "bundle_root", "container_id"]

#: Written before each log record on the container's stderr, so the caller can tell records from stderr text
#: (Modal's log stream carries only stdout and stderr): U+2063 INVISIBLE SEPARATOR, unseen in Modal's dashboard.
LOG_MARK = "\u2063"

_CANCEL_WAIT_SECONDS = 10.0
_ids = itertools.count()


def container_id() -> str:
    """Modal's id of this container (its task), or host:pid elsewhere."""
    return os.environ.get("MODAL_TASK_ID") or f"{socket.gethostname()}:{os.getpid()}"


def bundle_root() -> str:
    """Where the image put the bundle: beside gpuflex's own source, in the directory this package was added to
    (``/root`` on Modal)."""
    return str(Path(__file__).resolve().parents[1] / BUNDLE_DIR)


def _current_call() -> str:
    try:
        import modal

        return modal.current_function_call_id() or ""
    except Exception:  # outside a Modal container (the runner's own tests)
        return ""


class EndpointRunner:
    def __init__(self, init: dict[str, Any], *, root: str | None = None) -> None:
        # sync callables run in a thread, never on the loop: a sync generator's chunks then leave while it runs.
        # Modal's max_inputs (concurrency x max_batch_size) bounds how many calls a container takes at once; a
        # batched endpoint's batches run in threads anyway, and its concurrency bounds the batches at once.
        concurrency = int(init.get("concurrency", 1))
        self.init = {**init, "concurrency": concurrency if init.get("batch") else max(2, concurrency),
                     "bundle_root": root or bundle_root()}
        self.runtime: WorkerRuntime | None = None
        self._inboxes: dict[str, asyncio.Queue[tuple[Any, ...]]] = {}

    def _send(self, message: tuple[Any, ...]) -> None:
        if message[0] == "output":  # the user's prints and log records: Modal's log stream carries them
            _, stream, text = message
            target = sys.__stdout__ if stream == "stdout" else sys.__stderr__
            if target is not None:
                marked = "".join(f"{LOG_MARK}{line}\n" for line in text.split("\n")) if stream == "log" \
                    else text + "\n"
                target.write(marked)
                target.flush()
            return
        if message[0] in ("chunk", "done", "started"):
            inbox = self._inboxes.get(message[1])
            if inbox is not None:
                inbox.put_nowait(message)

    async def start(self) -> dict[str, Any]:
        """Load the endpoint (imports, ``setup()``); raises what loading raised."""
        self.runtime = WorkerRuntime(self.init, self._send)
        return await self.runtime.start()

    async def run(self, payload: bytes) -> AsyncIterator[tuple[Any, ...]]:
        started = time.time()
        first = True
        async with contextlib.aclosing(self.call(Payload.from_bytes(payload))) as messages:
            async for message in messages:
                if first:
                    yield "started", container_id(), started, _current_call()
                    first = False
                if message[0] == "chunk":
                    yield "chunk", message[1].to_bytes()
                elif message[0] == "done":
                    outcome = message[2].to_bytes() if message[2] is not None else b""
                    yield "done", message[1], outcome, time.time()

    async def call(self, payload: Payload) -> AsyncGenerator[tuple[Any, ...], None]:
        """One call in the runtime: first ``("submitted",)``, then ``("chunk", Payload)`` per generator chunk and
        ``("done", status, outcome)`` last. Closing (or cancelling) the iterator cancels the user's call and waits
        for it to end."""
        if self.runtime is None:
            raise RuntimeError("the endpoint runner was not started (no @modal.enter ran)")
        job_id = f"m{next(_ids)}"
        inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self._inboxes[job_id] = inbox
        self.runtime.submit(job_id, payload)
        try:
            yield ("submitted",)
            while True:
                message = await inbox.get()
                if message[0] == "chunk":
                    yield "chunk", message[2]
                elif message[0] == "done":
                    yield "done", str(message[2]), message[3]
                    return
        except BaseException:  # Modal cancelled the input (CancelledError), or the generator was closed
            await self._stop(job_id)
            raise
        finally:
            self._inboxes.pop(job_id, None)

    async def _stop(self, job_id: str) -> None:
        """Cancel the user's call and wait until it has ended (an async one ends at its next await)."""
        assert self.runtime is not None
        task = self.runtime.tasks.get(job_id)
        self.runtime.cancel(job_id)
        if task is not None and not task.done():
            await asyncio.wait([task], timeout=_CANCEL_WAIT_SECONDS)
