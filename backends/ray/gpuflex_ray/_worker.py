"""One worker of an endpoint as a Ray actor, spoken to by the worker pool as it speaks to a worker process.

The pool sends the same messages it writes into a worker's pipe (``call``, ``cancel``, ``reload``); each becomes
one actor method call, and what comes back is handed to the pool as the frames a process would have written:

* a call's ``done`` is the return value of ``WorkerActor.call``;
* printed lines and generator chunks come from a long poll (``WorkerActor.drain``), numbered; a ``done`` waits
  for the lines and chunks numbered before it, so a caller sees a call's output before its result;
* a lost actor (killed, its process or node gone) fails the pending Ray calls, and the worker then counts as
  closed: the pool fails its running calls as retryable, exactly as for a process that died.

Ray completes its object refs on its own threads; each completion is handed to the gpuflex loop (always asyncio,
as Ray's own awaitables need) with ``call_soon_threadsafe``, so no task is spawned per call.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import TYPE_CHECKING, Any

import anyio

from gpuflex import WorkerState
from gpuflex.workerpool import StartFailed, WorkerProcess

from ._wire import pack, unpack

if TYPE_CHECKING:
    import concurrent.futures
    from collections.abc import Callable, Mapping

__all__ = ["RayWorker", "describe_ray_error"]

FrameHandler = Any  # Callable[[WorkerProcess, tuple[Any, ...]], None], as the pool passes it


def describe_ray_error(exc: BaseException) -> str:
    """Ray's multi-line errors in one line: what happened and why, without the ids."""
    text = str(exc)
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.startswith(("\t", "    ")) and not line.strip().startswith("File ")]
    summary = " ".join(lines) or type(exc).__name__
    summary = re.sub(r"\s+", " ", summary)
    return summary if len(summary) <= 400 else summary[:397] + "..."


class RayWorker(WorkerProcess):
    """A ``WorkerProcess`` whose process is a Ray actor somewhere in the cluster."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.actor: Any = None
        self.node_id: str | None = None
        self._frames: Callable[[WorkerProcess, tuple[Any, ...]], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gone: asyncio.Event | None = None
        self._how = "it was stopped"
        self._stopping = False
        self._delivered = 0  # the last outbox number handed to the pool
        self._parked: list[tuple[int, tuple[Any, ...]]] = []  # results waiting for earlier output

    @property
    def backend(self) -> Any:
        return self.pool.backend

    # -- start ------------------------------------------------------------------------------------------------

    async def start(self, command: list[str], env: Mapping[str, str], cwd: str, init: dict[str, Any],
                    on_frame: FrameHandler, **process_options: Any) -> None:
        """Create the actor and wait until it has loaded the endpoint (or say why it could not). The options of a
        process's start (a preamble, its stderr) have no meaning for an actor."""
        self._frames, self._loop, self._gone = on_frame, asyncio.get_running_loop(), asyncio.Event()
        backend, spec = self.backend, self.pool.spec
        options = backend.actor_options(spec, self.id)
        timeout = backend.config.start_timeout
        try:
            with anyio.fail_after(timeout):
                # in a thread: creating the first actor of a runtime environment packs and uploads its modules
                self.actor = await anyio.to_thread.run_sync(lambda: backend.actor_class().options(**options).remote())
                answer = unpack(await self._get(self.actor.start.remote(init)))
        except TimeoutError:
            self._close("it did not start in time")
            raise StartFailed(f"the Ray actor was not placed or did not load the endpoint within {timeout:g} s; it "
                              f"asks for {backend.describe_request(options)} (raise start_timeout when the "
                              "cluster's autoscaler needs longer to add a node)") from None
        except Exception as exc:
            self._close("it did not start")
            raise StartFailed(f"the Ray actor did not start: {describe_ray_error(exc)}") from None
        except BaseException:  # cancelled (the backend closes): the actor must not outlive it
            self._close("it was stopped while starting")
            raise
        if answer[0] == "fatal":
            self._close("the endpoint failed to load")
            raise StartFailed("the endpoint failed to load in the worker", answer[1])
        info = answer[1]
        self.info.pid, self.info.host, self.info.gpus = info["pid"], info["host"], tuple(info["gpus"])
        self.node_id = info["node_id"]
        self.info.state = WorkerState.IDLE
        self.idle_since = time.monotonic()
        backend.task_group.start_soon(self._pump, name=f"gpuflex-ray output of {self.id}")

    async def _get(self, ref: Any) -> Any:
        future: concurrent.futures.Future[Any] = ref.future()
        return await asyncio.wrap_future(future)

    # -- messages from the pool -------------------------------------------------------------------------------

    def send(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind not in ("call", "cancel", "reload"):
            raise ValueError(f"a Ray worker does not take {kind!r} messages")
        try:
            if kind == "call":
                streams = self.pool.spec.kind_of(message[2]).streams  # its chunks go by the outbox
                ref = self.actor.call.remote(pack((*message, streams)))  # one argument: Ray's cheapest call
                self._watch(ref, self._call_done)
            elif kind == "cancel":
                self._watch(self.actor.cancel.remote(message[1]), self._ignore)
            else:
                self._watch(self.actor.reload.remote(message[1]), self._reload_done)
        except Exception as exc:  # the connection to the cluster is gone: so is this worker
            self._lost(exc)

    def send_many(self, messages: list[tuple[Any, ...]]) -> None:
        for message in messages:
            self.send(message)

    def _watch(self, ref: Any, handler: Callable[[concurrent.futures.Future[Any]], None]) -> None:
        """Run ``handler(future)`` on the gpuflex loop when ``ref`` completes (on one of Ray's threads)."""
        loop = self._loop
        assert loop is not None

        def completed(future: concurrent.futures.Future[Any]) -> None:
            try:
                loop.call_soon_threadsafe(handler, future)
            except RuntimeError:  # the loop is closed: nobody waits for this any more
                pass

        ref.future().add_done_callback(completed)

    def _call_done(self, future: concurrent.futures.Future[Any]) -> None:
        try:
            *done, after = unpack(future.result())
        except Exception as exc:
            self._lost(exc)
            return
        message = tuple(done)
        if after <= self._delivered:
            self._deliver(message)
        else:
            self._parked.append((after, message))

    def _reload_done(self, future: concurrent.futures.Future[Any]) -> None:
        try:
            answer = future.result()
        except Exception as exc:
            self._lost(exc)
            return
        self._deliver(unpack(answer))

    def _ignore(self, future: concurrent.futures.Future[Any]) -> None:
        future.exception()  # a cancel that reached a lost actor: the pump reports the loss

    def _deliver(self, message: tuple[Any, ...]) -> None:
        assert self._frames is not None
        self._frames(self, message)

    def _outbox(self, batch: list[tuple[int, Any]]) -> None:
        """Printed lines and chunks, in order; then the results that waited for them."""
        for seq, wire in batch:
            self._deliver(unpack(wire))
            self._delivered = seq
        if self._parked:
            ready = [m for after, m in self._parked if after <= self._delivered]
            self._parked = [(after, m) for after, m in self._parked if after > self._delivered]
            for message in ready:
                self._deliver(message)

    async def _pump(self) -> None:
        assert self._gone is not None
        while not self._gone.is_set():
            try:
                batch = await self._get(self.actor.drain.remote())
            except Exception as exc:
                self._lost(exc)
                return
            if not self._gone.is_set():
                self._outbox(batch)

    # -- the end ----------------------------------------------------------------------------------------------

    def _lost(self, exc: BaseException) -> None:
        if self._stopping:
            self._close("it was stopped")
        else:
            self._close(f"the Ray actor was lost: {describe_ray_error(exc)}")

    def _close(self, how: str) -> None:
        """The worker is gone: results that already came back are delivered, the actor is killed."""
        if self._gone is None or self._gone.is_set():
            return
        for _, message in self._parked:
            self._deliver(message)
        self._parked = []
        self._how = how
        self._gone.set()
        if self.actor is not None:
            self.backend.kill_actor(self.actor)

    async def wait_closed(self) -> str:
        assert self._gone is not None
        await self._gone.wait()
        return self._how

    async def stop(self, grace: float = 5.0) -> None:
        """Ask the actor to finish (what it printed last still arrives), then kill it."""
        if self._gone is None or self._gone.is_set():
            return
        self.info.state = WorkerState.STOPPING
        self._stopping = True
        with anyio.move_on_after(grace):
            try:
                self._outbox(await self._get(self.actor.stop.remote()))
            except Exception:  # noqa: BLE001 - lost while stopping: it is gone either way
                pass
        self._close("it was stopped")

    def kill(self) -> None:
        self._close("it was killed")
