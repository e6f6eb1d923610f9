"""``RunPodBackend``: each gpuflex endpoint is a RunPod Serverless endpoint running the generic gpuflex worker
image; each call is one RunPod job (``/run``, polled with ``/status``, streamed with ``/stream``)."""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import anyio
import attrs

from gpuflex import EndpointKind, JobStatus, WorkerInfo, WorkerState
from gpuflex.backend import Backend, Call, DeployedEndpoint, EndpointPlan, JobUpdate, Payload, Release, Version
from gpuflex.errors import BackendUnavailable, ConfigError, PayloadTooLarge, VersionMismatch
from gpuflex.worker import worker_init

from ._bootstrap import runtime_ref
from ._config import RunPodConfig
from ._control import ControlPlane, deploy_hash, execution_timeout_ms
from ._errors import RunPodApi, find_api_key, map_errors
from ._pricing import serverless_price
from ._protocol import (
    PROTOCOL_VERSION,
    b64encode_payload,
    init_to_json,
    join_parts,
    missing_bundle,
    parse_error,
    zip_bundle,
)
from ._release import Releases
from ._store import ObjectStore, store_settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from gpuflex import Bundle, EndpointSpec, Price

__all__ = ["RunPodBackend"]

log = logging.getLogger("gpuflex.runpod")


RUN_LIMIT_BYTES = 10 * 1024 * 1024  # RunPod's limit on one /run request body
_STATUSES = {"IN_QUEUE": JobStatus.QUEUED, "IN_PROGRESS": JobStatus.RUNNING, "RUNNING": JobStatus.RUNNING,
             "COMPLETED": JobStatus.COMPLETED, "FAILED": JobStatus.FAILED, "CANCELLED": JobStatus.CANCELLED,
             "TIMED_OUT": JobStatus.TIMED_OUT}


@attrs.define
class _Deployment:
    spec: EndpointSpec
    remote: dict[str, Any]  # the endpoint as RunPod returned it (id, name, ...)
    digest: str
    request: dict[str, Any]  # the part of every job's input that names the code: init, bundle, dependencies
    inline_left: int = 0  # jobs that still carry the bundle inline (a fresh bundle: one per possible worker)
    extra_env: dict[str, str] | None = None  # template variables besides the spec's (the object store)
    attached: bool = False  # a deployed endpoint this instance calls as it is (``env``): never changed or deleted


@attrs.define
class _Job:
    endpoint: str
    endpoint_id: str
    remote_id: str  # the RunPod job now running the call (a resubmission with the bundle inline replaces it)
    request: dict[str, Any]  # the job's gpuflex input, kept to resend it with the bundle
    execution_timeout: float | None = None
    submitted_at: float = attrs.field(factory=time.time)
    moved: anyio.Event = attrs.field(factory=anyio.Event)  # set when resent (new remote id) or finished
    seen: int = 0  # items of the job's output already read from /stream
    chunk_parts: list[str] = attrs.field(factory=list)
    chunks: MemoryObjectSendStream[Payload] | None = None  # generator calls: chunks for ``stream``
    quiet_since: float = attrs.field(factory=time.time)  # last sign of progress while queued (queue_timeout)
    progress: tuple[int, ...] | None = None
    output: Any = None  # the job's aggregated output, once it completed

    def move(self) -> None:
        self.moved.set()
        self.moved = anyio.Event()
        self.seen, self.chunk_parts = 0, []


class RunPodBackend(Backend):
    """RunPod Serverless (or the offline emulator, with ``api_url`` pointing at it)."""

    name: ClassVar[str] = "serverless"
    aliases: ClassVar[tuple[str, ...]] = ("runpod",)
    config_cls: ClassVar[type[Any]] = RunPodConfig
    capabilities: ClassVar[Mapping[str, str | None]] = {
        "gpu": None, "streaming": None, "classes": None, "cancel": None, "kill_worker": None, "scaling": None,
        "worker_output": None, "releases": None,
    }
    # a payload travels base64-encoded (4/3 larger) inside a /run body of at most 10 MB
    max_payload_bytes: ClassVar[int | None] = RUN_LIMIT_BYTES * 3 // 4 - 256 * 1024
    config: RunPodConfig

    def __init__(self, config: RunPodConfig | None = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._api: RunPodApi | None = None
        self.deployed: dict[str, _Deployment] = {}
        self.jobs: dict[str, _Job] = {}
        self._bundle_refs: dict[str, dict[str, Any]] = {}
        self._chunk_streams: dict[str, MemoryObjectReceiveStream[Payload]] = {}
        self._listing: list[dict[str, Any]] | None = None
        self._closed = False
        self._published = False  # gpuflex deploy: the endpoints outlive this instance
        self._store: ObjectStore | None = None
        self._store_checked = False
        self.releases = Releases(self)

    # -- connection -------------------------------------------------------------------------------------------

    @property
    def api(self) -> RunPodApi:
        if self._api is None:
            if self._closed:
                raise BackendUnavailable("the serverless backend is closed")
            self._api = RunPodApi(self.config, find_api_key(self.config))
        return self._api

    def _errors(self, what: str) -> Any:
        return map_errors(what, self._api.api_key if self._api else self.config.api_key)

    errors = _errors

    async def object_store(self, *, required: bool) -> ObjectStore | None:
        """The object store (``store_bucket``, or the network volume through RunPod's S3 API), or None when none
        is configured and ``required`` is False. A store named without credentials is a ``ConfigError``."""
        if self._store is None and (required or not self._store_checked):
            self._store_checked = True
            explicit = bool(self.config.store_bucket or self.config.store_access_key
                            or os.environ.get("RUNPOD_S3_ACCESS_KEY"))
            if not required and not explicit:
                return None  # development without S3 keys: bundles ride in the jobs
            if not (self.config.store_bucket or self.config.network_volume_id):
                raise ConfigError(
                    "gpuflex deploy keeps the endpoints' code in an object store, and none is set: attach a network "
                    "volume (network_volume_id, with RunPod S3 API keys in RUNPOD_S3_ACCESS_KEY and "
                    "RUNPOD_S3_SECRET_KEY) or name an S3 bucket (store_bucket, store_endpoint_url, store_region)")
            centre = None
            if self.config.network_volume_id and not (self.config.store_region and self.config.store_endpoint_url):
                with self._errors("find the network volume's data centre"):
                    centre = await self.control.volume_data_centre(self.config.network_volume_id)
            settings = store_settings(self.config, centre)
            if settings is not None:
                self._store = ObjectStore(settings, timeout=max(300.0, self.config.request_timeout))
        return self._store

    @property
    def control(self) -> ControlPlane:
        return ControlPlane(self.api, self.config)

    # -- deployment -------------------------------------------------------------------------------------------

    def _bundle_ref(self, bundle: Bundle, store: bool = False) -> dict[str, Any]:
        """How jobs name the bundle: a path on the shared volume, the zip inline (once built, reused), or (over
        the inline limit, with an object store) ``{"hash", "store": True}``: the zip is uploaded by the caller."""
        ref = self._bundle_refs.get(bundle.hash)
        if ref is not None:
            return ref
        if self.config.shared_bundle_dir:
            target = Path(self.config.shared_bundle_dir) / bundle.hash
            if not target.is_dir():
                staging = target.with_name(f".{bundle.hash}.tmp")
                shutil.rmtree(staging, ignore_errors=True)
                shutil.copytree(bundle.root, staging, symlinks=False)
                staging.replace(target)
            ref = {"hash": bundle.hash, "path": str(target)}
        else:
            archive = zip_bundle(bundle)
            if len(archive) > self.config.inline_bundle_limit and store:
                return {"hash": bundle.hash, "store": True, "archive": archive}
            if len(archive) > self.config.inline_bundle_limit:
                raise ConfigError(
                    f"the project bundle zips to {len(archive):,} bytes, over inline_bundle_limit "
                    f"({self.config.inline_bundle_limit:,}); set up an object store (a network volume and RunPod "
                    "S3 API keys in RUNPOD_S3_ACCESS_KEY / RUNPOD_S3_SECRET_KEY, or store_bucket), set "
                    "shared_bundle_dir to a network volume the workers mount, or exclude large files (.gitignore)"
                )
            ref = {"hash": bundle.hash, "zip": base64.b64encode(archive).decode("ascii")}
        self._bundle_refs[bundle.hash] = ref
        return ref

    async def deploy(self, endpoint: EndpointSpec, bundle: Bundle) -> None:
        if self._closed:
            raise BackendUnavailable("the serverless backend is closed")
        if self.config.env is not None:
            await self._attach(endpoint, bundle)
            return
        store = await self.object_store(required=False)
        ref = await anyio.to_thread.run_sync(self._bundle_ref, bundle, store is not None)
        if "archive" in ref:  # over the inline limit: through the object store, once per hash
            assert store is not None
            with self._errors("upload the bundle"):
                await store.put_once(f"bundles/{bundle.hash}.zip", ref.pop("archive"))
            self._bundle_refs[bundle.hash] = ref
        extra = store.settings.worker_env() if store is not None else None
        init = init_to_json(worker_init(endpoint, bundle, report_started=False, bundle_root="."))
        request = {"version": PROTOCOL_VERSION, "init": init, "bundle": ref, "runtime": runtime_ref()}
        digest = deploy_hash(endpoint, self.config, extra)
        current = self.deployed.get(endpoint.name)
        if current is not None and current.digest == digest:
            if current.request["bundle"]["hash"] != ref["hash"]:  # new code only: the next jobs carry it
                current.inline_left = endpoint.max_workers
            current.spec, current.request = endpoint, request
            return
        remote_name = f"{self.config.name_prefix}{endpoint.name}"
        with self._errors(f"deploy endpoint {endpoint.name!r}"):
            existing = current.remote if current else await self._find(remote_name)
            # adopted as it is when its live settings are what this deploy would send, else updated in place
            remote = await self.control.ensure(endpoint, name=remote_name, digest=digest, existing=existing,
                                               extra_env=extra)
        self.deployed[endpoint.name] = _Deployment(spec=endpoint, remote=remote, digest=digest, request=request,
                                                   inline_left=endpoint.max_workers, extra_env=extra)

    async def _attach(self, endpoint: EndpointSpec, bundle: Bundle) -> None:
        """``env`` set: call the endpoint ``gpuflex deploy --env`` made, as it is (nothing is created or changed),
        running its deployed code: the jobs name the release's bundle, which its workers fetched at start."""
        if endpoint.name in self.deployed:
            return
        env = self.config.env
        assert env is not None
        store = await self.object_store(required=True)
        assert store is not None
        with self._errors(f"find the deployed endpoint {endpoint.name!r}"):
            remote = await self._find(self.releases.remote_name(env, endpoint.name))
            variables = {str(i["key"]): str(i["value"]) for i in (remote or {}).get("template", {}).get("env") or []}
            manifest = await store.get_json(f"releases/{variables.get('GPUFLEX_RELEASE')}.json") if remote else None
        if remote is None or manifest is None:
            raise BackendUnavailable(f"endpoint {endpoint.name!r} is not deployed in environment {env!r}: run "
                                     f"`gpuflex deploy APP.py --backend serverless --env {env}` first")
        runtime = runtime_ref()
        if manifest["runtime"] != runtime["hash"]:
            raise VersionMismatch("gpuflex runtime", runtime["hash"], f"{manifest['runtime']} (deployed to "
                                  f"{remote['name']}: deploy again from here, or call it with plain JSON)")
        if manifest["bundle"] != bundle.hash:
            log.warning("endpoint %s runs the code deployed to %s (%s), not this project's current code (%s)",
                        endpoint.name, env, manifest["bundle"], bundle.hash)
        request = {"version": PROTOCOL_VERSION, "init": manifest["init"],
                   "bundle": {"hash": manifest["bundle"], "store": True}, "runtime": runtime}
        self.deployed[endpoint.name] = _Deployment(spec=endpoint, remote=remote, digest="attached", request=request,
                                                   attached=True)

    async def _find(self, remote_name: str) -> dict[str, Any] | None:
        if self._listing is None:
            self._listing = await self.control.list_endpoints()
        return next((e for e in self._listing if e.get("name") == remote_name), None)

    async def teardown(self, endpoint: str | None = None) -> None:
        """Delete one endpoint, or (``None``) every endpoint carrying this backend's name prefix."""
        self._listing = None  # what exists changes now
        with self._errors("remove endpoints"):
            if endpoint is not None:
                deployment = self.deployed.pop(endpoint, None)
                remote = deployment.remote if deployment else await self.control.find(
                    f"{self.config.name_prefix}{endpoint}")
                if remote is not None:
                    await self.control.delete(remote)
                return
            self.deployed.clear()
            for remote in await self.control.list_endpoints():
                if str(remote.get("name", "")).startswith(self.config.name_prefix):
                    await self.control.delete(remote)
            await self.control.sweep_templates(self.config.name_prefix)

    async def scale(self, endpoint: str, *, min_workers: int, max_workers: int) -> None:
        deployment = self.deployed[endpoint]
        if deployment.attached:
            raise ConfigError(f"{endpoint!r} is a deployed endpoint ({deployment.remote['name']}): change its "
                              "min_workers/max_workers in the code and `gpuflex deploy` again")
        spec = attrs.evolve(deployment.spec, min_workers=min_workers, max_workers=max_workers)
        with self._errors(f"scale endpoint {endpoint!r}"):
            deployment.remote = await self.control.ensure(spec, name=deployment.remote["name"],
                                                          digest=deployment.digest, existing=deployment.remote,
                                                          extra_env=deployment.extra_env)
        deployment.spec = spec

    # -- jobs -------------------------------------------------------------------------------------------------

    def _url(self, endpoint_id: str, op: str) -> str:
        return f"{self.config.jobs_url}/{endpoint_id}/{op}"

    async def submit(self, call: Call) -> str:
        deployment = self.deployed.get(call.endpoint.name)
        if deployment is None:
            raise BackendUnavailable(f"endpoint {call.endpoint.name!r} is not deployed on the serverless backend")
        kind = call.endpoint.kind_of(call.method)
        request = {**deployment.request, "payload": b64encode_payload(call.payload),
                   "blocking": kind in (EndpointKind.FUNCTION, EndpointKind.GENERATOR)}
        # the first jobs after a deploy carry an inline bundle (one per worker that may start); later ones name it by
        # hash, and a worker that lacks it answers "missing" and gets the call again with the bundle
        inline = deployment.inline_left > 0 or ("zip" not in request["bundle"] and not deployment.attached)
        if deployment.inline_left > 0:
            deployment.inline_left -= 1
        job = _Job(endpoint=call.endpoint.name, endpoint_id=deployment.remote["id"], remote_id="", request=request,
                   execution_timeout=call.timeout)
        job.remote_id = await self._run(job, inline=inline)
        handle = f"{job.endpoint_id}/{job.remote_id}"
        self.jobs[handle] = job
        if kind.streams:
            job.chunks, self._chunk_streams[handle] = anyio.create_memory_object_stream[Payload](math.inf)
        return handle

    async def _run(self, job: _Job, *, inline: bool) -> str:
        """``POST /run`` for one call; returns RunPod's job id."""
        bundle = {k: v for k, v in job.request["bundle"].items() if k != "zip"}
        request = job.request if inline else {**job.request, "bundle": bundle,
                                              "runtime": {"hash": job.request["runtime"]["hash"]}}
        body: dict[str, Any] = {"input": {"gpuflex": request}}
        if job.execution_timeout:
            body["policy"] = {"executionTimeout": execution_timeout_ms(job.execution_timeout)}
        content = json.dumps(body).encode()
        if len(content) > RUN_LIMIT_BYTES:
            raise PayloadTooLarge(len(content), RUN_LIMIT_BYTES, "serverless (RunPod's 10 MB /run request limit)")
        with self._errors(f"submit a job to {job.endpoint!r}"):
            response = await self.api.request("POST", self._url(job.endpoint_id, "run"), content=content,
                                              creates_job=True, pace="run")
            if response.status_code == 404:
                raise BackendUnavailable(f"RunPod endpoint {job.endpoint_id} for {job.endpoint!r} is gone; "
                                         "it was deleted outside gpuflex: call again to redeploy")
        return str(response.json()["id"])

    def _remote(self, handle: str) -> tuple[str, str]:
        job = self.jobs.get(handle)
        if job is not None:
            return job.endpoint_id, job.remote_id
        endpoint_id, job_id = handle.split("/", 1)
        return endpoint_id, job_id

    async def status(self, handle: str) -> JobUpdate:
        endpoint_id, job_id = self._remote(handle)
        with self._errors(f"read the status of job {job_id}"):
            response = await self.api.request("GET", self._url(endpoint_id, f"status/{job_id}"), pace="status")
        if response.status_code == 404:
            return JobUpdate(status=JobStatus.FAILED, reason=f"RunPod no longer knows job {job_id} (results are "
                                                             "kept 30 minutes after a job ends)")
        body = response.json()
        job = self.jobs.get(handle)
        if job is not None and job.remote_id == job_id and body.get("status") == "FAILED" \
                and missing_bundle(body.get("error")):
            job.remote_id = await self._run(job, inline=True)  # a fresh worker: send the code along
            job.submitted_at = time.time()
            job.move()
            return JobUpdate(status=JobStatus.QUEUED)
        if job is not None:
            job.output = body.get("output")
        return self._update(handle, body)

    def _update(self, handle: str, body: dict[str, Any]) -> JobUpdate:
        status = _STATUSES.get(str(body.get("status")), JobStatus.QUEUED)
        job = self.jobs.get(handle)
        started = finished = billed = None
        if job is not None and body.get("delayTime") is not None:
            started = job.submitted_at + float(body["delayTime"]) / 1000
            if body.get("executionTime") is not None:
                billed = float(body["executionTime"]) / 1000  # the price adds the idle tail and rounds up
                finished = started + billed
        update = JobUpdate(status=status, worker=body.get("workerId"), started_at=started, finished_at=finished,
                           billed_seconds=billed if status.is_terminal else None)
        if status is JobStatus.COMPLETED:
            items = body.get("output")
            results, _ = join_parts(items if isinstance(items, list) else [], "result")
            if results:
                return attrs.evolve(update, outcome=Payload.from_bytes(results[-1]))
            return attrs.evolve(update, status=JobStatus.FAILED, reason="the RunPod worker returned no gpuflex "
                                                                      "result (is the image gpuflex's worker?)")
        if status is JobStatus.FAILED:
            outcome, message = parse_error(body.get("error", ""))
            if outcome is not None:
                return attrs.evolve(update, outcome=outcome)
            return attrs.evolve(update, retryable=True,
                                reason=f"the RunPod worker died or was lost outside the function: {message}")
        if status is JobStatus.CANCELLED:
            return attrs.evolve(update, reason="cancelled on RunPod")
        if status is JobStatus.TIMED_OUT:
            return attrs.evolve(update, reason=f"RunPod stopped it at the endpoint's execution timeout "
                                               f"({body.get('error') or 'executionTimeout'})")
        return update

    async def updates(self, handle: str) -> AsyncIterator[JobUpdate]:
        """Poll ``/status`` while the job is queued, then ``/stream`` (the worker's output lines and a generator's
        chunks, as they come) until it ends; the final ``/status`` carries the result. A job queued longer than
        ``queue_timeout`` with no sign of progress on its endpoint fails with the endpoint's health."""
        job = self.jobs.get(handle)
        delay, last = 0.02, None
        while True:
            if job is not None and last is JobStatus.RUNNING:
                endpoint_id, job_id = self._remote(handle)
                with self._errors(f"stream job {job_id}"):
                    response = await self.api.request("GET", self._url(endpoint_id, f"stream/{job_id}"),
                                                      pace="status")
                body = response.json() if response.status_code != 404 else {"status": "FAILED"}
                fresh = [item.get("output") for item in body.get("stream") or [] if isinstance(item, dict)]
                self._take(job, fresh)
                state = _STATUSES.get(str(body.get("status")), JobStatus.RUNNING)
                update = await self.status(handle) if state.is_terminal else JobUpdate(status=state)
                if fresh:
                    delay = 0.02
            else:
                update = await self.status(handle)
            if update.status.is_terminal:
                if job is not None and isinstance(job.output, list):  # what /stream had not shown yet
                    self._take(job, job.output[job.seen:])
                self._forget(handle)
                yield update
                return
            if update.status is not last:
                last = update.status
                yield update
            if update.status is JobStatus.QUEUED and job is not None and self.config.queue_timeout is not None \
                    and time.time() - job.quiet_since > self.config.queue_timeout:
                stuck = await self._stuck(handle, job)
                if stuck is not None:
                    self._forget(handle)
                    yield stuck
                    return
            await anyio.sleep(delay)
            delay = min(delay * 1.5, self.config.poll_interval_max)

    def _take(self, job: _Job, items: list[Any]) -> None:
        """Deliver what the worker streamed: output lines to the caller's log, chunks to ``stream``."""
        job.seen += len(items)
        for item in items:
            if not isinstance(item, dict):
                continue
            if "lines" in item:
                for stream, text in item["lines"]:
                    self._worker_output(job.endpoint, str(item.get("worker") or "?"), str(stream), str(text))
            elif "chunk_part" in item:
                job.chunk_parts.append(item["chunk_part"])
            elif "chunk" in item and job.chunks is not None:
                data = base64.b64decode("".join([*job.chunk_parts, item["chunk"]]))
                job.chunk_parts = []
                job.chunks.send_nowait(Payload.from_bytes(data))

    def _worker_output(self, endpoint: str, worker: str, stream: str, text: str) -> None:
        self.events.worker_output(endpoint, worker, stream, text)

    def _forget(self, handle: str) -> None:
        job = self.jobs.pop(handle, None)
        if job is not None:
            job.move()
            if job.chunks is not None:
                job.chunks.close()

    async def _stuck(self, handle: str, job: _Job) -> JobUpdate | None:
        """None when the endpoint shows progress (a worker starting or busy, jobs finishing): the job is only
        waiting its turn or for a cold start, and the clock starts again. Else cancel it and say why."""
        endpoint_id = self._remote(handle)[0]
        with self._errors("read the endpoint's health"):
            health = (await self.api.request("GET", self._url(endpoint_id, "health"))).json()
        workers, jobs = health.get("workers") or {}, health.get("jobs") or {}
        progress = (int(jobs.get("completed", 0)) + int(jobs.get("failed", 0)), int(jobs.get("inProgress", 0)))
        busy = any(int(workers.get(k, 0)) for k in ("initializing", "running")) or progress[1] > 0
        if busy or (job.progress is not None and progress != job.progress):
            job.progress, job.quiet_since = progress, time.time()
            return None
        job.progress = progress
        waited = time.time() - job.submitted_at
        await self.cancel(handle)
        return JobUpdate(status=JobStatus.FAILED, reason=(
            f"stuck IN_QUEUE on RunPod for {waited:.0f} s, {self.config.queue_timeout:g} s of them (queue_timeout) "
            f"with no worker starting or running a job; endpoint health: {json.dumps(health)}. Workers that start "
            "and die usually mean a crash-looping image (see the endpoint's logs); none at all means no GPU stock "
            "in the chosen pools, or a workersMax of 0 (RunPod lowers it on endpoints idle for a week)"))

    async def stream(self, handle: str) -> AsyncIterator[Payload]:
        """A generator call's chunks, as ``updates`` reads them from ``/stream``."""
        receive = self._chunk_streams.pop(handle, None)
        if receive is None:
            return
        async with receive:
            async for chunk in receive:
                yield chunk

    async def cancel(self, handle: str) -> None:
        endpoint_id, job_id = self._remote(handle)
        with self._errors(f"cancel job {job_id}"):
            await self.api.request("POST", self._url(endpoint_id, f"cancel/{job_id}"), pace="cancel")

    # -- scaling, prices, introspection -----------------------------------------------------------------------

    def price(self, endpoint: EndpointSpec) -> Price:
        return serverless_price(endpoint, self.config)

    async def health(self, endpoint: str) -> dict[str, Any]:
        """RunPod's ``/health`` of one deployed endpoint: job and worker counts."""
        deployment = self.deployed[endpoint]
        with self._errors(f"read the health of {endpoint!r}"):
            response = await self.api.request("GET", self._url(deployment.remote["id"], "health"))
        body: dict[str, Any] = response.json()
        return body

    async def workers(self) -> list[WorkerInfo]:
        """Workers as RunPod counts them (its API reports counts, not identities)."""
        infos = []
        for name, deployment in list(self.deployed.items()):
            counts = (await self.health(name)).get("workers", {})
            states = [(WorkerState.STARTING, counts.get("initializing", 0)), (WorkerState.IDLE, counts.get("idle", 0)),
                      (WorkerState.BUSY, counts.get("running", 0))]
            for state, count in states:
                for i in range(int(count)):
                    infos.append(WorkerInfo(id=f"{deployment.remote['id']}-{state.value.lower()}-{i}", endpoint=name,
                                            state=state, started_at=0.0, host="runpod"))
        return infos

    async def publish(self) -> str:
        """``gpuflex deploy``: keep the endpoints this instance deployed when it closes (RunPod endpoints live on
        their own), and say where they are."""
        self._published = True
        return ", ".join(f"{name} = {d.remote['id']}" for name, d in sorted(self.deployed.items())) or "nothing"

    # -- releases: gpuflex plan / deploy / versions / rollback / call (see _release) --------------------------

    async def plan_release(self, release: Release) -> list[EndpointPlan]:
        with self._errors("plan the deploy"):
            return await self.releases.plan(release)

    async def apply_release(self, release: Release, plans: list[EndpointPlan]) -> list[DeployedEndpoint]:
        self._published = True  # what a deploy makes outlives this instance
        with self._errors("deploy"):
            return await self.releases.apply(release, plans)

    async def versions(self, env: str, endpoint: str) -> list[Version]:
        with self._errors(f"read the versions of {endpoint!r}"):
            return await self.releases.versions(env, endpoint)

    async def rollback(self, env: str, endpoint: str, version: int | None = None) -> Version:
        with self._errors(f"roll {endpoint!r} back"):
            return await self.releases.rollback(env, endpoint, version)

    async def call_json(self, env: str, endpoint: str, body: Any) -> Any:
        return await self.releases.call_json(env, endpoint, body)

    def http_api(self, deployed: DeployedEndpoint, calls: list[Mapping[str, Any]]) -> dict[str, Any]:
        from ._openapi import http_api

        return http_api(self.config.jobs_url, deployed, calls)

    async def aclose(self) -> None:
        if self._closed:
            return
        try:
            if self.config.delete_on_close and not self._published and self.deployed and self._api is not None:
                with anyio.move_on_after(30, shield=True), self._errors("remove endpoints on close"):
                    for deployment in list(self.deployed.values()):
                        if not deployment.attached:
                            await self.control.delete(deployment.remote)
        finally:
            self._closed = True
            self.deployed.clear()
            if self._api is not None:
                await self._api.aclose()
            if self._store is not None:
                await self._store.aclose()
