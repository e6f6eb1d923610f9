"""One worker process: started with ``python -m gpuflex.runtime._runner``, spoken to in frames over its stdin/stdout."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio

from .._models import WorkerInfo, WorkerState
from ._channel import WorkerChannel, start_worker_process

if TYPE_CHECKING:
    from ..backend import Payload
    from ..runtime._shm import SegmentPool

__all__ = ["StartFailed", "WorkerProcess"]

FrameHandler = Callable[["WorkerProcess", tuple[Any, ...]], None]


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
                 concurrency: int, use_shm: bool, prefetch: int = 0, host: str = "localhost") -> None:
        self.info = WorkerInfo(id=worker_id, endpoint=endpoint, state=WorkerState.STARTING, started_at=time.time(),
                               gpus=gpus, bundle_hash=bundle_hash, host=host)
        self.concurrency = concurrency
        self.prefetch = prefetch  # calls queued in the worker's pipe behind the running one (sync workers only)
        self.active: dict[str, Any] = {}  # job handle -> PoolJob
        self.idle_since: float | None = None
        self.channel: WorkerChannel | None = None
        self.use_shm = use_shm
        self.shm_pool: SegmentPool | None = None  # the backend's shared-memory segments (set by the pool)
        self.draining = False  # finish current jobs, take no new ones, then stop (a redeploy with new settings)
        self.reload_pending = False  # load a new bundle in place once the current jobs finish (hot reload)
        self.reload_started: float | None = None
        self.pool: Any = None  # the EndpointPool that holds it now
        self.on_kill: Callable[[], None] | None = None  # set by backends whose worker runs elsewhere (kill it there)

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def accepts_calls(self) -> bool:
        """Ready, and neither draining nor waiting to load new code (a call sent now would run the old code)."""
        return self.info.state in (WorkerState.IDLE, WorkerState.BUSY) and not self.draining \
            and not self.reload_pending

    @property
    def free_slots(self) -> int:
        if not self.accepts_calls:
            return 0
        return self.concurrency - len(self.active)

    @property
    def pipeline_room(self) -> int:
        """Calls it can take now, counting the prefetch queue in its pipe."""
        if not self.accepts_calls:
            return 0
        return self.concurrency + self.prefetch - len(self.active)

    async def start(self, command: list[str], env: Mapping[str, str], cwd: str, init: dict[str, Any],
                    on_frame: FrameHandler, *, preamble: bytes = b"", preamble_timeout: float = 60.0,
                    capture_stderr: bool = False) -> None:
        """Start the process and wait for it to report ready (after imports and ``setup()``).

        With a ``preamble`` (bytes the command prints before the worker's frames), whatever comes before it is
        skipped, and a command that has not printed it within ``preamble_timeout`` seconds is killed. With
        ``capture_stderr``, the process's stderr reaches ``on_frame`` as ``("output", "stderr", line)``.
        """
        self.channel = await start_worker_process(
            command, env=env, cwd=cwd, on_frame=lambda frame: on_frame(self, frame), use_shm=self.use_shm,
            preamble=preamble, capture_stderr=capture_stderr, pool=self.shm_pool,
        )
        self.info.pid = self.channel.pid
        self.channel.send(("init", init))
        if preamble:
            with anyio.move_on_after(preamble_timeout):
                await self.channel.preamble_done.wait()
            if not self.channel.preamble_found:
                if self.channel.preamble_done.is_set():
                    await self.channel.closed.wait()
                    how = describe_exit(self.channel.returncode)
                else:
                    self.kill()
                    how = f"it did not start within {preamble_timeout:g} s"
                skipped = bytes(self.channel.parser.skipped[:500]).decode(errors="replace").strip()
                raise StartFailed(f"the worker's command never began its output: {how}"
                                  + (f"; it printed {skipped!r} instead" if skipped else ""))
        frame = await self.channel.first_frame
        if frame is None:
            await self.channel.closed.wait()
            raise StartFailed(f"the worker process failed while starting: {describe_exit(self.channel.returncode)} "
                              "(its stderr above says why)")
        if frame[0] == "fatal":
            raise StartFailed("the endpoint failed to load in the worker", frame[1])
        if isinstance(frame[1], dict) and isinstance(frame[1].get("pid"), int):
            self.info.pid = frame[1]["pid"]  # the worker's own pid (on its machine, which may not be this one)
        self.info.state = WorkerState.IDLE
        self.idle_since = time.monotonic()

    def send(self, message: tuple[Any, ...]) -> None:
        assert self.channel is not None
        self.channel.send(message)

    def send_many(self, messages: list[tuple[Any, ...]]) -> None:
        assert self.channel is not None
        self.channel.send_many(messages)

    @property
    def prefetch_batch(self) -> int:
        """Calls to top a busy worker's pipe up with at once (half its prefetch depth, at least one)."""
        return max(1, self.prefetch // 2)

    async def wait_closed(self) -> str:
        """Wait for the process to go away; return how it ended."""
        assert self.channel is not None
        await self.channel.closed.wait()
        return describe_exit(self.channel.returncode)

    async def stop(self, grace: float = 5.0) -> None:
        """Ask the worker to exit; kill its process group if it does not within ``grace`` seconds."""
        if self.channel is None or self.channel.returncode is not None:
            return
        self.info.state = WorkerState.STOPPING
        self.channel.send(("stop",))
        with anyio.move_on_after(grace):
            await self.channel.closed.wait()
            return
        self.kill()

    def kill(self) -> None:
        if self.on_kill is not None and self.channel is not None and self.channel.returncode is None:
            self.on_kill()
        if self.channel is not None:
            self.channel.kill()
