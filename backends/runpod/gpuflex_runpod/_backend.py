"""``RunPodBackend``: each gpuflex endpoint is a RunPod Serverless endpoint running gpuflex's worker on RunPod's
own worker loop; a call is one RunPod job, or part of a pack of calls in one job while the endpoint's queue is
long (the job path is :mod:`._jobs`)."""

from __future__ import annotations

import base64
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import anyio
import attrs

from gpuflex import WorkerInfo, WorkerState
from gpuflex.backend import Backend, Call, DeployedEndpoint, EndpointPlan, JobUpdate, Payload, Release, Version
from gpuflex.errors import BackendUnavailable, ConfigError, VersionMismatch
from gpuflex.worker import worker_init

from ._bootstrap import runtime_ref
from ._config import RunPodConfig
from ._control import ControlPlane, deploy_hash
from ._errors import RunPodApi, find_api_key, map_errors
from ._jobs import RUN_LIMIT_BYTES, JobPath
from ._leases import Lease
from ._pricing import serverless_price
from ._protocol import PROTOCOL_VERSION, init_to_json, zip_bundle
from ._release import Releases
from ._store import ObjectStore, store_settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from gpuflex import Bundle, EndpointSpec, Price

__all__ = ["RunPodBackend"]

log = logging.getLogger("gpuflex.runpod")


@attrs.define
class _Deployment:
    spec: EndpointSpec
    remote: dict[str, Any]  # the endpoint as RunPod returned it (id, name, ...)
    digest: str
    request: dict[str, Any]  # the part of every job's input that names the code: init, bundle, dependencies
    inline_left: int = 0  # jobs that still carry the bundle inline (a fresh bundle: one per possible worker)
    extra_env: dict[str, str] | None = None  # template variables besides the spec's (the object store)
    attached: bool = False  # a deployed endpoint this instance calls as it is (``env``): never changed or deleted
    lock: anyio.Lock = attrs.field(factory=anyio.Lock)  # one redeploy at a time
    lease: Lease | None = None  # this process uses the endpoint (see ``_leases``)


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
        self.job_path = JobPath(self)
        self._bundle_refs: dict[str, dict[str, Any]] = {}
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
        lease = current.lease if current is not None and current.remote["id"] == remote["id"] else None
        if current is not None and current.lease is not None and lease is None:
            current.lease.release()
        self.deployed[endpoint.name] = _Deployment(spec=endpoint, remote=remote, digest=digest, request=request,
                                                   inline_left=endpoint.max_workers, extra_env=extra,
                                                   lease=lease or Lease(self._where(remote)))

    def _where(self, remote: dict[str, Any]) -> str:
        return f"{self.config.jobs_url}/{remote['id']}"

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
                if deployment is not None and deployment.lease is not None:
                    deployment.lease.release()
                remote = deployment.remote if deployment else await self.control.find(
                    f"{self.config.name_prefix}{endpoint}")
                if remote is not None:
                    await self.control.delete(remote)
                return
            for deployment in self.deployed.values():
                if deployment.lease is not None:
                    deployment.lease.release()
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

    # -- jobs (see ``_jobs``) ----------------------------------------------------------------------------------

    def url(self, endpoint_id: str, op: str) -> str:
        return f"{self.config.jobs_url}/{endpoint_id}/{op}"

    def worker_output(self, endpoint: str, worker: str, stream: str, text: str) -> None:
        self.events.worker_output(endpoint, worker, stream, text)

    async def redeploy(self, name: str, gone: str) -> None:
        """The RunPod endpoint ``gone`` answered 404: it was deleted outside this process. Create it again (once,
        however many calls found it gone), so the call that found it gone goes on."""
        deployment = self.deployed.get(name)
        if deployment is None:
            raise BackendUnavailable(f"endpoint {name!r} is not deployed on the serverless backend")
        if deployment.attached:
            raise BackendUnavailable(f"the deployed endpoint {deployment.remote['name']} ({gone}) is gone: "
                                     "`gpuflex deploy` it again")
        async with deployment.lock:
            if deployment.remote["id"] != gone:
                return  # another call created it again meanwhile
            self._listing = None
            with self._errors(f"deploy endpoint {name!r} again"):
                existing = await self.control.find(deployment.remote["name"])  # another process's, created again
                remote = await self.control.ensure(deployment.spec, name=deployment.remote["name"],
                                                   digest=deployment.digest, existing=existing)
            log.warning("RunPod endpoint %s (%s) was deleted outside this process; created it again as %s",
                        deployment.remote["name"], gone, remote["id"])
            if deployment.lease is not None:
                deployment.lease.release()
            deployment.remote, deployment.inline_left = remote, deployment.spec.max_workers
            deployment.lease = Lease(self._where(remote))

    async def submit(self, call: Call) -> str:
        return self.job_path.submit(call)

    def updates(self, handle: str) -> AsyncIterator[JobUpdate]:
        return self.job_path.updates(handle)

    async def status(self, handle: str) -> JobUpdate:
        return await self.job_path.status(handle)

    def stream(self, handle: str) -> AsyncIterator[Payload]:
        return self.job_path.stream(handle)

    async def cancel(self, handle: str) -> None:
        await self.job_path.cancel(handle)

    # -- scaling, prices, introspection -----------------------------------------------------------------------

    def price(self, endpoint: EndpointSpec) -> Price:
        return serverless_price(endpoint, self.config)

    async def health(self, endpoint: str) -> dict[str, Any]:
        """RunPod's ``/health`` of one deployed endpoint: job and worker counts."""
        deployment = self.deployed[endpoint]
        with self._errors(f"read the health of {endpoint!r}"):
            response = await self.api.request("GET", self.url(deployment.remote["id"], "health"))
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

    async def _delete_if_there(self, remote: dict[str, Any]) -> None:
        """Delete an endpoint; one already gone (deleted by another process) is no error."""
        try:
            await self.control.delete(remote)
        except Exception:
            found = await self.control.find(str(remote.get("name")))
            if found is not None and found.get("id") == remote.get("id"):
                raise
            log.info("RunPod endpoint %s (%s) was already gone", remote.get("name"), remote.get("id"))

    async def aclose(self) -> None:
        if self._closed:
            return
        try:
            await self.job_path.close()
            remove = []
            for deployment in self.deployed.values():  # the last process using an endpoint removes it
                shared = False
                if deployment.lease is not None:
                    deployment.lease.release()
                    shared = deployment.lease.others()
                if shared:
                    log.info("keeping RunPod endpoint %s: another process on this machine uses it",
                             deployment.remote.get("name"))
                elif not deployment.attached:
                    remove.append(deployment.remote)
            if self.config.delete_on_close and not self._published and remove and self._api is not None:
                with anyio.move_on_after(30, shield=True), self._errors("remove endpoints on close"):
                    for remote in remove:
                        await self._delete_if_there(remote)
        finally:
            self._closed = True
            for deployment in self.deployed.values():
                if deployment.lease is not None:
                    deployment.lease.release()
            self.deployed.clear()
            if self._api is not None:
                await self._api.aclose()
            if self._store is not None:
                await self._store.aclose()
