"""The client's bookkeeping of calls and the RunPod jobs carrying them, and how calls are packed into jobs.

Each endpoint has a *lane*: the calls waiting to be sent, and the count of jobs sent but not yet taken by a worker.
A call is sent at once, as a job of its own, while that count is under what the endpoint's workers can take at
once (``max_workers`` x calls per worker). Past it, calls wait here, and the next job takes a *pack* of them:
RunPod's worker loop pauses about a second between the jobs a worker takes, so 1,000 small calls as 1,000 jobs
keep two workers busy for ~500 s, and as a few packs for a few seconds. A pack holds ``ceil(waiting / free
slots)`` calls, at most ``Lane.limit``, which starts at ``FIRST_PACK`` and doubles with each pack that ends, capped
by what packs showed: calls long enough that a pack would run past ``PACK_SECONDS``, results large enough that a
pack's would fill half a job's result budget. Generator calls always travel alone.
"""

from __future__ import annotations

import collections
import math
import time
from typing import TYPE_CHECKING, Any

import attrs

from gpuflex import JobStatus
from gpuflex.backend import JobUpdate

from ._protocol import AGGREGATE_BUDGET

if TYPE_CHECKING:
    import asyncio

    from anyio.streams.memory import MemoryObjectSendStream

    from gpuflex.backend import Payload

__all__ = ["AGGREGATE_BUDGET", "FIRST_PACK", "MAX_PACK", "PACK_BYTES", "PACK_SECONDS", "CallState", "Lane", "RemoteJob",
           "take_pack"]

FIRST_PACK = 32
MAX_PACK = 1024
PACK_SECONDS = 2.0  # a pack's expected run time, from the per-call time packs showed
PACK_BYTES = 4 * 1024 * 1024  # base64 call payloads in one job (RunPod takes 10 MB per /run; the code may ride along)
QUEUED = JobUpdate(status=JobStatus.QUEUED)


@attrs.define(eq=False)
class CallState:
    """One attempt of one gpuflex call: the backend's handle, and what its caller is told."""

    handle: str
    lane: Lane
    payload: Payload | None  # the call envelope (base64-encoded when it is sent); dropped once the call ends
    blocking: bool  # a sync callable (a stop signal cannot interrupt it)
    streams: bool  # a generator: always a job of its own
    update: JobUpdate = QUEUED
    error: BaseException | None = None  # the call could not be sent (or followed): raised to the caller
    job: RemoteJob | None = None
    index: int = 0  # in ``job.calls``
    parts: list[str] | None = None  # base64 pieces of the result or chunk being received
    chunks: MemoryObjectSendStream[Payload] | None = None
    answer: JobUpdate | None = None  # a lone call's answer, given when its job ends (RunPod bills the job)
    alone: bool = False  # its result did not fit in a pack: run it in a job of its own
    changed: asyncio.Future[None] | None = None  # a bare future (not an Event): 10,000 calls in flight are cheap

    @property
    def done(self) -> bool:
        return self.error is not None or self.update.status.is_terminal

    @property
    def size(self) -> int:
        """The payload's base64 length."""
        return 4 * math.ceil(self.payload.nbytes / 3) if self.payload is not None else 0

    def notify(self) -> None:
        if self.changed is not None and not self.changed.done():
            self.changed.set_result(None)


@attrs.define(eq=False)
class RemoteJob:
    """One RunPod job and the calls it carries."""

    lane: Lane
    calls: list[CallState]
    inline: bool = False  # send the code along, whatever the deployment's count says (a worker lacked it)
    resend: bool = False  # a worker lacked the code: send the job again, with it
    endpoint_id: str = ""
    remote_id: str = ""
    counted: bool = True  # counted in ``lane.queued`` (sent, not yet taken by a worker)
    running: bool = False
    ended: bool = False
    cancel_sent: bool = False
    worker: str | None = None
    submitted_at: float = attrs.field(factory=time.time)
    seen: int = 0  # items of the job's output already read from /stream
    quiet_since: float = attrs.field(factory=time.time)  # last sign of progress while queued (queue_timeout)
    progress: tuple[int, ...] | None = None

    @property
    def pack(self) -> bool:
        return len(self.calls) > 1

    def open_calls(self) -> list[CallState]:
        return [call for call in self.calls if call.job is self and not call.done]


@attrs.define(eq=False)
class Lane:
    """One endpoint's calls waiting to be sent, and what packs showed about its calls."""

    name: str
    max_pack: int = MAX_PACK
    pending: collections.deque[CallState] = attrs.field(factory=collections.deque)
    queued: int = 0  # jobs sent and not yet taken by a worker
    scheduled: bool = False  # a dispatch is due once the calls submitted with this one are in
    limit: int = attrs.field()
    per_call: float | None = None  # seconds a call runs (moving average)
    largest: int = 0  # the largest result seen (base64 bytes)

    @limit.default
    def _first_limit(self) -> int:
        return min(FIRST_PACK, self.max_pack)

    def learn(self, seconds: Any, result_bytes: int, slots: int) -> None:
        """What one call showed: its run time and result size cap the next packs at once."""
        if isinstance(seconds, int | float) and seconds >= 0:
            self.per_call = seconds if self.per_call is None else 0.8 * self.per_call + 0.2 * seconds
        self.largest = max(self.largest, result_bytes)
        self.limit = min(self.limit, self.cap(slots))

    def cap(self, slots: int) -> int:
        cap = self.max_pack
        if self.per_call is not None:
            cap = min(cap, int(PACK_SECONDS * slots / max(self.per_call, 1e-4)))
        if self.largest:
            cap = min(cap, AGGREGATE_BUDGET // (2 * self.largest))
        return max(1, cap)

    def grow(self, slots: int) -> None:
        """A pack ended: the next may be twice as large, within what the calls showed."""
        self.limit = max(1, min(self.cap(slots), self.limit * 2))


def take_pack(lane: Lane, free: int) -> list[CallState]:
    """The calls of the next job: the oldest waiting call alone while no more calls wait than ``free`` job slots,
    else up to ``ceil(waiting / free)`` of them (at most ``lane.limit`` and ``PACK_BYTES`` of payloads). Calls that
    ended while waiting (cancelled) are dropped. Empty when nothing waits."""
    while lane.pending and lane.pending[0].done:
        lane.pending.popleft()
    if not lane.pending:
        return []
    waiting = len(lane.pending)
    first = lane.pending.popleft()
    if waiting <= free or first.streams or first.alone:
        return [first]
    want = min(math.ceil(waiting / max(1, free)), lane.limit)
    calls, size = [first], first.size
    while len(calls) < want and lane.pending:
        head = lane.pending[0]
        if head.done:
            lane.pending.popleft()
            continue
        if head.streams or head.alone or size + head.size > PACK_BYTES:
            break
        calls.append(lane.pending.popleft())
        size += head.size
    return calls
