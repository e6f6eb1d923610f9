"""The actor: gpuflex's worker runtime inside a Ray actor, one per worker of an endpoint.

A threaded actor with three concurrency groups, so nothing waits behind a running call:

* the default group (``calls_per_worker`` threads) runs :meth:`WorkerActor.call`. A sync call of a one-call-at-a-
  time endpoint runs right on its thread (``run_inline``), as a plain actor method would; the others (async
  functions, concurrency, batches) run on the runtime's event loop, in a thread of its own that also ran
  ``setup()``;
* ``control`` takes cancels, reloads and the stop;
* ``output`` answers :meth:`WorkerActor.drain`, a long poll for what the code prints and for generator chunks.

A call's ``done`` is the return value of ``call``: one Ray round trip per call. Printed lines and chunks queue in
an outbox, numbered; each ``done`` carries the last number queued before it, so the caller delivers a result only
after the lines and chunks that came first.

This module runs on the cluster; the caller imports it only when it creates the first actor (``import ray`` is
slow).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import os
import threading
from typing import TYPE_CHECKING, Any

import ray

from ._wire import Wire, pack, unpack

if TYPE_CHECKING:
    from gpuflex.worker import WorkerRuntime

__all__ = ["CONTROL_GROUP", "OUTPUT_GROUP", "WorkerActor"]

CONTROL_GROUP, OUTPUT_GROUP = "control", "output"


@ray.remote(concurrency_groups={CONTROL_GROUP: 1, OUTPUT_GROUP: 1}, max_restarts=0,  # type: ignore[call-overload]
            max_task_retries=0)
class WorkerActor:
    """Runs one endpoint's calls in this actor (see the module's docstring)."""

    def __init__(self) -> None:
        from gpuflex.worker import IN_WORKER_ENV

        os.environ[IN_WORKER_ENV] = "1"  # an endpoint called inside a worker runs in-process
        self.runtime: WorkerRuntime | None = None
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="gpuflex-runtime", daemon=True).start()
        self.changed = threading.Condition()
        self.outbox: collections.deque[tuple[int, Wire]] = collections.deque()
        self.seq = 0
        self.pending: dict[str, concurrent.futures.Future[Wire]] = {}
        self.inline_done: dict[str, Wire] = {}
        self.streaming: set[str] = set()
        self.loaded: concurrent.futures.Future[Wire] | None = None

    # -- what the runtime sends (on its loop, on a call's thread, or any thread for printed lines) ------------

    def send(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "output" or (kind == "chunk" and message[1] in self.streaming):
            wire = pack(message)
            with self.changed:
                self.seq += 1
                self.outbox.append((self.seq, wire))
                self.changed.notify_all()
        elif kind in ("ready", "fatal"):
            if self.loaded is not None:
                self.loaded.set_result(pack(message))
        elif kind == "done":
            handle = message[1]
            self.streaming.discard(handle)
            with self.changed:
                after = self.seq  # the result is delivered after everything queued before it
            wire = pack((*message, after))
            future = self.pending.pop(handle, None)
            if future is not None:
                future.set_result(wire)
            else:
                self.inline_done[handle] = wire

    def _on_loop(self, coro: Any) -> Any:
        """Run a coroutine on the runtime's loop and wait for it (from one of Ray's threads)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def _load(self, init: dict[str, Any]) -> dict[str, Any]:
        from ._bundles import materialise

        init = dict(init)
        init["bundle_root"] = materialise(init.pop("ray_bundle"), ray.get)
        return init

    # -- the actor's methods ----------------------------------------------------------------------------------

    def start(self, init: dict[str, Any]) -> Wire:
        """Load the endpoint from its bundle (and run ``setup()`` on the runtime's loop); ``ready`` or ``fatal``."""
        from gpuflex.worker import WorkerRuntime, encode_error

        try:
            self.runtime = WorkerRuntime(self._load(init), self.send)
            info = self._on_loop(self.runtime.start())
        except BaseException as exc:
            return pack(("fatal", encode_error(exc)))
        context = ray.get_runtime_context()
        info.update(node_id=context.get_node_id(), host=ray.util.get_node_ip_address(),  # type: ignore[no-untyped-call]
                    gpus=[str(g) for g in ray.get_gpu_ids()])
        return pack(("ready", info))

    def call(self, wire: Wire) -> Wire:
        """Run one call (``("call", handle, method, payload, streams)``); return its ``done`` message, with the
        outbox position it follows."""
        runtime = self.runtime
        assert runtime is not None
        _, handle, method, payload, streams = unpack(wire)
        if streams:
            self.streaming.add(handle)
        if runtime.runs_inline(method):  # one sync call at a time: right here, like a plain actor method
            runtime.run_inline(handle, payload)
            return self.inline_done.pop(handle)
        future: concurrent.futures.Future[Wire] = concurrent.futures.Future()
        self.pending[handle] = future
        self.loop.call_soon_threadsafe(runtime.submit, handle, payload)
        return future.result()

    @ray.method(concurrency_group=CONTROL_GROUP)
    def cancel(self, handle: str) -> None:
        runtime = self.runtime
        if runtime is not None:
            runtime.cancelled.add(handle)  # a cancel that arrives before its call: the call never starts
            self.loop.call_soon_threadsafe(runtime.cancel, handle)

    @ray.method(concurrency_group=CONTROL_GROUP)
    def reload(self, init: dict[str, Any]) -> Wire:
        """Load a new bundle in this process (hot reload); ``ready`` or ``fatal``."""
        from gpuflex.worker import encode_error

        runtime = self.runtime
        assert runtime is not None
        try:
            init = self._load(init)
        except BaseException as exc:
            return pack(("fatal", encode_error(exc)))
        self.loaded = concurrent.futures.Future()
        self._on_loop(runtime.reload(init))
        return self.loaded.result()

    @ray.method(concurrency_group=CONTROL_GROUP)
    def stop(self) -> list[tuple[int, Wire]]:
        """Cancel what runs, put the streams back, and hand over what the outbox still holds."""
        runtime = self.runtime
        if runtime is not None:
            for task in list(runtime.tasks.values()):
                self.loop.call_soon_threadsafe(task.cancel)
            runtime.close()
        with self.changed:
            taken = list(self.outbox)
            self.outbox.clear()
        return taken

    @ray.method(concurrency_group=OUTPUT_GROUP)
    def drain(self, timeout: float = 30.0) -> list[tuple[int, Wire]]:
        """The outbox's messages, as soon as there is one (a long poll; an empty list after ``timeout``)."""
        with self.changed:
            self.changed.wait_for(lambda: bool(self.outbox), timeout)
            taken = list(self.outbox)
            self.outbox.clear()
        return taken
