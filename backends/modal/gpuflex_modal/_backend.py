"""``ModalBackend``: endpoints run as Modal classes on one ``modal.App`` per project.

Each deploy (the first call of an endpoint, a hot reload) translates the endpoint into a :class:`ModalPlan`; the
next call runs the app (ephemerally, ``app.run()``) with every endpoint recorded by then. ``gpuflex deploy``
deploys an app per environment instead, with web endpoints, as plan -> apply with versions (see ``_release``).
A new run replaces the previous one once the calls it is running finish.

Every call goes through the class's generator method (``remote_gen``), whose first item says the call started in
a container: only then is the job RUNNING, so queueing and cold starts count neither against the endpoint's
``timeout`` nor in its cost. Modal enforces the ``timeout`` too, from the same moment (its execution timeout), and
``startup_timeout`` separately. Cancels go through ``FunctionCall.cancel``; a sync call, which nothing can
interrupt inside the container, is cancelled with ``terminate_containers`` so the container does not take its next
input with the old call still running. What containers print reaches the caller through the app's log stream.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, ClassVar

import anyio
import attrs

from gpuflex import Bundle, EndpointSpec, JobStatus, Price
from gpuflex.backend import Backend, Call, DeployedEndpoint, EndpointPlan, JobUpdate, Payload, Release, Version
from gpuflex.errors import BackendUnavailable, ConfigError
from gpuflex.worker import worker_init
from gpuflex.workerpool import Mailbox

from ._app import WebSide, build_app
from ._auth import missing_token, modal_credentials, open_client
from ._config import ModalConfig
from ._errors import failure, modal_error
from ._logs import LogForwarder
from ._openapi import http_api
from ._plan import BUNDLE_DIR, ModalPlan, modal_price, plan_for
from ._release import ModalReleases

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from gpuflex.backend import ReleaseEndpoint

__all__ = ["ModalBackend"]

_INTERRUPTIBLE = ("async_function", "async_generator")  # what the container can cancel without stopping


@attrs.define(eq=False)
class _Generation:
    """One run of the app: its Modal classes, its log stream and the calls still in flight on it."""

    app: Any
    classes: dict[str, Any]
    context: Any = None
    logs: LogForwarder | None = None
    functions: dict[str, str] = attrs.field(factory=dict)  # Modal function id -> endpoint
    in_flight: int = 0
    retired: bool = False
    ended: bool = False  # the run failed to start, or stopped


@attrs.define(eq=False)
class _ModalJob:
    call: Call
    generation: _Generation
    function_call: str = ""
    sync: bool = True
    updates: Mailbox[JobUpdate] = attrs.field(factory=Mailbox)
    chunks: Mailbox[Payload] | None = None
    status: JobStatus = JobStatus.QUEUED
    started_at: float | None = None
    worker: str | None = None
    cancel_requested: bool = False
    cancel_sent: bool = False


class ModalBackend(Backend):
    """Endpoints as Modal classes: GPUs, autoscaling, images and secrets as Modal has them."""

    name: ClassVar[str] = "modal"
    config_cls: ClassVar[type[Any]] = ModalConfig
    capabilities: ClassVar[Mapping[str, str | None]] = {
        "gpu": None, "streaming": None, "classes": None, "cancel": None, "releases": None,
        "kill_worker": "Modal reschedules the calls of a container that dies, on a new container, without telling "
                       "the caller: a call survives a killed container, but not as a second gpuflex attempt",
        "scaling": "Modal scales containers itself (min/max_containers, scaledown_window); gpuflex cannot list them",
    }
    max_payload_bytes: ClassVar[int | None] = 2 * 2**30  # gpuflex's own bound; Modal publishes none (unverified)
    retries_in_target: ClassVar[bool] = False  # gpuflex retries a call that raised; Modal reschedules crashes
    config: ModalConfig

    def __init__(self, config: ModalConfig | None = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.plans: dict[str, ModalPlan] = {}
        self._inits: dict[str, dict[str, Any]] = {}
        self._bundles: dict[str, Bundle] = {}
        self._current: _Generation | None = None
        self._client: Any = None
        self._environment: str | None = None
        self._jobs: dict[str, _ModalJob] = {}
        self._lock = anyio.Lock()
        self._dirty = False
        self.releases = ModalReleases(self)

    # -- connection ------------------------------------------------------------------------------------------

    async def _connect(self) -> Any:
        if self._client is None:
            credentials = modal_credentials()
            if credentials is None:
                raise missing_token()
            url = self.config.server_url or credentials.server_url
            self._client = await open_client(credentials, url, self.config.connect_timeout)
            self._environment = self.config.environment or credentials.environment
        return self._client

    async def connect(self) -> Any:
        """The connected ``modal.Client`` (connecting on first use)."""
        return await self._connect()

    @property
    def modal_environment(self) -> str | None:
        """The Modal environment in use (known once connected)."""
        return self._environment

    # -- deploy ----------------------------------------------------------------------------------------------

    def plan(self, endpoint: EndpointSpec) -> ModalPlan:
        return plan_for(endpoint, self.config)

    async def deploy(self, endpoint: EndpointSpec, bundle: Bundle) -> None:
        """Record the endpoint (checked now, before any network); the app runs at the next call, with every
        endpoint recorded by then, so a pipeline or ``gpuflex deploy`` does not start one run per endpoint."""
        plan = self.plan(endpoint)
        if modal_credentials() is None:
            raise missing_token()
        async with self._lock:
            self.plans[endpoint.name] = plan
            self._bundles[endpoint.name] = bundle
            self._inits[endpoint.name] = worker_init(endpoint, bundle, report_started=False,
                                                     bundle_root=f"/root/{BUNDLE_DIR}")
            self._dirty = True

    async def ensure_running(self) -> None:
        """Run the app (again) if endpoints or bundles changed since its last run."""
        async with self._lock:
            if self._dirty or self._current is None or self._current.ended:
                await self._run_app()
                self._dirty = False

    async def _create(self, generation: _Generation, create: Any) -> None:
        """Create the app's objects (``create``: entering ``app.run()`` or ``app.deploy``), with its log stream
        followed from the moment Modal gives the app an id, and within ``build_timeout`` when one is set."""
        assert self.task_group is not None
        generation.logs = LogForwarder(self.events, lambda: generation.functions, generation.app.name or "app")
        if self.config.stream_output:
            self.task_group.start_soon(self._follow_logs, generation)
        try:
            with anyio.fail_after(self.config.build_timeout) if self.config.build_timeout else \
                    contextlib.nullcontext():
                await create()
        except TimeoutError:
            generation.ended = True
            raise BackendUnavailable(f"Modal did not finish creating the app (image builds included) within "
                                     f"build_timeout={self.config.build_timeout:g} s; raise build_timeout, or leave "
                                     "it unset to wait as long as builds take") from None
        except Exception as exc:
            generation.ended = True
            raise modal_error(exc, generation.logs.build_tail) from exc
        generation.functions.update(await _function_ids(generation.classes))
        generation.logs.mapped()

    async def _follow_logs(self, generation: _Generation) -> None:
        while generation.app.app_id is None:  # AppCreate has not answered yet
            if generation.ended:
                return
            await anyio.sleep(0.05)
        assert generation.logs is not None
        with contextlib.suppress(Exception):  # the stream is best effort: calls never wait for it
            await generation.logs.follow(generation.app)

    async def _run_app(self) -> None:
        """Run the app with every endpoint planned so far; retire the previous run once it is idle."""
        client = await self._connect()
        app, classes = build_app(self.plans, self._inits, self._bundles, self.config, self.config.app())
        generation = _Generation(app, classes, app.run(client=client, environment_name=self._environment))
        await self._create(generation, generation.context.__aenter__)
        previous, self._current = self._current, generation
        if previous is not None:
            previous.retired = True
            await self._retire_if_idle(previous)

    async def _retire_if_idle(self, generation: _Generation) -> None:
        if generation.retired and generation.in_flight == 0 and not generation.ended:
            generation.ended = True
            with contextlib.suppress(Exception):
                await generation.context.__aexit__(None, None, None)

    async def publish(self) -> str:
        """Deploy the app under its name (it outlives this process, unlike a run). ``gpuflex deploy`` goes
        through :meth:`apply_release` instead (an app per environment, with web endpoints)."""
        name = self.config.app()
        app_id = await self._deploy(name, self.plans, self._inits, self._bundles)
        return f"Modal app {name!r} ({app_id}); `gpuflex teardown --backend modal` stops it"

    async def deploy_release(self, name: str, items: list[ReleaseEndpoint], webs: Mapping[str, WebSide]) -> str:
        """Deploy ``items`` as the app ``name``, each endpoint also a web endpoint (``webs``); its app id."""
        if modal_credentials() is None:
            raise missing_token()
        plans = {item.spec.name: self.plan(item.spec) for item in items}
        inits = {item.spec.name: worker_init(item.spec, item.bundle, report_started=False,
                                             bundle_root=f"/root/{BUNDLE_DIR}") for item in items}
        bundles = {item.spec.name: item.bundle for item in items}
        return await self._deploy(name, plans, inits, bundles, webs)

    async def _deploy(self, name: str, plans: Mapping[str, ModalPlan], inits: Mapping[str, dict[str, Any]],
                      bundles: Mapping[str, Bundle], webs: Mapping[str, WebSide] | None = None) -> str:
        client = await self._connect()
        app, classes = build_app(plans, inits, bundles, self.config, name, webs)
        generation = _Generation(app, classes)

        async def deploy() -> None:
            await app.deploy.aio(name=name, client=client, environment_name=self._environment)

        try:
            await self._create(generation, deploy)
        finally:
            generation.ended = True
        return str(app.app_id)

    # -- releases (gpuflex deploy / plan / versions / rollback / call; see _release) ---------------------------

    async def plan_release(self, release: Release) -> list[EndpointPlan]:
        return await self.releases.plan(release)

    async def apply_release(self, release: Release, plans: list[EndpointPlan]) -> list[DeployedEndpoint]:
        return await self.releases.apply(release, plans)

    async def versions(self, env: str, endpoint: str) -> list[Version]:
        return await self.releases.versions(env, endpoint)

    async def rollback(self, env: str, endpoint: str, version: int | None = None) -> Version:
        return await self.releases.rollback(env, endpoint, version)

    async def call_json(self, env: str, endpoint: str, body: Any) -> Any:
        return await self.releases.call_json(env, endpoint, body)

    def http_api(self, deployed: DeployedEndpoint, calls: list[Mapping[str, Any]]) -> dict[str, Any]:
        url = deployed.url or self.releases.known_url(deployed.env, deployed.name)
        return http_api(url, deployed, calls, proxy_auth=self.config.web_auth == "proxy")

    # -- jobs ------------------------------------------------------------------------------------------------

    async def submit(self, call: Call) -> str:
        await self.ensure_running()
        generation = self._current
        if generation is None or call.endpoint.name not in generation.classes:
            raise BackendUnavailable(f"endpoint {call.endpoint.name!r} is not deployed on the modal backend")
        kind = call.endpoint.kind_of(call.method)
        job = _ModalJob(call, generation, sync=kind.value not in _INTERRUPTIBLE,
                        chunks=Mailbox() if kind.streams else None)
        handle = f"{call.job_id}-{call.attempt}"
        self._jobs[handle] = job
        generation.in_flight += 1
        assert self.task_group is not None
        self.task_group.start_soon(self._run_call, handle, job, call.payload.to_bytes())
        return handle

    async def _run_call(self, handle: str, job: _ModalJob, payload: bytes) -> None:
        update: JobUpdate | None = None
        try:
            instance = job.generation.classes[job.call.endpoint.name]()
            async for item in instance.run.remote_gen.aio(payload):
                if item[0] == "started":
                    await self._started(job, *item[1:])
                elif item[0] == "chunk" and job.chunks is not None:
                    job.chunks.put(Payload.from_bytes(item[1]))
                elif item[0] == "done":
                    update = self._outcome(job, item[1], item[2], item[3])
        except Exception as exc:  # Modal's own failures: a timeout, a crashed container, a cancel, setup()
            update = failure(exc, job.started_at, started=job.started_at is not None,
                             cancelled=job.cancel_requested)
        self._finish(job, update or JobUpdate(status=JobStatus.FAILED, reason="Modal ended the call early",
                                              started_at=job.started_at))

    async def _started(self, job: _ModalJob, worker: str, started_at: float, function_call: str) -> None:
        job.worker, job.started_at, job.function_call = worker, started_at, function_call
        if job.cancel_requested:  # cancelled while it queued: stop it now that Modal has named it
            await self._cancel_remote(job)
            return
        job.status = JobStatus.RUNNING
        job.updates.put(JobUpdate(status=JobStatus.RUNNING, worker=worker, started_at=started_at))

    def _outcome(self, job: _ModalJob, status: str, outcome: bytes, finished_at: float) -> JobUpdate:
        common: dict[str, Any] = {"started_at": job.started_at, "finished_at": finished_at, "worker": job.worker}
        if status == "ok":
            return JobUpdate(status=JobStatus.COMPLETED, outcome=Payload.from_bytes(outcome), **common)
        if status == "cancelled":
            return JobUpdate(status=JobStatus.CANCELLED, reason="cancelled", **common)
        return JobUpdate(status=JobStatus.FAILED, reason="the function raised", outcome=Payload.from_bytes(outcome),
                         **common)

    def _finish(self, job: _ModalJob, update: JobUpdate) -> None:
        if not job.status.is_terminal:
            job.status = update.status
            job.updates.put(update)
            job.updates.close()
            if job.chunks is not None:
                job.chunks.close()
        job.generation.in_flight -= 1
        assert self.task_group is not None
        self.task_group.start_soon(self._retire_if_idle, job.generation)

    async def status(self, handle: str) -> JobUpdate:
        job = self._jobs.get(handle)
        if job is None:
            raise BackendUnavailable(f"no job {handle!r} on the modal backend")
        return JobUpdate(status=job.status, worker=job.worker, started_at=job.started_at)

    def updates(self, handle: str) -> AsyncIterator[JobUpdate]:
        return self._jobs[handle].updates

    async def stream(self, handle: str) -> AsyncIterator[Payload]:
        job = self._jobs[handle]
        if job.chunks is None:
            return
        async for chunk in job.chunks:
            yield chunk

    async def cancel(self, handle: str) -> None:
        job = self._jobs.get(handle)
        if job is None or job.status.is_terminal or job.cancel_requested:
            return
        job.cancel_requested = True
        if job.function_call:
            await self._cancel_remote(job)
        else:  # still queued at Modal, which has not said which call it is: report it now, stop it at its start
            job.status = JobStatus.CANCELLED
            job.updates.put(JobUpdate(status=JobStatus.CANCELLED, reason="cancelled before it started"))
            job.updates.close()
            if job.chunks is not None:
                job.chunks.close()

    async def _cancel_remote(self, job: _ModalJob) -> None:
        if job.cancel_sent:
            return
        job.cancel_sent = True
        import modal

        with contextlib.suppress(Exception):
            call = modal.FunctionCall.from_id(job.function_call, client=self._client)
            await call.cancel.aio(terminate_containers=job.sync)

    # -- prices, teardown ------------------------------------------------------------------------------------

    def price(self, endpoint: EndpointSpec) -> Price:
        try:
            return modal_price(endpoint, self.plan(endpoint))
        except ConfigError as exc:
            return Price(billing="unknown", source=f"not runnable on Modal: {exc}")

    async def teardown(self, endpoint: str | None = None) -> None:
        """``gpuflex teardown``: stop this process's runs and the app ``gpuflex deploy`` deployed under
        ``app_name`` (Modal cannot remove one class from a deployed app: naming endpoints stops no deployment)."""
        await self._stop_runs(endpoint)
        import modal

        client = await self._connect()
        name = self.config.app()
        try:
            deployed = await modal.App.lookup.aio(name, client=client, environment_name=self._environment)
        except Exception as exc:
            if type(exc).__name__ == "NotFoundError":
                return
            raise modal_error(exc) from exc
        if endpoint is not None:
            raise ConfigError(f"the Modal app {name!r} is deployed with every endpoint of the project; Modal cannot "
                              f"remove {endpoint!r} alone: run `gpuflex teardown --backend modal` without endpoint "
                              "names to stop the whole app, or deploy again without that endpoint")
        try:
            await deployed.stop.aio(client=client)
        except Exception as exc:
            raise modal_error(exc) from exc

    async def _stop_runs(self, endpoint: str | None = None) -> None:
        if endpoint is not None:
            self.plans.pop(endpoint, None)
        generation, self._current = self._current, None
        if generation is not None:
            generation.retired = True
            generation.in_flight = 0
            await self._retire_if_idle(generation)

    async def aclose(self) -> None:
        await self._stop_runs()
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)


async def _function_ids(classes: Mapping[str, Any]) -> dict[str, str]:
    """Modal function id -> endpoint: the id of each class's service function, which names its log lines."""
    out: dict[str, str] = {}
    for endpoint, cls in classes.items():
        with contextlib.suppress(Exception):
            method = cls().run
            await method.hydrate.aio()
            out[method.object_id] = endpoint
    return out
