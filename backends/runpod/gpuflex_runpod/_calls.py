"""The worker half of a RunPod job: run its calls (one, or a pack) in the endpoint's runtime and turn what they
send into the items the handler yields (see :mod:`._protocol`).

A pack's calls start as the worker's call slots free up (``GPUFLEX_CONCURRENCY``: the endpoint's calls per worker,
shared by every job the worker holds), so a batched endpoint's batcher sees a batch's worth at once, and a
``max_batch_size=1`` endpoint runs them one at a time. Whatever arrived while the SDK was posting the previous
item (results, starts, printed lines) goes out together in the next one, so a pack of small calls costs a few
stream posts, not one per call. Every item stays under RunPod's 1 MB stream cap and all of a job's items under its
~10 MB result cap: a call whose result no longer fits in its pack is sent back to be run alone, and calls not
started while little room is left go back unrun.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from typing import TYPE_CHECKING, Any

from gpuflex.worker import encode_error

from ._protocol import AGGREGATE_BUDGET, ITEM_BYTES, OUTPUT_BUDGET, PART_BYTES, ResultTooLarge, b64decode_payload

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from gpuflex.worker import WorkerRuntime

    from .worker import HandlerState

__all__ = ["Budget", "run_calls"]

RESERVE = 64 * 1024  # a pack stops starting calls when less than this (or twice its largest result) is left


class Budget:
    """What one job has yielded so far: RunPod keeps every item in the job's aggregated output (~10 MB at most)."""

    def __init__(self) -> None:
        self.used = 0
        self.output = 0
        self.largest = 0

    def pieces(self, data: bytes) -> list[str] | None:
        """``data`` in base64 pieces under RunPod's 1 MB stream cap; None when they would not fit in what is left
        of the job's aggregate."""
        text = base64.b64encode(data).decode("ascii")
        if self.used + len(text) + 64 > AGGREGATE_BUDGET:
            return None
        step = PART_BYTES * 4 // 3
        pieces = [text[i:i + step] for i in range(0, len(text), step)] or [""]
        self.used += len(text) + 48 * len(pieces)
        self.largest = max(self.largest, len(text))
        return pieces

    def low(self) -> bool:
        return AGGREGATE_BUDGET - self.used < max(RESERVE, 2 * self.largest)


def lines_of(state: HandlerState, budget: Budget) -> list[list[str]]:
    """Printed lines waiting to go out, within the job's share of output."""
    if not state.output and not state.output_dropped:
        return []
    room = max(0, min(OUTPUT_BUDGET - budget.output, AGGREGATE_BUDGET // 4 - budget.output))
    lines, used = state.take_output(room)
    budget.output += used
    budget.used += used + 64
    return lines


def _too_large(size: int, what: str) -> str:
    error = ResultTooLarge(size, AGGREGATE_BUDGET, f"serverless ({what}: RunPod keeps at most ~10 MB per job)")
    return base64.b64encode(encode_error(error).to_bytes()).decode("ascii")


class _Run:
    """One job's calls in flight: what the runtime sent, as events."""

    def __init__(self, state: HandlerState, runtime: WorkerRuntime, job_id: str, calls: list[str],
                 budget: Budget) -> None:
        self.state, self.runtime, self.budget = state, runtime, budget
        self.ids = [f"{job_id}#{i}" for i in range(len(calls))]
        self.index = {call_id: i for i, call_id in enumerate(self.ids)}
        self.calls = calls
        self.open: dict[int, float] = {}  # started, not finished: when it started
        self.left = len(calls)  # calls not accounted for yet
        self.failed: set[int] = set()  # answered early (chunks past the budget): what the runtime says next is moot
        self.events: list[list[Any]] = []

    async def feed(self, inbox: asyncio.Queue[tuple[Any, ...]]) -> None:
        """Start the calls in order, each when a call slot is free."""
        slots = self.state.slots()
        for i, payload in enumerate(self.calls):
            await slots.acquire()
            if self.state.exiting or len(self.calls) > 1 and self.budget.low():  # exiting: the client requeues it
                slots.release()
                inbox.put_nowait(("skip", i))
                continue
            self.open[i] = time.monotonic()
            self.runtime.submit(self.ids[i], b64decode_payload(payload))
            inbox.put_nowait(("begun", i))

    def take(self, message: tuple[Any, ...]) -> None:
        """One message (from the runtime, or the feeder) as events."""
        kind = message[0]
        if kind == "begun":
            self.events.append([message[1], "started", None, None])
        elif kind == "skip":
            self.events.append([message[1], "skipped", None, None])
            self.left -= 1
        elif kind == "chunk" and message[1] in self.index:
            self._chunk(self.index[message[1]], message[2].to_bytes())
        elif kind == "done" and message[1] in self.index:
            i = self.index[message[1]]
            started = self.open.pop(i, None)
            if started is None:
                return
            self.state.slots().release()
            self.left -= 1
            seconds = round(time.monotonic() - started, 6)
            _, _, status, outcome = message
            if i in self.failed:
                return
            if status == "ok":
                self._result(i, outcome.to_bytes(), seconds)
            elif status == "error":
                data = base64.b64encode(outcome.to_bytes()).decode("ascii")
                self.events.append([i, "failed", data, seconds])
            else:
                self.events.append([i, "cancelled", None, seconds])

    def _chunk(self, i: int, data: bytes) -> None:
        if i in self.failed:
            return
        pieces = self.budget.pieces(data)
        if pieces is None:
            self.failed.add(i)
            self.runtime.cancel(self.ids[i])
            self.events.append([i, "failed", _too_large(self.budget.used + len(data) * 4 // 3,
                                                        "the streamed chunks"), None])
            return
        self.events += [[i, "chunk_part", piece, None] for piece in pieces[:-1]] + [[i, "chunk", pieces[-1], None]]

    def _result(self, i: int, data: bytes, seconds: float) -> None:
        pieces = self.budget.pieces(data)
        if pieces is None:
            alone = len(data) * 4 // 3 + 64 <= AGGREGATE_BUDGET
            if len(self.calls) > 1 and alone:
                self.events.append([i, "rerun", None, seconds])
            else:
                self.events.append([i, "failed", _too_large(self.budget.used + len(data) * 4 // 3, "the result"),
                                    seconds])
            return
        parts = [[i, "result_part", piece, None] for piece in pieces[:-1]]
        self.events += [*parts, [i, "result", pieces[-1], seconds]]

    def items(self) -> list[dict[str, Any]]:
        """The events and printed lines gathered so far, as items of at most ``ITEM_BYTES`` each."""
        worker = os.environ.get("RUNPOD_POD_ID", "")
        out: list[dict[str, Any]] = []
        lines = lines_of(self.state, self.budget)
        current: dict[str, Any] = {"worker": worker}
        size = 0
        if lines:
            current["lines"] = lines
            size = sum(len(text) + 16 for _, text in lines)
        for event in self.events:
            cost = len(event[2] or "") + 40
            if size + cost > ITEM_BYTES and current.get("events"):
                out.append(current)
                current, size = {"worker": worker}, 0
            current.setdefault("events", []).append(event)
            size += cost
        self.events = []
        if len(current) > 1:
            out.append(current)
        return out

    def stop(self, blocking: bool) -> None:
        """The job was stopped (cancel, execution timeout): cancel its calls in the runtime. A sync call runs on in
        its thread and cannot be interrupted, so the worker then exits to free the GPU (RunPod replaces it)."""
        exiting = blocking and bool(self.open)
        self.state.exiting = self.state.exiting or exiting  # before the slots free: no job taken now starts a call
        for i in list(self.open):
            self.runtime.cancel(self.ids[i])
            self.state.slots().release()
        if exiting:  # time for RunPod's loop to send what the jobs still running here say (their calls skipped)
            asyncio.get_running_loop().call_later(0.5, os._exit, 75)


async def run_calls(state: HandlerState, runtime: WorkerRuntime, job_id: str, request: dict[str, Any],
                    inbox: asyncio.Queue[tuple[Any, ...]], budget: Budget) -> AsyncIterator[dict[str, Any]]:
    """Run the job's calls; yield their events (and printed lines) as they come, until every call is answered."""
    run = _Run(state, runtime, job_id, list(request["calls"]), budget)
    for call_id in run.ids:
        state.inboxes[call_id] = inbox
    feeder = asyncio.get_running_loop().create_task(run.feed(inbox))
    finished = False
    try:
        while run.left:
            run.take(await inbox.get())
            while not inbox.empty():  # what arrived meanwhile goes out in the same item
                run.take(inbox.get_nowait())
            for item in run.items():
                yield item
        finished = True
    finally:
        feeder.cancel()
        if not finished:
            run.stop(bool(request.get("blocking")))
        for call_id in run.ids:
            state.inboxes.pop(call_id, None)


def error_item(payload: dict[str, Any]) -> dict[str, str]:
    return {"error": json.dumps(payload)}
