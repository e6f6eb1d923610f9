"""``SubprocessBackend``: every call runs in a fresh worker process of its own, on this machine.

This module is what the core sees: the ``Backend`` methods, in the order the core calls them (see
``gpuflex.backend``). Each submitted call gets one task in the core's task group (``_run``), which waits for a slot
and hands the job to ``_process.run_job``; ``status``, ``updates`` and ``stream`` only read what that task records.
Retries, deadlines, costs and hooks are the core's business, not the backend's.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, ClassVar

import anyio
from gpuflex import Bundle, EndpointSpec, JobStatus, WorkerInfo, WorkerState
from gpuflex.backend import Backend, Call, JobUpdate, Payload
from gpuflex.errors import BackendUnavailable, ConfigError

from ._config import SubprocessConfig
from ._process import STOP_GRACE, SubprocessJob, kill, run_job

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

__all__ = ["SubprocessBackend"]


class SubprocessBackend(Backend):
    """Runs each call in a fresh ``python -m gpuflex.runtime`` process on this machine (POSIX only)."""

    name: ClassVar[str] = "subprocess-example"
    config_cls: ClassVar[type[Any]] = SubprocessConfig
    # None = supported; a string = not supported, and why. The conformance suite skips the checks that need a
    # missing capability, and the core refuses endpoints that need "streaming" or "classes" when they are missing.
    capabilities: ClassVar[Mapping[str, str | None]] = {
        "streaming": None,
        "cancel": None,
        "kill_worker": None,
        "scaling": "one process per job; no pool to scale (only max_workers is honoured)",
        "classes": "one process per job: a class endpoint's setup() and state would not outlive a call",
        "batching": "one process per job: calls never meet in one worker, so each runs as a batch of one",
        "gpu": "no GPU placement: every worker sees all of this machine's devices",
    }
    config: SubprocessConfig

    def __init__(self, config: SubprocessConfig | None = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)  # cheap, no I/O: the core may build backends it never uses
        self.bundles: dict[str, Bundle] = {}  # endpoint name -> code of its latest deploy
        self.slots: dict[str, anyio.CapacityLimiter] = {}  # endpoint name -> at most max_workers processes
        self.jobs: dict[str, SubprocessJob] = {}  # handle -> job, until the core has read its end
        self.running: set[SubprocessJob] = set()  # jobs whose task (and maybe process) is still alive
        self.closed = False

    # -- deployment ---------------------------------------------------------------------------------------

    async def deploy(self, endpoint: EndpointSpec, bundle: Bundle) -> None:
        if self.closed:
            raise BackendUnavailable(f"the {self.name} backend is closed")
        missing = [name for name in endpoint.secrets if name not in os.environ]
        if missing:
            raise ConfigError(f"endpoint {endpoint.name!r} needs the secrets {missing}, which are not set here")
        # Nothing to build or upload: workers import the code straight from the bundle's directory. A hot reload
        # calls deploy again with a new bundle; jobs already running keep the one they were submitted with.
        self.bundles[endpoint.name] = bundle
        limit = max(1, endpoint.max_workers)
        if endpoint.name in self.slots:
            self.slots[endpoint.name].total_tokens = limit
        else:
            self.slots[endpoint.name] = anyio.CapacityLimiter(limit)

    async def teardown(self, endpoint: str | None = None) -> None:
        for name in [endpoint] if endpoint else list(self.bundles):
            self.bundles.pop(name, None)
            for job in [j for j in self.running if j.call.endpoint.name == name]:
                self._stop(job, "the endpoint was torn down")

    # -- jobs ---------------------------------------------------------------------------------------------

    async def submit(self, call: Call) -> str:
        bundle = self.bundles.get(call.endpoint.name)
        if bundle is None or self.closed:
            raise BackendUnavailable(f"endpoint {call.endpoint.name!r} is not deployed on the {self.name} backend")
        streams = call.endpoint.kind_of(call.method).streams
        job = SubprocessJob(f"{call.job_id}-{call.attempt}", call, bundle, streams)  # unique per attempt
        self.jobs[job.handle] = job
        self.running.add(job)
        assert self.task_group is not None, "the core attaches a task group before deploy"
        self.task_group.start_soon(self._run, job)
        return job.handle

    async def status(self, handle: str) -> JobUpdate:
        return self._job(handle).history[-1]

    async def updates(self, handle: str) -> AsyncIterator[JobUpdate]:
        # Overriding this (push) spares the core from polling `status`.
        job = self._job(handle)
        try:
            async for update in job.follow(job.history):
                yield update
        finally:
            self._forget_when_read(job, reader="updates")

    async def stream(self, handle: str) -> AsyncIterator[Payload]:
        job = self._job(handle)
        try:
            async for chunk in job.follow(job.chunks):
                yield chunk
        finally:
            self._forget_when_read(job, reader="stream")

    async def cancel(self, handle: str) -> None:
        job = self.jobs.get(handle)
        if job is not None:
            self._stop(job, "cancelled")

    async def workers(self) -> list[WorkerInfo]:
        return [job.worker for job in self.running if job.worker is not None and job.worker.state is WorkerState.BUSY]

    async def aclose(self) -> None:
        self.closed = True
        for job in list(self.running):
            self._stop(job, f"the {self.name} backend was closed")
        with anyio.move_on_after(2 * STOP_GRACE):  # every process is killed: wait for the tasks to reap them
            for job in list(self.running):
                await job.exited.wait()

    # -- internals ----------------------------------------------------------------------------------------

    async def _run(self, job: SubprocessJob) -> None:
        """One job's task, in the core's task group. The core only logs a task that raises, and the job would
        never end: so every failure here ends the job instead."""
        try:
            async with self.slots[job.call.endpoint.name]:  # queued until fewer than max_workers processes run
                if job.cancel_reason is None:
                    await run_job(job, self.config, self.events)
        except Exception as exc:  # a bug in this backend: fail this job, keep the others running
            job.finish(JobStatus.FAILED, reason=f"{self.name} could not run the job: {type(exc).__name__}: {exc}")
        finally:
            self.running.discard(job)
            job.exited.set()

    def _stop(self, job: SubprocessJob, reason: str) -> None:
        """Cancel a job: a queued one ends at once; a running one ends when its killed process is gone."""
        if job.done:
            return  # cancelling a finished job does nothing
        job.cancel_reason = reason
        if job.process is None:
            job.finish(JobStatus.CANCELLED, reason=f"{reason} before it started")
        else:
            kill(job.process)  # run_job sees the pipes break and reports CANCELLED

    def _job(self, handle: str) -> SubprocessJob:
        try:
            return self.jobs[handle]
        except KeyError:
            raise BackendUnavailable(f"no job {handle!r} on the {self.name} backend") from None

    def _forget_when_read(self, job: SubprocessJob, reader: str) -> None:
        # The core reads a generator job's chunks with `stream` (which can outlast `updates`), and any other job
        # with `updates` alone: forget the job once that last reader has seen its end.
        if job.done and reader == ("stream" if job.streams else "updates"):
            self.jobs.pop(job.handle, None)
