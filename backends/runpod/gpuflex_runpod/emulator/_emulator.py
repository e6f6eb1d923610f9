"""The emulator's engine: endpoints, the job queue, and the worker processes it starts, stops and watches."""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shlex
import shutil
import signal
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

import anyio

from ._images import Images, flavour_memory_failure, fresh_env
from ._state import TERMINAL, EmulatedEndpoint, EmulatedJob, EmulatedWorker, new_job_id

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["Emulator"]

TICK_SECONDS = 0.05
STOP_GRACE_SECONDS = 5.0  # a stopped job's worker must let go of it (ask for work again) within this, or be killed


# Each worker runs under this tiny supervisor (the leader of the worker's process group). It asks Linux for SIGTERM
# when the emulator dies (PR_SET_PDEATHSIG), and then kills the whole group: the worker and the heartbeat process
# the runpod SDK forks, which would otherwise outlive a killed emulator.
_SUPERVISOR = """
import ctypes, os, signal, sys
signal.signal(signal.SIGTERM, lambda *_: os.killpg(0, signal.SIGKILL))
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
if os.getppid() != int(sys.argv[1]):
    os.killpg(0, signal.SIGKILL)
child = os.fork()
if child == 0:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.execvp(sys.argv[2], sys.argv[2:])
code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
sys.exit(code if code >= 0 else 128 - code)
"""


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Emulator:
    """RunPod Serverless on this machine. ``base_url`` is where workers reach the webhooks (``http://host:port``)."""

    def __init__(self, *, api_key: str, base_url: str, log_dir: Path, worker_command: list[str] | None = None,
                 stop_grace: float = STOP_GRACE_SECONDS, images: dict[str, Path] | None = None,
                 package_cache: Path | None = None, volumes: Path | None = None) -> None:
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.log_dir = log_dir
        self.images = Images(log_dir / "images", images)
        self.package_cache = package_cache
        self.volumes = volumes or log_dir / "volumes"  # one directory per network volume id
        self.worker_command = worker_command or [sys.executable, "-m", "gpuflex_runpod.worker"]
        self.stop_grace = stop_grace
        self.endpoints: dict[str, EmulatedEndpoint] = {}
        self.jobs: dict[str, EmulatedJob] = {}
        self.faults: list[dict[str, Any]] = []
        self.task_group: anyio.abc.TaskGroup | None = None
        self.worker_pids: dict[str, int] = {}
        self.closing = False  # set when the server stops: long polls answer at once

    # -- control plane (what GraphQL creates and changes lives in ``_controlplane``) ------------------------------

    async def delete_endpoint(self, endpoint_id: str) -> None:
        endpoint = self.endpoints.pop(endpoint_id, None)
        if endpoint is None:
            raise LookupError(f"endpoint {endpoint_id} not found")
        for job_id in list(endpoint.queue):
            self.jobs[job_id].finish("CANCELLED", error="the endpoint was deleted")
        endpoint.queue.clear()
        for worker in list(endpoint.workers.values()):
            await self.stop_worker(worker, kill=True)

    # -- jobs ---------------------------------------------------------------------------------------------------

    def submit(self, endpoint: EmulatedEndpoint, body: dict[str, Any], *, sync: bool = False) -> EmulatedJob:
        policy = body.get("policy") or {}
        timeout_ms = int(policy.get("executionTimeout") or endpoint.execution_timeout_ms)
        job = EmulatedJob(id=("sync-" if sync else "") + new_job_id(), endpoint_id=endpoint.id, input=body["input"],
                          execution_timeout_ms=timeout_ms)
        self.jobs[job.id] = job
        endpoint.queue.append(job.id)
        endpoint.changed.notify()
        return job

    def take_jobs(self, endpoint: EmulatedEndpoint, worker: EmulatedWorker, count: int) -> list[EmulatedJob]:
        taken: list[EmulatedJob] = []
        while endpoint.queue and len(taken) < count and worker.version == endpoint.version and not worker.stopping:
            job = self.jobs.get(endpoint.queue.popleft())
            if job is None or job.status != "IN_QUEUE":
                continue
            job.status, job.started, job.worker_id = "IN_PROGRESS", time.monotonic(), worker.id
            worker.jobs.add(job.id)
            job.changed.notify()
            taken.append(job)
        return taken

    def job_done(self, worker: EmulatedWorker, job: EmulatedJob, body: dict[str, Any]) -> None:
        worker.jobs.discard(job.id)
        if not worker.jobs:
            worker.idle_since = time.monotonic()
        if job.status != "IN_PROGRESS" or job.worker_id != worker.id:
            return  # cancelled or timed out meanwhile: the late result is dropped, as on RunPod
        endpoint = self.endpoints.get(job.endpoint_id)
        if body.get("error"):
            job.finish("FAILED", output=body.get("output"), error=body["error"])
            if endpoint:
                endpoint.failed += 1
        else:
            job.finish("COMPLETED", output=body.get("output"))
            if endpoint:
                endpoint.completed += 1
        if body.get("stopPod"):
            self._spawn(self.stop_worker, worker)
        if endpoint:
            endpoint.changed.notify()

    def stop_job(self, job: EmulatedJob, status: str, reason: str) -> None:
        """Cancel or time out a job: queued ones leave the queue; a running one gets a stop signal, and its worker
        is killed unless it lets go of the job within the grace period."""
        endpoint = self.endpoints.get(job.endpoint_id)
        if job.status == "IN_QUEUE" and endpoint is not None:
            with contextlib.suppress(ValueError):
                endpoint.queue.remove(job.id)
        elif job.status == "IN_PROGRESS" and endpoint is not None and job.worker_id in endpoint.workers:
            worker = endpoint.workers[job.worker_id]
            worker.jobs.discard(job.id)
            worker.to_stop.append(job.id)
            worker.stop_signal.notify()
            worker.kill_at = time.monotonic() + self.stop_grace
        job.finish(status, error=reason if status != "CANCELLED" else None)
        if status == "TIMED_OUT" and endpoint is not None:
            endpoint.failed += 1

    # -- workers ------------------------------------------------------------------------------------------------

    def _spawn(self, func: Any, *args: Any) -> None:
        assert self.task_group is not None, "the emulator is not running"
        self.task_group.start_soon(func, *args)

    def _worker_env(self, endpoint: EmulatedEndpoint, worker: EmulatedWorker, path: Path) -> dict[str, str]:
        """A fresh container's environment (see :mod:`._images`), the template's env, and RunPod's variables."""
        volume_id = endpoint.settings.get("networkVolumeId")
        env = fresh_env(path, self.log_dir / "containers" / worker.id, self.package_cache,
                        self.volumes / str(volume_id) if volume_id else None)
        env.update({str(item["key"]): str(item["value"]) for item in endpoint.template.get("env") or []})
        v2 = f"{self.base_url}/v2/{endpoint.id}"
        env.update({
            "RUNPOD_WEBHOOK_GET_JOB": f"{v2}/job-take/$ID?gpu=emulated",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{v2}/job-done/$RUNPOD_POD_ID/$ID?gpu=emulated",
            "RUNPOD_WEBHOOK_POST_STREAM": f"{v2}/job-stream/$RUNPOD_POD_ID/$ID?gpu=emulated",
            "RUNPOD_WEBHOOK_PING": f"{v2}/ping/$RUNPOD_POD_ID?gpu=emulated",
            "RUNPOD_PING_INTERVAL": "2000",
            "RUNPOD_POD_ID": worker.id,
            "RUNPOD_AI_API_KEY": worker.key,
            "RUNPOD_ENDPOINT_ID": endpoint.id,
            "RUNPOD_SKIP_GPU_CHECK": "true",
            "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
            "PYTHONUNBUFFERED": "1",
        })
        return env

    def start_worker(self, endpoint: EmulatedEndpoint) -> EmulatedWorker:
        worker = EmulatedWorker(id=f"emu-{uuid.uuid4().hex[:10]}", endpoint_id=endpoint.id,
                                key=secrets.token_hex(16), version=endpoint.version)
        endpoint.workers[worker.id] = worker
        self._spawn(self._run_worker, endpoint, worker)
        return worker

    async def _run_worker(self, endpoint: EmulatedEndpoint, worker: EmulatedWorker) -> None:
        args = endpoint.template.get("dockerArgs") or ""
        command = shlex.split(args) if args.strip() else self.worker_command
        path, note = await anyio.to_thread.run_sync(self.images.bin_for, str(endpoint.template.get("imageName")))
        env = self._worker_env(endpoint, worker, path)
        if sys.platform == "linux":  # the worker dies with the emulator, however the emulator ends
            command = [sys.executable, "-c", _SUPERVISOR, str(os.getpid()), *command]
            if not os.path.isabs(command[4]):  # the image's program, as the container would find it
                command[4] = shutil.which(command[4], path=env["PATH"]) or command[4]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{endpoint.id}-{worker.id}.log"
        code: int | None = None
        try:
            with open(log_path, "ab") as log:  # noqa: ASYNC230 - opened once per worker process
                failure = flavour_memory_failure(endpoint.settings, env)
                for line in (note, failure):
                    if line:
                        log.write(f"{line}\n".encode())
                if failure:
                    code = 1
                    return
                process = await anyio.open_process(command, env=env, stdin=None,
                                                   stdout=log, stderr=log, start_new_session=True)
                worker.process = process
                self.worker_pids[worker.id] = process.pid
                try:
                    code = await process.wait()
                finally:  # its children too (the SDK's heartbeat process), and on the emulator's way out
                    _kill_group(process.pid)
        finally:
            self._worker_gone(endpoint, worker, code)

    def _worker_gone(self, endpoint: EmulatedEndpoint, worker: EmulatedWorker, code: int | None) -> None:
        endpoint.workers.pop(worker.id, None)
        self.worker_pids.pop(worker.id, None)
        shutil.rmtree(self.log_dir / "containers" / worker.id, ignore_errors=True)  # its container disk
        if worker.state == "initializing" and not worker.stopping:  # died before asking for work: back off
            endpoint.crashes += 1
            endpoint.restart_at = time.monotonic() + min(10.0, 0.5 * 2 ** endpoint.crashes)
        worker.stopping = True  # a job-take it still has open must not hand it a job now
        worker.stop_signal.notify()
        for job_id in worker.jobs:
            job = self.jobs.get(job_id)
            if job is not None and job.status == "IN_PROGRESS":
                job.finish("FAILED", error=f"worker {worker.id} exited (code {code}) while running the job: "
                                           "the worker was lost")
                endpoint.failed += 1
        worker.jobs.clear()
        endpoint.changed.notify()

    async def stop_worker(self, worker: EmulatedWorker, *, kill: bool = False) -> None:
        """Scale a worker down (SIGTERM, then SIGKILL after a second) or kill it at once."""
        worker.stopping = True
        worker.stop_signal.notify()
        process = worker.process
        if process is None or process.returncode is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        except ProcessLookupError:
            return
        if not kill:
            with anyio.move_on_after(1.0):
                await process.wait()
            if process.returncode is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    # -- the supervisor: scaling, idle timeouts, execution timeouts ----------------------------------------------

    def tick(self) -> None:
        now = time.monotonic()
        running = [self.jobs[j] for e in self.endpoints.values() for w in e.workers.values() for j in w.jobs]
        for job in running:
            if job.status == "IN_PROGRESS" and job.started is not None:
                if (now - job.started) * 1000 > job.execution_timeout_ms:
                    self.stop_job(job, "TIMED_OUT", f"execution timeout of {job.execution_timeout_ms} ms exceeded")
        for endpoint in list(self.endpoints.values()):
            for worker in list(endpoint.workers.values()):
                if worker.kill_at is not None and now >= worker.kill_at and not worker.stopping:
                    worker.kill_at, worker.stopping = None, True
                    self._spawn(functools.partial(self.stop_worker, worker, kill=True))
            for worker in endpoint.idle_to_stop(now):
                worker.stopping = True
                self._spawn(self.stop_worker, worker)
            missing = endpoint.wanted_workers(self.jobs, now) - len(endpoint.live_workers())
            if now < endpoint.restart_at:  # workers crash at start: RunPod retries them less and less often
                continue
            for _ in range(max(0, missing)):
                self.start_worker(endpoint)

    async def run(self) -> None:
        """Run the supervisor until cancelled; then kill every worker."""
        try:
            async with anyio.create_task_group() as tg:
                self.task_group = tg
                while True:
                    self.tick()
                    await anyio.sleep(TICK_SECONDS)
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        self.closing = True
        for pid in list(self.worker_pids.values()):
            _kill_group(pid)

    def health(self, endpoint: EmulatedEndpoint) -> dict[str, Any]:
        live = endpoint.live_workers()
        queued = sum(1 for j in endpoint.queue if self.jobs.get(j) and self.jobs[j].status == "IN_QUEUE")
        return {
            "jobs": {"completed": endpoint.completed, "failed": endpoint.failed, "inProgress": endpoint.in_progress(),
                     "inQueue": queued, "retried": endpoint.retried},
            "workers": {
                "idle": sum(1 for w in live if w.state == "ready" and not w.jobs),
                "initializing": sum(1 for w in live if w.state == "initializing"),
                "ready": sum(1 for w in live if w.state == "ready"),
                "running": sum(1 for w in live if w.jobs),
                "throttled": 0,
                "unhealthy": endpoint.crashes,
            },
        }

    def is_terminal(self, job: EmulatedJob) -> bool:
        return job.status in TERMINAL
