"""The RunPod handler: gpuflex's worker runtime inside RunPod's own worker loop (``runpod.serverless.start``).

:mod:`._boot` starts the loop and hands every job to :func:`handler` (this module rides in the jobs with gpuflex,
see :mod:`._bootstrap`). Each job carries one call, or a pack of calls (:mod:`._calls` runs them), in gpuflex's
envelope plus the bundle they need, by hash: inline (a zip, for small bundles) or as a path on a shared volume.
Bundles are unpacked once per hash into ``$GPUFLEX_RUNPOD_CACHE`` and the runtime reloads in place when a job names
a new hash (hot reload). The endpoint's dependencies were installed before the loop started, outside any job's time.

The handler is an async generator, so RunPod streams every item it yields (see :mod:`._protocol`): the function's
printed lines and log records as they happen, each call's start, a generator's chunks, and each call's result, every
item under RunPod's 1 MB stream cap and all of them together under its ~10 MB result cap (a result or stream that
cannot fit fails the call with ``PayloadTooLarge``; output past a per-job budget is cut, with a note). Sync
functions run in a thread, so the SDK's loop keeps answering pings and per-job stop signals while they run.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuflex.worker import IN_WORKER_ENV, WorkerRuntime, encode_error

from ._boot import unpack
from ._calls import Budget, error_item, lines_of, run_calls
from ._jsonjobs import is_json_job, json_items, json_result
from ._protocol import MISSING_KEY, OUTCOME_KEY, OUTPUT_BUDGET, PROTOCOL_VERSION, b64encode_payload, init_from_json

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from gpuflex.backend import Payload

__all__ = ["handler", "main", "plain_handler"]


def cache_dir() -> Path:
    return Path(os.environ.get("GPUFLEX_RUNPOD_CACHE") or Path.home() / ".cache" / "gpuflex" / "runpod")


#: reads one object of the object store by key (set by the boot script, which has the store's S3 client)
fetch_object: Callable[[str], bytes] | None = None


def materialise_bundle(ref: dict[str, Any]) -> str:
    """The directory holding the bundle ``ref`` names: a shared path as is, or the inline zip (or the object
    store's, for ``"store"``) unpacked once."""
    if ref.get("path"):
        return str(ref["path"])
    target = cache_dir() / "bundles" / ref["hash"]
    if target.is_dir():
        return str(target)
    if ref.get("store"):
        if fetch_object is None:
            raise OSError("this worker has no object store to fetch the bundle from (it was not started by "
                          "gpuflex's boot script)")
        data = fetch_object(f"bundles/{ref['hash']}.zip")
    elif ref.get("zip"):
        data = base64.b64decode(ref["zip"])
    else:
        raise BundleMissing(ref["hash"])
    return unpack(data, str(target))  # the boot script's: atomic, file modes kept


class BundleMissing(Exception):
    """The job named a bundle by hash only, and this worker does not have it: the client resends it inline."""


#: how RunPod's worker loop (SDK 1.12) prints its own log lines: they stay in the worker's log
_SDK_LINES = ('{"requestId": ', "--- Starting Serverless Worker")


class HandlerState:
    """One endpoint's runtime in this worker process, and the messages of the calls it runs."""

    def __init__(self) -> None:
        self.runtime: WorkerRuntime | None = None
        self.bundle_hash: str | None = None
        self.lock = asyncio.Lock()
        self.inboxes: dict[str, asyncio.Queue[tuple[Any, ...]]] = {}
        self.loaded: asyncio.Future[tuple[Any, ...]] | None = None
        self.output: list[list[str]] = []  # printed lines and log records not yet sent with a job
        self.output_bytes = 0
        self.output_dropped = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread: int | None = None
        self._slots: asyncio.Semaphore | None = None
        self.exiting = False  # a stopped sync call cannot be interrupted: the worker exits, and starts no new call

    def slots(self) -> asyncio.Semaphore:
        """Calls this worker runs at once, across the jobs it holds: the endpoint's calls per worker."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(max(1, int(os.environ.get("GPUFLEX_CONCURRENCY", "1"))))
        return self._slots

    def send(self, message: tuple[Any, ...]) -> None:
        """The runtime's outgoing messages: per-call ones go to the call's inbox; output lines (printed from any
        thread) wait for the oldest running call to carry them, or for the next call."""
        if message[0] == "output":
            if self.loop is not None and threading.get_ident() != self.loop_thread:
                self.loop.call_soon_threadsafe(self.send, message)
                return
            stream, text = str(message[1]), str(message[2])
            if stream == "stdout" and text.startswith(_SDK_LINES):  # RunPod's worker loop logging: its log only
                print(text, file=sys.__stdout__, flush=True)
                return
            self.add_output(stream, text)
            return
        if message[0] in ("ready", "fatal"):
            if self.loaded is not None and not self.loaded.done():
                self.loaded.set_result(message)
            return
        inbox = self.inboxes.get(message[1])
        if inbox is not None:
            inbox.put_nowait(message)

    def add_output(self, stream: str, text: str) -> None:
        if self.output_bytes + len(text) > OUTPUT_BUDGET:  # nobody is taking them: keep the newest call's worth
            self.output_dropped += 1
            return
        self.output.append([stream, text])
        self.output_bytes += len(text) + 16
        if self.inboxes:
            next(iter(self.inboxes.values())).put_nowait(("output",))

    def take_output(self, budget: int) -> tuple[list[list[str]], int]:
        """Lines to send now, at most ``budget`` bytes of them; the rest is dropped (and counted)."""
        lines, used = [], 0
        for stream, text in self.output:
            if used + len(text) + 16 > budget:
                self.output_dropped += 1
                continue
            lines.append([stream, text])
            used += len(text) + 16
        self.output, self.output_bytes = [], 0
        if self.output_dropped:
            lines.append(["stderr", f"[gpuflex] {self.output_dropped} more line(s) of output were not forwarded "
                                    "(over the per-call output budget); the worker's log has them"])
            self.output_dropped = 0
        return lines, used

    async def ensure_loaded(self, request: dict[str, Any]) -> Payload | None:
        """Load (or hot-reload) the bundle the job names; return an error outcome when that fails."""
        if self.loop is None:
            self.loop, self.loop_thread = asyncio.get_running_loop(), threading.get_ident()
        bundle = request["bundle"]
        async with self.lock:
            if self.runtime is not None and self.bundle_hash == bundle["hash"]:
                return None
            try:
                root = await asyncio.to_thread(materialise_bundle, bundle)
            except BundleMissing:
                raise
            except BaseException as exc:
                return encode_error(exc)
            init = {**init_from_json(request["init"]), "bundle_root": root, "report_started": False}
            if self.runtime is None:
                runtime = WorkerRuntime(init, self.send)
                # sync callables run in a thread (the runtime runs them on the loop only for concurrency 1), so the
                # SDK's loop stays free for pings and per-job stop signals
                runtime.concurrency = max(runtime.concurrency, 2)
                try:
                    await runtime.start()
                except BaseException as exc:
                    return encode_error(exc)
                self.runtime = runtime
            else:
                self.loaded = asyncio.get_running_loop().create_future()
                await self.runtime.reload(init)
                answer = await self.loaded
                if answer[0] == "fatal":
                    self.bundle_hash = None
                    return answer[1]  # type: ignore[no-any-return]
            self.bundle_hash = bundle["hash"]
            return None


_state = HandlerState()


async def handler(job: dict[str, Any]) -> AsyncIterator[Any]:
    """Run the gpuflex calls of one RunPod job, yielding the items described in :mod:`._protocol`; or a plain JSON
    job (:mod:`._jsonjobs`), yielding its result or each chunk as JSON."""
    if is_json_job(job):
        async for value in json_items(_state, job):
            yield value
        return
    request = (job.get("input") or {}).get("gpuflex")
    if not isinstance(request, dict) or request.get("version") != PROTOCOL_VERSION:
        yield {"error": f"not a gpuflex job (protocol {PROTOCOL_VERSION} expected): the input lacks 'gpuflex'"}
        return
    job_id = str(job["id"])
    inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    _state.inboxes[job_id] = inbox  # before loading: setup() prints go out with this job
    budget = Budget()
    try:
        try:
            failure = await _state.ensure_loaded(request)
        except BundleMissing as exc:
            yield error_item({MISSING_KEY: str(exc), "message": f"this worker does not have bundle {exc}"})
            return
        if lines := lines_of(_state, budget):
            yield {"lines": lines, "worker": os.environ.get("RUNPOD_POD_ID", "")}
        if failure is not None:
            yield error_item({OUTCOME_KEY: b64encode_payload(failure),
                              "message": "the worker could not load the endpoint"})
            return
        runtime = _state.runtime
        assert runtime is not None
        async for item in run_calls(_state, runtime, job_id, request, inbox, budget):
            yield item
    finally:
        _state.inboxes.pop(job_id, None)


async def plain_handler(job: dict[str, Any]) -> Any:
    """``handler`` for a deployed endpoint with no generator (``GPUFLEX_HANDLER=plain``): a JSON job's output is
    the function's result itself; a gpuflex job's is the list of items ``handler`` yields (no streaming: what the
    function prints reaches a gpuflex caller with the result)."""
    if is_json_job(job):
        return await json_result(_state, job)
    items = []
    async for item in handler(job):
        if isinstance(item, dict) and "error" in item:
            return {"error": item["error"]}
        items.append(item)
    return items


def main() -> None:
    """Start RunPod's worker loop with the gpuflex handler."""
    os.environ[IN_WORKER_ENV] = "1"
    import runpod

    concurrency = max(1, int(os.environ.get("GPUFLEX_CONCURRENCY", "1")))
    runpod.serverless.start({
        "handler": handler,
        "return_aggregate_stream": True,
        "concurrency_modifier": lambda current: concurrency,
    })


if __name__ == "__main__":
    main()
