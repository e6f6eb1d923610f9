"""What runs inside a Modal container: gpuflex's worker runtime, in process, driven call by call.

The Modal class of an endpoint holds one :class:`EndpointRunner`: ``start()`` (from ``@modal.enter``) loads the
endpoint from the bundle and runs a class's ``setup()`` once per container; ``call()`` and ``stream()`` take the
same call envelope as every other backend (bytes in) and give back the worker's outcome (bytes out), so a remote
exception is rebuilt on the caller's side as its own type, with its traceback.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
from typing import TYPE_CHECKING, Any

from gpuflex.backend import Payload
from gpuflex.worker import WorkerRuntime

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["EndpointRunner", "container_id"]


def container_id() -> str:
    """Modal's id of this container (its task), or host:pid elsewhere."""
    return os.environ.get("MODAL_TASK_ID") or f"{socket.gethostname()}:{os.getpid()}"

_ids = itertools.count()


class EndpointRunner:
    def __init__(self, init: dict[str, Any]) -> None:
        # sync callables run in a thread, never on the loop: a sync generator's chunks then leave while it runs.
        # Modal's max_inputs (the endpoint's concurrency) bounds how many calls a container takes at once.
        self.init = {**init, "concurrency": max(2, int(init.get("concurrency", 1)))}
        self.runtime: WorkerRuntime | None = None
        self._inboxes: dict[str, asyncio.Queue[tuple[Any, ...]]] = {}

    def _send(self, message: tuple[Any, ...]) -> None:
        if message[0] in ("chunk", "done", "started"):
            inbox = self._inboxes.get(message[1])
            if inbox is not None:
                inbox.put_nowait(message)

    async def start(self) -> dict[str, Any]:
        """Load the endpoint (imports, ``setup()``); raises what loading raised."""
        self.runtime = WorkerRuntime(self.init, self._send)
        return await self.runtime.start()

    def _begin(self, payload: bytes) -> tuple[str, asyncio.Queue[tuple[Any, ...]]]:
        if self.runtime is None:
            raise RuntimeError("the endpoint runner was not started (no @modal.enter ran)")
        job_id = f"m{next(_ids)}"
        inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self._inboxes[job_id] = inbox
        self.runtime.submit(job_id, Payload.from_bytes(payload))
        return job_id, inbox

    async def call(self, payload: bytes) -> tuple[str, bytes, str]:
        """Run one call; return ``(status, outcome, worker)``: status ``"ok"`` or ``"error"``, the outcome
        serialized, and which container ran it."""
        job_id, inbox = self._begin(payload)
        try:
            while True:
                message = await inbox.get()
                if message[0] == "done":
                    return str(message[2]), message[3].to_bytes(), container_id()
        finally:
            self._inboxes.pop(job_id, None)

    async def stream(self, payload: bytes) -> AsyncIterator[tuple[str, bytes]]:
        """Run a generator call: ``("chunk", value)`` per chunk as produced, then ``(status, outcome)``."""
        job_id, inbox = self._begin(payload)
        try:
            while True:
                message = await inbox.get()
                if message[0] == "chunk":
                    yield "chunk", message[2].to_bytes()
                elif message[0] == "done":
                    yield str(message[2]), message[3].to_bytes()
                    return
        finally:
            self._inboxes.pop(job_id, None)
