"""One job and the one worker process that runs it.

``run_job`` speaks gpuflex's frame protocol (``gpuflex.worker``) over the worker's stdin and stdout::

    start `python -m gpuflex.runtime`
    send ("init", spec)           <- ("ready", info) | ("fatal", error)
    send ("call", handle, ...)    <- ("started", handle)
                                  <- ("chunk", handle, payload)      (generators: one per yielded value)
                                  <- ("done", handle, status, outcome)
                                  <- ("output", stream, text)        (any time: what the code prints and logs)
    send ("stop",)                   the process exits

and records everything on the ``SubprocessJob``, where the backend's ``status``, ``updates`` and ``stream`` read it.
To run workers somewhere else, replace this module: start the same worker there (over SSH, through a container
API) and speak the same frames over that transport.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import attrs
from anyio.streams.buffered import BufferedByteReceiveStream
from gpuflex import Bundle, EndpointSpec, JobStatus, WorkerInfo, WorkerState
from gpuflex.backend import BackendEvents, Call, JobUpdate, Payload
from gpuflex.worker import WireCodec, read_frame, worker_command, worker_init, write_frame

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from anyio.abc import Process

    from ._config import SubprocessConfig

__all__ = ["SubprocessJob", "kill", "run_job"]

T = TypeVar("T")
STOP_GRACE = 5.0  # seconds a worker gets to exit after ("stop",) before it is killed
# what reading or writing raises once the worker process is gone (exited, crashed, or killed)
PIPE_BROKEN = (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, BrokenPipeError,
               ConnectionResetError)


@attrs.define(eq=False)
class SubprocessJob:
    """One attempt of one call, the process that runs it, and everything that has happened so far."""

    handle: str
    call: Call
    bundle: Bundle  # the code deployed when the call was submitted: a hot reload does not touch running jobs
    streams: bool  # a generator: the core reads its chunks with `stream`
    history: list[JobUpdate] = attrs.field(factory=lambda: [JobUpdate(status=JobStatus.QUEUED)])
    chunks: list[Payload] = attrs.field(factory=list)
    process: Process | None = None
    worker: WorkerInfo | None = None  # set once the worker is ready
    started_at: float | None = None
    cancel_reason: str | None = None  # set when the backend cancels it: the job must end CANCELLED
    exited: anyio.Event = attrs.field(factory=anyio.Event)  # the job's task is over and its process is gone
    _changed: anyio.Event = attrs.field(factory=anyio.Event, init=False)

    @property
    def done(self) -> bool:
        return self.history[-1].status.is_terminal

    def push(self, update: JobUpdate) -> None:
        if not self.done:  # a job ends once: a late report (a result racing a kill) is dropped
            self.history.append(update)
            self._wake()

    def finish(self, status: JobStatus, **fields: Any) -> None:
        self.push(JobUpdate(status=status, worker=self.worker.id if self.worker else None,
                            started_at=self.started_at, finished_at=time.time(), **fields))

    def add_chunk(self, chunk: Payload) -> None:
        if not self.done:
            self.chunks.append(chunk)
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def follow(self, items: list[T]) -> AsyncIterator[T]:
        """Yield ``items`` (the history or the chunks) as they are added, until the job ends."""
        seen = 0
        while True:
            while seen < len(items):
                yield items[seen]
                seen += 1
            if self.done:
                return
            await self._changed.wait()


async def run_job(job: SubprocessJob, config: SubprocessConfig, events: BackendEvents) -> None:
    """Run the job in a fresh worker process; return once that process is gone and the job has ended."""
    command = worker_command(config.python)
    env = {**os.environ, **job.call.endpoint.env}
    # stdin/stdout carry frames; stderr is inherited, so the user's prints and tracebacks show up here.
    # A new session makes the worker lead a process group, so a kill also takes its children.
    try:
        process = await anyio.open_process(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
                                           cwd=job.bundle.root, env=env, start_new_session=True)
    except OSError as exc:
        job.finish(JobStatus.FAILED, reason=f"could not start a worker with {command[0]}: {exc.strerror or exc}")
        return
    async with process:  # on the way out: close the pipes and reap the process
        job.process = process
        if job.cancel_reason is not None:  # cancelled while the process was starting
            kill(process)
        try:
            await _talk(job, process, config, events)
            with anyio.move_on_after(STOP_GRACE):
                await process.wait()
        except PIPE_BROKEN:
            with anyio.move_on_after(STOP_GRACE):
                await process.wait()  # the pipes broke: the process is gone, or going
        finally:
            kill(process)  # whatever is left of it (nothing, once it has exited)
    how = _describe_exit(process.returncode)
    if job.worker is not None:
        job.worker.state = WorkerState.DEAD
        events.worker_stopped(job.worker, how)
    # Unless ("done", ...) arrived, the job has not ended yet: say why the process went away.
    if job.cancel_reason is not None:
        job.finish(JobStatus.CANCELLED, reason=f"{job.cancel_reason}; its worker process was killed")
    elif job.worker is None:
        job.finish(JobStatus.FAILED, reason=f"the worker process failed while starting: {how} (see its stderr)")
    else:  # retryable: the call itself may be fine, so the core retries it if the endpoint allows retries
        job.finish(JobStatus.FAILED, retryable=True,
                   reason=f"worker {job.worker.id} (pid {process.pid}) died while running the job: {how}")


async def _talk(job: SubprocessJob, process: Process, config: SubprocessConfig, events: BackendEvents) -> None:
    """Start the worker, send the call, and record what comes back until ("done", ...)."""
    assert process.stdin is not None and process.stdout is not None
    stdin, stdout = process.stdin, BufferedByteReceiveStream(process.stdout)
    codec = WireCodec()  # plain pipes (the local backend also moves large buffers through shared memory)

    async def send(*message: Any) -> None:
        await write_frame(stdin, message, codec)

    name = job.call.endpoint.name
    worker_id = f"{name}-{process.pid}"

    async def receive() -> tuple[Any, ...]:
        """The next frame; the user's output (prints, log records) goes to the caller's log on the way."""
        while True:
            frame = await read_frame(stdout)
            if frame[0] != "output":
                return frame
            events.worker_output(name, worker_id, frame[1], frame[2])

    await send("init", _init_spec(job.call.endpoint, job.bundle))
    with anyio.move_on_after(config.start_timeout) as waiting:
        frame = await receive()  # the worker has imported the endpoint, or failed to
    if waiting.cancelled_caught:
        kill(process)
        job.finish(JobStatus.FAILED, reason=f"the worker did not start within {config.start_timeout} s")
        return
    if frame[0] == "fatal":  # frame[1] is the serialized exception: the caller gets the real ImportError
        job.finish(JobStatus.FAILED, outcome=frame[1], reason="the endpoint failed to load in the worker")
        return
    job.worker = WorkerInfo(id=worker_id, endpoint=name,
                            state=WorkerState.BUSY, started_at=time.time(), pid=process.pid,
                            bundle_hash=job.bundle.hash, active_jobs=1)
    events.worker_started(job.worker)
    await send("call", job.handle, job.call.method, job.call.payload)
    while True:
        frame = await receive()
        if frame[0] == "started":
            job.started_at = time.time()
            job.push(JobUpdate(status=JobStatus.RUNNING, worker=job.worker.id, started_at=job.started_at))
        elif frame[0] == "chunk":
            job.add_chunk(frame[2])
        elif frame[0] == "done":
            status, outcome = frame[2], frame[3]
            if status == "ok":
                job.finish(JobStatus.COMPLETED, outcome=outcome)
            elif status == "error":  # the user's exception, serialized: the core raises it in the caller
                job.finish(JobStatus.FAILED, outcome=outcome, reason="the function raised")
            else:
                job.finish(JobStatus.CANCELLED, reason=job.cancel_reason or "cancelled in the worker")
            await send("stop")
            return


def _init_spec(endpoint: EndpointSpec, bundle: Bundle) -> dict[str, Any]:
    """What the worker runtime needs to load the endpoint: its target (module and qualname, or a pickled
    function), the bundle, and the caller's Python and gpuflex versions (a worker on others refuses to run)."""
    return worker_init(endpoint, bundle)


def kill(process: Process) -> None:
    """SIGKILL the worker and everything it started (it leads its own process group)."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)


def _describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "it stopped answering"
    if returncode < 0:
        try:
            return f"it was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"it was killed by signal {-returncode}"
    return f"it exited with code {returncode}"
