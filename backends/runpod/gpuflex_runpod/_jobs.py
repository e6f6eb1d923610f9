"""The serverless backend's job path: calls go out on their endpoint's lane (see :mod:`._lanes`), one RunPod job
each while the queue is short, in packs while it is long, and one task per RunPod job follows it.

A lone call on an endpoint with nothing queued goes out with ``/runsync`` (RunPod answers when the job ends, or
after a second with its status), so a call to a warm worker costs one request. Otherwise (and after a
``/runsync`` that came back unfinished) the job is polled with ``/status`` while queued and read with ``/stream``
while it runs: what the worker printed, each call's start, generator chunks, and each packed call's result as soon
as it comes, so a pack's calls end one by one. A lone call ends with its job (RunPod bills the job's run time); a
packed call bills its own run time in the worker.

A packed call whose job failed without starting it (a worker lost before it got there, a pack out of result
budget) goes back on the lane; one that had started fails like a lone call would (retryable when the worker was
lost). Cancelling a call ends it at once and stops what it started (see ``JobPath.cancel``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import time
from typing import TYPE_CHECKING, Any

import anyio

from gpuflex import EndpointKind, JobStatus
from gpuflex.backend import JobUpdate, Payload
from gpuflex.errors import BackendUnavailable, GpuflexError, PayloadTooLarge

from ._answers import STATUSES, Answers
from ._control import execution_timeout_ms
from ._lanes import CallState, Lane, RemoteJob, take_pack
from ._protocol import b64encode_payload

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from anyio.streams.memory import MemoryObjectReceiveStream

    from gpuflex.backend import Call

    from ._backend import RunPodBackend

__all__ = ["RUN_LIMIT_BYTES", "JobPath"]

log = logging.getLogger("gpuflex.runpod")

RUN_LIMIT_BYTES = 10 * 1024 * 1024  # RunPod's limit on one /run request body
SYNC_WAIT_MS = 1000  # /runsync's shortest wait
MAX_SYNC = 8  # /runsync requests held open at once (each holds a connection)
MAX_EXECUTION_MS = 7 * 24 * 3600 * 1000  # RunPod's longest executionTimeout


class JobPath(Answers):
    """Calls, lanes and RunPod jobs of one backend instance."""

    def __init__(self, backend: RunPodBackend) -> None:
        self.backend = backend
        self.calls: dict[str, CallState] = {}
        self.lanes: dict[str, Lane] = {}
        self.chunk_streams: dict[str, MemoryObjectReceiveStream[Payload]] = {}
        self.ids = itertools.count(1)
        self.syncs = 0
        self.closed = False
        self.following: set[anyio.CancelScope] = set()  # one per RunPod job followed
        self.drained: anyio.Event | None = None  # set when the last one stops, once closing

    # -- the core's side: submit, updates, status, stream, cancel ----------------------------------------------

    def submit(self, call: Call) -> str:
        name = call.endpoint.name
        if self.backend.deployed.get(name) is None:
            raise BackendUnavailable(f"endpoint {name!r} is not deployed on the serverless backend")
        if self.backend.task_group is None:
            raise BackendUnavailable("the serverless backend was not attached to a task group")
        kind = call.endpoint.kind_of(call.method)
        size = 4 * math.ceil(call.payload.nbytes / 3)
        if size > RUN_LIMIT_BYTES:
            raise PayloadTooLarge(size, RUN_LIMIT_BYTES, "serverless (RunPod's 10 MB /run request limit)")
        lane = self.lanes.get(name) or self.lanes.setdefault(name, Lane(name, self.backend.config.max_pack))
        handle = f"{name}#{next(self.ids)}"
        state = CallState(handle, lane, call.payload, blocking=kind in (EndpointKind.FUNCTION, EndpointKind.GENERATOR),
                          streams=kind.streams)
        if kind.streams:
            state.chunks, self.chunk_streams[handle] = anyio.create_memory_object_stream[Payload](math.inf)
        self.calls[handle] = state
        lane.pending.append(state)
        if not lane.scheduled:  # after the other calls submitted in this burst (a map's), so they can share jobs
            lane.scheduled = True
            self.backend.task_group.start_soon(self._dispatch_soon, lane, name="gpuflex-runpod-dispatch")
        return handle

    async def _dispatch_soon(self, lane: Lane) -> None:
        lane.scheduled = False
        self.dispatch(lane)

    async def updates(self, handle: str) -> AsyncIterator[JobUpdate]:
        call = self.calls.get(handle)
        if call is None:
            yield JobUpdate(status=JobStatus.FAILED, reason=f"the serverless backend knows no job {handle!r}")
            return
        last = None
        while True:
            if call.error is not None:
                self._forget(call)
                raise call.error
            update = call.update
            if update.status is not last:
                last = update.status
                if update.status.is_terminal:
                    self._forget(call)
                yield update
            if update.status.is_terminal:
                return
            call.changed = asyncio.get_running_loop().create_future()
            await call.changed

    async def status(self, handle: str) -> JobUpdate:
        call = self.calls.get(handle)
        if call is None:
            return JobUpdate(status=JobStatus.FAILED, reason=f"the serverless backend knows no job {handle!r}")
        if call.error is not None:
            raise call.error
        return call.update

    async def stream(self, handle: str) -> AsyncIterator[Payload]:
        receive = self.chunk_streams.pop(handle, None)
        if receive is None:
            return
        async with receive:
            async for chunk in receive:
                yield chunk

    async def cancel(self, handle: str) -> None:
        """End the call now, and stop the work it started: its RunPod job is stopped when no call in it is left
        waiting, or when the call was the one running in a pack (its calls not started yet move to another job).
        A pack's call that had not started yet may still run once the pack gets to it; its result is dropped."""
        call = self.calls.get(handle)
        if call is None or call.done:
            return
        job, started = call.job, call.update.status is JobStatus.RUNNING
        self._end(call, JobUpdate(status=JobStatus.CANCELLED, reason="cancelled"))
        if job is None or job.ended:
            return
        rest = job.open_calls()
        if rest and started and not any(other.update.status is JobStatus.RUNNING for other in rest):
            self._requeue(rest)
            self.dispatch(job.lane)
            rest = []
        if not rest:
            await self._stop(job)

    def _forget(self, call: CallState) -> None:
        self.calls.pop(call.handle, None)
        if call.chunks is not None:
            call.chunks.close()

    # -- lanes ----------------------------------------------------------------------------------------------------

    def dispatch(self, lane: Lane) -> None:
        """Send what the lane's free job slots allow: lone calls while few wait, packs while many do."""
        deployment = self.backend.deployed.get(lane.name)
        if deployment is None or self.backend.task_group is None or self.closed:
            return
        spec = deployment.spec
        capacity = max(1, spec.max_workers * spec.calls_per_worker)
        while lane.queued < capacity:
            calls = take_pack(lane, capacity - lane.queued)
            if not calls:
                return
            job = RemoteJob(lane, calls)
            for i, call in enumerate(calls):
                call.job, call.index = job, i
            lane.queued += 1
            self.backend.task_group.start_soon(self._run, job, name=f"gpuflex-runpod-job-{lane.name}")

    async def close(self) -> None:
        """Fail what is still waiting and stop following jobs (their requests cancelled, not left open)."""
        self.closed = True
        error = BackendUnavailable("the serverless backend closed while the call was waiting")
        for call in list(self.calls.values()):
            self._fail(call, error)
        for scope in list(self.following):
            scope.cancel()
        if self.following:
            self.drained = anyio.Event()
            with anyio.move_on_after(5):
                await self.drained.wait()

    # -- one RunPod job -------------------------------------------------------------------------------------------

    async def _run(self, job: RemoteJob) -> None:
        with anyio.CancelScope() as scope:
            self.following.add(scope)
            try:
                while not job.ended and not self.closed:
                    await self._send(job)
                    if not job.ended:
                        await self._follow(job)
            except Exception as exc:
                error = exc if isinstance(exc, GpuflexError) else BackendUnavailable(
                    f"the serverless backend lost track of a RunPod job: {type(exc).__name__}: {exc}")
                for call in job.open_calls():
                    self._fail(call, error)
            finally:
                self.following.discard(scope)
                if not self.following and self.drained is not None:
                    self.drained.set()
                job.ended = True
                self._leave_queue(job)
                self.dispatch(job.lane)

    def _body(self, job: RemoteJob) -> bytes:
        """The ``/run`` body for the job's open calls: a pack too large for RunPod's request limit (the code may
        ride along) sends its later calls back to the lane."""
        deployment = self.backend.deployed.get(job.lane.name)
        if deployment is None:
            raise BackendUnavailable(f"endpoint {job.lane.name!r} is no longer deployed on the serverless backend")
        request = deployment.request
        # the first jobs after a deploy carry the code inline (one per worker that may start); later ones name it by
        # hash, and a worker that lacks it answers "missing" and gets the job again with the code
        inline = job.inline or deployment.inline_left > 0 or ("zip" not in request["bundle"]
                                                              and not deployment.attached)
        if deployment.inline_left > 0:
            deployment.inline_left -= 1
        if not inline:  # by hash (a deployed endpoint's bundle: from the object store)
            request = {**request, "bundle": {k: v for k, v in request["bundle"].items() if k != "zip"},
                       "runtime": {"hash": request["runtime"]["hash"]}}
        job.endpoint_id = str(deployment.remote["id"])
        while True:
            calls = job.open_calls()
            payloads = [b64encode_payload(call.payload) for call in calls if call.payload is not None]
            body: dict[str, Any] = {"input": {"gpuflex": {
                **request, "calls": payloads, "blocking": any(call.blocking for call in calls)}}}
            rounds = math.ceil(len(calls) / max(1, deployment.spec.calls_per_worker))
            if deployment.spec.timeout or rounds > 1:  # RunPod's backstop: each call's, for the pack's calls in turn
                limit = execution_timeout_ms(deployment.spec.timeout) * rounds
                body["policy"] = {"executionTimeout": min(limit, MAX_EXECUTION_MS)}
            content = json.dumps(body).encode()
            if len(content) <= RUN_LIMIT_BYTES:
                return content
            if len(calls) < 2:
                raise PayloadTooLarge(len(content), RUN_LIMIT_BYTES, "serverless (RunPod's 10 MB /run request limit)")
            self._requeue(calls[len(calls) // 2:])
            self.dispatch(job.lane)

    async def _send(self, job: RemoteJob) -> None:
        """``POST /run`` (or ``/runsync``) for the job's open calls. An endpoint that vanished is created again."""
        if not job.open_calls():  # every call in it was cancelled before it went out
            job.ended = True
            return
        sync = not job.pack and not job.calls[0].streams and job.lane.queued == 1 and self.syncs < MAX_SYNC
        op = f"runsync?wait={SYNC_WAIT_MS}" if sync else "run"
        for attempt in (1, 2):
            content = self._body(job)
            sent = time.time()  # RunPod's delayTime counts from here
            self.syncs += sync
            try:
                with self.backend.errors(f"submit a job to {job.lane.name!r}"):
                    response = await self.backend.api.request(
                        "POST", self.backend.url(job.endpoint_id, op), content=content, creates_job=True, pace="run")
            finally:
                self.syncs -= sync
            if response.status_code != 404:
                break
            if attempt == 2:
                raise BackendUnavailable(f"RunPod endpoint {job.endpoint_id} for {job.lane.name!r} is gone, and "
                                         "so is the one gpuflex created again in its place")
            await self.backend.redeploy(job.lane.name, job.endpoint_id)
        body = response.json()
        log.debug("sent RunPod job %s with %d call(s) to %s (%s)", body.get("id"), len(job.open_calls()),
                  job.lane.name, op)
        job.remote_id, job.running, job.seen, job.submitted_at = str(body["id"]), False, 0, sent
        job.quiet_since, job.resend, job.cancel_sent = time.time(), False, False
        if not job.open_calls():  # cancelled while it was being sent
            await self._stop(job)
        if sync:
            await self._seen(job, body)

    async def _stop(self, job: RemoteJob) -> None:
        """``/cancel`` the job (once it has an id: a job being sent is stopped as soon as RunPod names it)."""
        if job.remote_id and not job.cancel_sent:
            job.cancel_sent = True
            with self.backend.errors(f"cancel job {job.remote_id}"):
                await self.backend.api.request("POST", self.backend.url(job.endpoint_id, f"cancel/{job.remote_id}"),
                                               pace="cancel")

    async def _get(self, job: RemoteJob, op: str) -> dict[str, Any]:
        with self.backend.errors(f"follow job {job.remote_id}"):
            response = await self.backend.api.request("GET", self.backend.url(job.endpoint_id,
                                                                              f"{op}/{job.remote_id}"), pace="status")
        if response.status_code == 404:
            return {"status": "GONE"}
        body: dict[str, Any] = response.json()
        return body

    async def _follow(self, job: RemoteJob) -> None:
        """Poll ``/status`` while the job is queued, then ``/stream`` until it ends; a job queued longer than
        ``queue_timeout`` with no sign of progress on its endpoint fails with the endpoint's health."""
        delay = 0.02
        config = self.backend.config
        while not job.ended and not self.closed:
            if not job.running:
                await self._seen(job, await self._get(job, "status"))
            else:
                body = await self._get(job, "stream")
                fresh = [item.get("output") for item in body.get("stream") or [] if isinstance(item, dict)]
                job.seen += len(fresh)
                self._items(job, fresh)
                if fresh:
                    delay = 0.02
                if STATUSES.get(str(body.get("status")), JobStatus.RUNNING).is_terminal or body["status"] == "GONE":
                    await self._seen(job, await self._get(job, "status"))
            if job.ended or job.resend:
                return
            if not job.running and config.queue_timeout is not None \
                    and time.time() - job.quiet_since > config.queue_timeout:
                await self._check_stuck(job)
                if job.ended:
                    return
            await anyio.sleep(delay)
            delay = min(delay * 1.5, config.poll_interval_max)

    async def _check_stuck(self, job: RemoteJob) -> None:
        """Nothing when the endpoint shows progress (a worker starting or busy, jobs finishing): the job is only
        waiting its turn or for a cold start, and the clock starts again. Else stop it, and fail its calls and
        those waiting behind it, saying why."""
        with self.backend.errors("read the endpoint's health"):
            response = await self.backend.api.request("GET", self.backend.url(job.endpoint_id, "health"))
        health = response.json()
        workers, jobs = health.get("workers") or {}, health.get("jobs") or {}
        progress = (int(jobs.get("completed", 0)) + int(jobs.get("failed", 0)), int(jobs.get("inProgress", 0)))
        busy = any(int(workers.get(k, 0)) for k in ("initializing", "running")) or progress[1] > 0
        if busy or (job.progress is not None and progress != job.progress):
            job.progress, job.quiet_since = progress, time.time()
            return
        job.progress = progress
        waited = time.time() - job.submitted_at
        reason = (
            f"stuck IN_QUEUE on RunPod for {waited:.0f} s, {self.backend.config.queue_timeout:g} s of them "
            f"(queue_timeout) with no worker starting or running a job; endpoint health: {json.dumps(health)}. "
            "Workers that start and die usually mean a crash-looping image (see the endpoint's logs); none at all "
            "means no GPU stock in the chosen pools, or a workersMax of 0 (RunPod lowers it on endpoints idle for "
            "a week)")
        stuck = [*job.open_calls(), *job.lane.pending]
        job.lane.pending.clear()
        for call in stuck:
            self._end(call, JobUpdate(status=JobStatus.FAILED, reason=reason))
        job.ended = True
        await self._stop(job)
