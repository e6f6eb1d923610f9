"""Worker processes spoken to in frames, on the gpuflex loop, with no task per read.

Frames are parsed in the pipe's data callback and handed to ``on_frame`` synchronously; writes go straight to
the pipe transport, which buffers and never blocks the loop. This is the core's one piece of asyncio-specific
I/O (the loop thread is asyncio), kept here so backends do not need it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import typing
from typing import Any

from ..runtime._wire import FrameParser, WireCodec

if typing.TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ..runtime._shm import SegmentPool

__all__ = ["WorkerChannel", "start_worker_process"]

_JOIN_BELOW = 256 * 1024  # frames up to this size are joined into one write


class WorkerChannel(asyncio.SubprocessProtocol):
    """One worker process: ``send`` frames to its stdin; its stdout frames go to ``on_frame``. With a captured
    stderr, each of its lines goes to ``on_frame`` as ``("output", "stderr", line)``."""

    def __init__(self, on_frame: Callable[[tuple[Any, ...]], None], use_shm: bool, preamble: bytes = b"",
                 pool: SegmentPool | None = None) -> None:
        """:param pool: the backend's shared-memory segments (one pool for all its workers: a call's buffers are
            copied in before it is known which worker runs it); this channel holds those it sends."""
        self.on_frame = on_frame
        self.codec = WireCodec(use_shm=use_shm, pool=pool, holder=f"worker-{id(self):x}")
        self.parser = FrameParser(preamble, self.codec)
        self.transport: asyncio.SubprocessTransport | None = None
        self.first_frame: asyncio.Future[tuple[Any, ...] | None] = asyncio.get_running_loop().create_future()
        self.preamble_found = not preamble
        self.preamble_done = asyncio.Event()  # set once the preamble came, or the process closed without it
        if not preamble:
            self.preamble_done.set()
        self._stderr = bytearray()  # a captured stderr's unfinished line
        self.closed = asyncio.Event()
        self._exited = False
        self._stdout_closed = False

    # -- asyncio callbacks ------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 2:
            self._stderr += data
            *lines, rest = self._stderr.split(b"\n")
            self._stderr = bytearray(rest[-16384:])
            for line in lines:
                self.on_frame(("output", "stderr", line.decode(errors="replace").rstrip("\r")))
            return
        frames = self.parser.feed(data)
        if not self.preamble_found and not self.parser.in_preamble:
            self.preamble_found = True
            self.preamble_done.set()
        for frame in frames:
            if self.codec.on_control(frame):
                continue
            if frame[0] != "output" and not self.first_frame.done():  # output may come before ready
                self.first_frame.set_result(frame)
            else:
                self.on_frame(frame)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 2 and self._stderr:
            self.on_frame(("output", "stderr", self._stderr.decode(errors="replace")))
            self._stderr.clear()
        if fd == 1:
            self._stdout_closed = True
            self._maybe_closed()

    def process_exited(self) -> None:
        self._exited = True
        self._maybe_closed()

    def _maybe_closed(self) -> None:
        if self._exited and self._stdout_closed and not self.closed.is_set():
            if not self.first_frame.done():
                self.first_frame.set_result(None)
            self.preamble_done.set()
            if self.codec.pool is not None:
                self.codec.pool.release_holder(self.codec.holder)  # the worker's mappings went with it
            if self.codec.maps is not None:
                self.codec.maps.clear()  # and its segments go once no result here views them
            self.closed.set()

    # -- used by backends -------------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.transport is not None
        return self.transport.get_pid()

    @property
    def returncode(self) -> int | None:
        return None if self.transport is None else self.transport.get_returncode()

    def send(self, message: tuple[Any, ...]) -> None:
        """Queue a frame for the worker (never blocks). Silently dropped once the worker is gone."""
        self.send_many([message])

    def send_many(self, messages: list[tuple[Any, ...]]) -> None:
        """Queue several frames with one write (one wake-up of the worker)."""
        if self.transport is None or self.transport.is_closing():
            return
        stdin = typing.cast("asyncio.WriteTransport | None", self.transport.get_pipe_transport(0))
        if stdin is None or stdin.is_closing():
            return
        if self.codec.use_shm:  # say which of the worker's segments are free again (results dropped here)
            messages = [*self.codec.control(), *messages]
        parts = [part for message in messages for part in self.codec.encode(message)]
        if sum(memoryview(part).nbytes for part in parts) <= _JOIN_BELOW:
            stdin.write(b"".join(parts))  # one write system call, not one per part (uvloop writes each at once)
        else:
            stdin.writelines(parts)  # large buffers: no copy

    def kill(self) -> None:
        """SIGKILL the worker's whole process group (it runs in its own session)."""
        if self.transport is None or self.returncode is not None:
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            self.transport.kill()


async def start_worker_process(
    command: list[str], *, env: Mapping[str, str], cwd: str, on_frame: Callable[[tuple[Any, ...]], None],
    use_shm: bool = False, preamble: bytes = b"", capture_stderr: bool = False, pool: SegmentPool | None = None,
) -> WorkerChannel:
    """Start ``command`` in its own session with frame pipes on stdin/stdout. Its stderr is inherited, or with
    ``capture_stderr`` sent line by line as output frames. With a ``preamble``, stdout is skipped up to it (see
    :class:`FrameParser`)."""
    loop = asyncio.get_running_loop()
    channel = WorkerChannel(on_frame, use_shm, preamble, pool)
    await loop.subprocess_exec(
        lambda: channel, *command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if capture_stderr else None, env=dict(env), cwd=cwd, start_new_session=True,
    )
    return channel
