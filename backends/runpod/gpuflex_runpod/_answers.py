"""What RunPod and the worker say about a job, applied to its calls: a ``/status`` answer, the items the worker
yielded (see :mod:`._protocol`), and how the job ended. A mixin of :class:`._jobs.JobPath`."""

from __future__ import annotations

import base64
import logging
import time
from typing import TYPE_CHECKING, Any

import attrs

from gpuflex import JobStatus
from gpuflex.backend import JobUpdate, Payload

from ._protocol import missing_bundle, parse_error

if TYPE_CHECKING:
    from ._backend import RunPodBackend
    from ._lanes import CallState, Lane, RemoteJob

__all__ = ["STATUSES", "Answers"]

log = logging.getLogger("gpuflex.runpod")

STATUSES = {"IN_QUEUE": JobStatus.QUEUED, "IN_PROGRESS": JobStatus.RUNNING, "RUNNING": JobStatus.RUNNING,
            "COMPLETED": JobStatus.COMPLETED, "FAILED": JobStatus.FAILED, "CANCELLED": JobStatus.CANCELLED,
            "TIMED_OUT": JobStatus.TIMED_OUT}


def _decode(pieces: list[str] | None, last: str) -> Payload:
    return Payload.from_bytes(base64.b64decode("".join([*(pieces or ()), last])))


class Answers:
    backend: RunPodBackend

    def dispatch(self, lane: Lane) -> None:
        raise NotImplementedError

    async def _get(self, job: RemoteJob, op: str) -> dict[str, Any]:
        raise NotImplementedError

    def _requeue(self, calls: list[CallState]) -> None:
        """Calls that never ran (or must run alone) go back to the front of their lane."""
        for call in reversed(calls):
            call.job, call.parts = None, None
            call.lane.pending.appendleft(call)

    def _end(self, call: CallState, update: JobUpdate) -> None:
        """Tell the caller ``update``; a terminal one ends the call (its payload is dropped). A running call keeps
        its payload: its job may still fail because the worker lacked the code, and then goes out again."""
        call.update, call.parts, call.answer = update, None, None
        if update.status.is_terminal:
            call.payload = None
        call.notify()

    def _fail(self, call: CallState, error: BaseException) -> None:
        if not call.done:
            call.error, call.payload = error, None
            call.notify()

    def _leave_queue(self, job: RemoteJob) -> None:
        if job.counted:
            job.counted = False
            job.lane.queued -= 1
            self.dispatch(job.lane)

    async def _seen(self, job: RemoteJob, body: dict[str, Any]) -> None:
        """A ``/status`` (or ``/runsync``) answer."""
        if body.get("status") == "GONE":
            reason = (f"RunPod no longer knows job {job.remote_id} (results are kept 30 minutes after a job ends, "
                      "and go with a deleted endpoint)")
            for call in job.open_calls():
                self._end(call, JobUpdate(status=JobStatus.FAILED, reason=reason))
            job.ended = True
            return
        status = STATUSES.get(str(body.get("status")), JobStatus.QUEUED)
        job.worker = body.get("workerId") or job.worker
        if status is not JobStatus.QUEUED and not job.running:
            job.running = True
            self._leave_queue(job)
            if not job.pack and status is JobStatus.RUNNING:
                call = job.calls[0]
                if not call.done:
                    self._end(call, self._timing(job, body, JobStatus.RUNNING))
        if status.is_terminal:
            await self._ended(job, body, status)

    def _timing(self, job: RemoteJob, body: dict[str, Any], status: JobStatus) -> JobUpdate:
        started = finished = billed = None
        if body.get("delayTime") is not None:
            started = job.submitted_at + float(body["delayTime"]) / 1000
            if body.get("executionTime") is not None:
                billed = float(body["executionTime"]) / 1000  # the price adds the idle tail and rounds up
                finished = started + billed
        return JobUpdate(status=status, worker=job.worker, started_at=started, finished_at=finished,
                         billed_seconds=billed if status.is_terminal else None)

    # -- what the worker sent -------------------------------------------------------------------------------------

    def _items(self, job: RemoteJob, items: list[Any]) -> None:
        requeue: list[CallState] = []
        for item in items:
            if not isinstance(item, dict):
                continue
            worker = str(item.get("worker") or job.worker or "?")
            for stream, text in item.get("lines") or ():
                self.backend.worker_output(job.lane.name, worker, str(stream), str(text))
            for event in item.get("events") or ():
                if isinstance(event, list) and len(event) == 4 and isinstance(event[0], int):
                    self._event(job, event, requeue)
        if requeue:
            self._requeue(requeue)
            self.dispatch(job.lane)

    def _event(self, job: RemoteJob, event: list[Any], requeue: list[CallState]) -> None:
        index, kind, data, seconds = event
        if not 0 <= index < len(job.calls):
            return
        call = job.calls[index]
        if call.job is not job or call.done or call.answer is not None:
            return
        now = time.time()
        if kind == "started":
            call.update = JobUpdate(status=JobStatus.RUNNING, worker=job.worker, started_at=now)
            call.notify()
        elif kind in ("chunk_part", "result_part"):
            call.parts = [*(call.parts or ()), str(data)]
        elif kind == "chunk" and call.chunks is not None:
            chunk = _decode(call.parts, str(data))
            call.parts = None
            call.chunks.send_nowait(chunk)
        elif kind in ("result", "failed"):
            outcome = _decode(call.parts, str(data)) if kind == "result" else _decode(None, str(data))
            if kind == "result":
                deployment = self.backend.deployed.get(job.lane.name)
                slots = deployment.spec.calls_per_worker if deployment else 1
                job.lane.learn(seconds, len(data) + sum(map(len, call.parts or ())), slots)
            status = JobStatus.COMPLETED if kind == "result" else JobStatus.FAILED
            started = call.update.started_at or now
            update = JobUpdate(status=status, worker=job.worker, outcome=outcome, started_at=started,
                               finished_at=now, billed_seconds=float(seconds) if seconds is not None else None)
            if job.pack:
                self._end(call, update)
            else:
                call.answer, call.parts = update, None  # a lone call ends with its job
        elif kind == "cancelled":
            self._end(call, JobUpdate(status=JobStatus.CANCELLED, reason="cancelled in the worker"))
        elif kind in ("skipped", "rerun"):
            call.alone = call.alone or kind == "rerun"
            requeue.append(call)

    async def _ended(self, job: RemoteJob, body: dict[str, Any], status: JobStatus) -> None:
        items = body.get("output")
        if isinstance(items, list):
            self._items(job, items[job.seen:])
        elif job.running:  # a failed job's output is not in /status: what /stream had not shown yet
            rest = await self._get(job, "stream")
            self._items(job, [item.get("output") for item in rest.get("stream") or [] if isinstance(item, dict)])
        job.ended = True
        calls = job.open_calls()
        log.debug("RunPod job %s ended %s (%s)", job.remote_id, status.value, body.get("executionTime"))
        if status is JobStatus.COMPLETED:
            for call in calls:
                if call.answer is not None:
                    timing = self._timing(job, body, call.answer.status)
                    self._end(call, attrs.evolve(timing, outcome=call.answer.outcome))
                else:
                    self._end(call, JobUpdate(status=JobStatus.FAILED, reason=(
                        "the RunPod worker ended the job without a gpuflex result for this call (is the image "
                        "gpuflex's worker?)")))
            job.lane.grow(self._slots(job))
            return
        error = body.get("error", "")
        if status is JobStatus.FAILED and missing_bundle(error) and calls:
            job.ended, job.inline, job.resend = False, True, True  # a fresh worker: send the code along
            return
        outcome, message = parse_error(error) if status is JobStatus.FAILED else (None, "")
        requeue = []
        for call in calls:
            started = call.update.status is JobStatus.RUNNING or not job.pack
            timing = self._timing(job, body, status)
            if outcome is not None:
                self._end(call, attrs.evolve(timing, outcome=outcome))
            elif not started and status in (JobStatus.FAILED, JobStatus.TIMED_OUT):
                requeue.append(call)  # a pack's call that never ran
            elif status is JobStatus.FAILED:
                self._end(call, attrs.evolve(timing, retryable=True, reason=(
                    f"the RunPod worker died or was lost outside the function: {message}")))
            elif status is JobStatus.CANCELLED:
                self._end(call, attrs.evolve(timing, reason="cancelled on RunPod"))
            else:
                self._end(call, attrs.evolve(timing, reason=(
                    f"RunPod stopped it at the endpoint's execution timeout ({error or 'executionTimeout'})")))
        if requeue:
            self._requeue(requeue)
            self.dispatch(job.lane)

    def _slots(self, job: RemoteJob) -> int:
        deployment = self.backend.deployed.get(job.lane.name)
        return deployment.spec.calls_per_worker if deployment else 1
