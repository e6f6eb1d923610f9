"""One worker process: started with ``python -m gpuflex._worker``, spoken to in frames over its stdin/stdout."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

from gpuflex import WorkerInfo, WorkerState
from gpuflex._wire import WireCodec, discard_shm, read_frame, write_frame

if TYPE_CHECKING:
    from anyio.abc import Process

    from gpuflex.backend import Payload

__all__ = ["StartFailed", "WorkerProcess"]

FrameHandler = Callable[["WorkerProcess", tuple[Any, ...]], None]
ExitHandler = Callable[["WorkerProcess", str], Awaitable[None]]


class StartFailed(Exception):
    """The worker could not load the endpoint; ``outcome`` is the serialized exception, if it got that far."""

    def __init__(self, reason: str, outcome: Payload | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.outcome = outcome


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "the connection to it closed"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"it was killed by {name}"
    return f"it exited with code {returncode}"


class WorkerProcess:
    def __init__(self, worker_id: str, endpoint: str, bundle_hash: str, gpus: tuple[str, ...], *,
                 concurrency: int, use_shm: bool) -> None:
        self.info = WorkerInfo(id=worker_id, endpoint=endpoint, state=WorkerState.STARTING, started_at=time.time(),
                               gpus=gpus, bundle_hash=bundle_hash)
        self.concurrency = concurrency
        self.active: dict[str, Any] = {}  # job handle -> LocalJob
        self.idle_since: float | None = None
        self.process: Process | None = None
        self._codec = WireCodec(use_shm=use_shm)
        self._reader: BufferedByteReceiveStream | None = None
        self._send_lock = anyio.Lock()
        self.draining = False  # finish current jobs, take no new ones (hot reload)

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def free_slots(self) -> int:
        if self.info.state not in (WorkerState.IDLE, WorkerState.BUSY) or self.draining:
            return 0
        return self.concurrency - len(self.active)

    async def start(self, command: list[str], env: Mapping[str, str], cwd: str, init: dict[str, Any]) -> None:
        """Start the process and wait for it to report ready (after imports and ``setup()``)."""
        self.process = await anyio.open_process(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, env=dict(env), cwd=cwd,
            start_new_session=True,
        )
        self.info.pid = self.process.pid
        assert self.process.stdout is not None
        self._reader = BufferedByteReceiveStream(self.process.stdout)
        await self.send(("init", init))
        try:
            frame = await read_frame(self._reader)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
            code = await self.process.wait()
            raise StartFailed(f"the worker process failed while starting: {describe_exit(code)} "
                              "(its stderr above says why)") from None
        if frame[0] == "fatal":
            raise StartFailed("the endpoint failed to load in the worker", frame[1])
        self.info.state = WorkerState.IDLE
        self.idle_since = time.monotonic()

    async def send(self, message: tuple[Any, ...]) -> None:
        assert self.process is not None and self.process.stdin is not None
        async with self._send_lock:
            await write_frame(self.process.stdin, self._codec.encode(message))

    async def read_loop(self, on_frame: FrameHandler, on_exit: ExitHandler) -> None:
        """Deliver frames until the process goes away, then report how it ended."""
        assert self._reader is not None and self.process is not None
        try:
            while True:
                on_frame(self, await read_frame(self._reader))
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        with anyio.move_on_after(5):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        discard_shm(self._codec.exported)
        await on_exit(self, describe_exit(self.process.returncode))

    def release_exported(self) -> None:
        """Forget shared-memory files handed to the worker (it unlinks each one as it maps it)."""
        if len(self._codec.exported) > 64:
            discard_shm(self._codec.exported[:-64])
            del self._codec.exported[:-64]

    async def stop(self, grace: float = 5.0) -> None:
        """Ask the worker to exit; kill its process group if it does not within ``grace`` seconds."""
        if self.process is None or self.process.returncode is not None:
            return
        self.info.state = WorkerState.STOPPING
        try:
            await self.send(("stop",))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        with anyio.move_on_after(grace):
            await self.process.wait()
            return
        self.kill()

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            try:
                import os

                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.process.kill()
