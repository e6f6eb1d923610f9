"""``ModalBackend``: endpoints run as Modal classes on one ``modal.App``.

Each deploy (the first call of an endpoint, a hot reload, ``gpuflex deploy``) translates the endpoint into a
:class:`ModalPlan`, rebuilds the app with every endpoint deployed so far and runs it (ephemerally, ``app.run()``)
or deploys it (``gpuflex deploy``). A new run replaces the previous one once the calls it is running finish.
Calls go through ``.spawn`` (functions, classes) or ``.remote_gen`` (generators) with gpuflex's call envelope.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING, Any, ClassVar

import anyio
import attrs

from gpuflex import Bundle, EndpointSpec, JobStatus, Price
from gpuflex.backend import Backend, Call, JobUpdate, Payload
from gpuflex.errors import AuthenticationError, BackendUnavailable, ConfigError
from gpuflex.worker import worker_init
from gpuflex.workerpool import Mailbox

from ._app import build_app
from ._config import ModalConfig
from ._plan import BUNDLE_PATH, ModalPlan, modal_price, plan_for

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

__all__ = ["ModalBackend", "modal_credentials"]


def modal_credentials() -> tuple[str, str] | None:
    """Modal's token from the environment or ~/.modal.toml (as Modal's own client finds it); never printed."""
    token_id, token_secret = os.environ.get("MODAL_TOKEN_ID"), os.environ.get("MODAL_TOKEN_SECRET")
    if token_id and token_secret:
        return token_id, token_secret
    try:
        from modal.config import config
    except ImportError:  # pragma: no cover - modal is a dependency
        return None
    token_id, token_secret = config.get("token_id"), config.get("token_secret")
    return (str(token_id), str(token_secret)) if token_id and token_secret else None


@attrs.define
class _Generation:
    """One run of the app: its Modal classes and the calls still in flight on it."""

    app: Any
    classes: dict[str, Any]
    context: Any
    in_flight: int = 0
    retired: bool = False


@attrs.define(eq=False)
class _ModalJob:
    call: Call
    generation: _Generation
    function_call: Any = None
    updates: Mailbox[JobUpdate] = attrs.field(factory=Mailbox)
    chunks: Mailbox[Payload] | None = None
    status: JobStatus = JobStatus.QUEUED
    cancel_requested: bool = False


class ModalBackend(Backend):
    """Endpoints as Modal classes: GPUs, autoscaling, images and secrets as Modal has them."""

    name: ClassVar[str] = "modal"
    config_cls: ClassVar[type[Any]] = ModalConfig
    capabilities: ClassVar[Mapping[str, str | None]] = {
        "gpu": None, "streaming": None, "classes": None, "cancel": None,
        "kill_worker": "Modal gives no handle on one container's process",
        "scaling": "Modal scales containers itself (min/max_containers, scaledown_window); gpuflex cannot list them",
    }
    max_payload_bytes: ClassVar[int | None] = 2 * 2**30  # Modal's limit on a function input
    retries_in_target: ClassVar[bool] = True  # the spec's retries become Modal's Retries
    config: ModalConfig

    def __init__(self, config: ModalConfig | None = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.plans: dict[str, ModalPlan] = {}
        self._inits: dict[str, dict[str, Any]] = {}
        self._bundles: dict[str, Bundle] = {}
        self._current: _Generation | None = None
        self._client: Any = None
        self._jobs: dict[str, _ModalJob] = {}
        self._lock = anyio.Lock()
        self._dirty = False

    # -- connection ------------------------------------------------------------------------------------------

    def server_url(self) -> str:
        from modal.config import config

        return self.config.server_url or os.environ.get("MODAL_SERVER_URL") or str(config.get("server_url"))

    async def _connect(self) -> Any:
        if self._client is not None:
            return self._client
        credentials = modal_credentials()
        if credentials is None:
            raise _missing_token()
        from modal.client import Client
        from modal_proto import api_pb2

        client = Client(self.server_url(), api_pb2.CLIENT_TYPE_CLIENT, credentials)
        try:
            with anyio.fail_after(self.config.connect_timeout):
                await client.__aenter__()  # type: ignore[no-untyped-call]
        except TimeoutError:
            raise BackendUnavailable(f"Modal's API at {self.server_url()} did not answer within "
                                     f"{self.config.connect_timeout:g} s; check the network (connect_timeout= "
                                     "waits longer)") from None
        self._client = client
        return client

    # -- deploy ----------------------------------------------------------------------------------------------

    def plan(self, endpoint: EndpointSpec) -> ModalPlan:
        return plan_for(endpoint, self.config)

    async def deploy(self, endpoint: EndpointSpec, bundle: Bundle) -> None:
        """Record the endpoint (checked now, before any network); the app runs at the next call, with every
        endpoint recorded by then, so a pipeline or ``gpuflex deploy`` does not start one run per endpoint."""
        plan = self.plan(endpoint)
        if modal_credentials() is None:
            raise _missing_token()
        async with self._lock:
            self.plans[endpoint.name] = plan
            self._bundles[endpoint.name] = bundle
            self._inits[endpoint.name] = worker_init(endpoint, bundle, report_started=False, bundle_root=BUNDLE_PATH)
            self._dirty = True

    async def ensure_running(self) -> None:
        """Run the app (again) if endpoints or bundles changed since its last run."""
        async with self._lock:
            if self._dirty or self._current is None:
                await self._run_app()
                self._dirty = False

    async def _run_app(self) -> None:
        """Run the app with every endpoint planned so far; retire the previous run once it is idle."""
        client = await self._connect()
        app, classes = build_app(self.plans, self._inits, self._bundles, self.config)
        context = app.run(client=client, environment_name=self.config.environment)
        try:
            with anyio.fail_after(max(self.config.connect_timeout, 600)):  # image builds can take minutes
                await context.__aenter__()
        except TimeoutError:
            raise BackendUnavailable("Modal did not start the app within 10 minutes") from None
        except Exception as exc:
            raise _modal_error(exc) from exc
        previous, self._current = self._current, _Generation(app, classes, context)
        if previous is not None:
            previous.retired = True
            await self._retire_if_idle(previous)

    async def _retire_if_idle(self, generation: _Generation) -> None:
        if generation.retired and generation.in_flight == 0:
            with contextlib.suppress(Exception):
                await generation.context.__aexit__(None, None, None)

    async def publish(self) -> str:
        """``gpuflex deploy``: deploy the app under its name (it outlives this process, unlike a run)."""
        client = await self._connect()
        app, _ = build_app(self.plans, self._inits, self._bundles, self.config)
        try:
            await app.deploy.aio(name=self.config.app_name, client=client, environment_name=self.config.environment)
        except Exception as exc:
            raise _modal_error(exc) from exc
        return f"Modal app {self.config.app_name!r} ({app.app_id})"

    # -- jobs ------------------------------------------------------------------------------------------------

    async def submit(self, call: Call) -> str:
        await self.ensure_running()
        generation = self._current
        if generation is None or call.endpoint.name not in generation.classes:
            raise BackendUnavailable(f"endpoint {call.endpoint.name!r} is not deployed on the modal backend")
        job = _ModalJob(call, generation)
        handle = f"{call.job_id}-{call.attempt}"
        self._jobs[handle] = job
        generation.in_flight += 1
        instance = generation.classes[call.endpoint.name]()
        payload = call.payload.to_bytes()
        try:
            if call.endpoint.kind_of(call.method).streams:
                job.chunks = Mailbox()
                assert self.task_group is not None
                self.task_group.start_soon(self._run_stream, handle, job, instance, payload)
            else:
                job.function_call = await instance.call.spawn.aio(payload)
                assert self.task_group is not None
                self.task_group.start_soon(self._await_call, handle, job)
        except Exception as exc:
            generation.in_flight -= 1
            raise _modal_error(exc) from exc
        job.status = JobStatus.RUNNING
        job.updates.put(JobUpdate(status=JobStatus.RUNNING, started_at=time.time()))
        return handle

    def _finish(self, handle: str, job: _ModalJob, update: JobUpdate) -> None:
        job.status = update.status
        job.updates.put(update)
        job.updates.close()
        if job.chunks is not None:
            job.chunks.close()
        job.generation.in_flight -= 1
        assert self.task_group is not None
        self.task_group.start_soon(self._retire_if_idle, job.generation)

    def _terminal(self, status: str, outcome: bytes, started: float, worker: str | None = None) -> JobUpdate:
        common: dict[str, Any] = {"started_at": started, "finished_at": time.time(),
                                  "outcome": Payload.from_bytes(outcome), "worker": worker}
        if status == "ok":
            return JobUpdate(status=JobStatus.COMPLETED, **common)
        return JobUpdate(status=JobStatus.FAILED, reason="the function raised", **common)

    async def _await_call(self, handle: str, job: _ModalJob) -> None:
        started = time.time()
        try:
            status, outcome, worker = await job.function_call.get.aio()
            update = self._terminal(status, outcome, started, worker)
        except Exception as exc:  # Modal's own failures: a timeout, a crashed container, a cancel
            update = _failure(exc, started, cancelled=job.cancel_requested)
        self._finish(handle, job, update)

    async def _run_stream(self, handle: str, job: _ModalJob, instance: Any, payload: bytes) -> None:
        started = time.time()
        update: JobUpdate | None = None
        try:
            async for kind, data in instance.stream.remote_gen.aio(payload):
                if kind == "chunk":
                    assert job.chunks is not None
                    job.chunks.put(Payload.from_bytes(data))
                else:
                    update = self._terminal(kind, data, started)
        except Exception as exc:
            update = _failure(exc, started, cancelled=job.cancel_requested)
        self._finish(handle, job, update or JobUpdate(status=JobStatus.FAILED, reason="the stream ended early"))

    async def status(self, handle: str) -> JobUpdate:
        job = self._jobs.get(handle)
        if job is None:
            raise BackendUnavailable(f"no job {handle!r} on the modal backend")
        return JobUpdate(status=job.status)

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
        if job is None or job.status.is_terminal or job.function_call is None:
            return
        job.cancel_requested = True
        with contextlib.suppress(Exception):
            await job.function_call.cancel.aio()

    # -- prices, teardown ------------------------------------------------------------------------------------

    def price(self, endpoint: EndpointSpec) -> Price:
        try:
            return modal_price(endpoint, self.plan(endpoint))
        except ConfigError as exc:
            return Price(source=f"not runnable on Modal: {exc}")

    async def teardown(self, endpoint: str | None = None) -> None:
        if endpoint is not None:
            self.plans.pop(endpoint, None)
        generation, self._current = self._current, None
        if generation is not None:
            generation.retired = True
            with contextlib.suppress(Exception):
                await generation.context.__aexit__(None, None, None)

    async def aclose(self) -> None:
        await self.teardown()
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)


def _failure(exc: Exception, started: float, *, cancelled: bool = False) -> JobUpdate:
    name = type(exc).__name__
    status = JobStatus.CANCELLED if cancelled or "Cancel" in name else JobStatus.TIMED_OUT if "Timeout" in name \
        else JobStatus.FAILED
    return JobUpdate(status=status, started_at=started, finished_at=time.time(), reason=f"Modal: {name}: {exc}")


def _missing_token() -> AuthenticationError:
    return AuthenticationError("no Modal token: run `modal token new`, or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET "
                               "(gpuflex reads them the way Modal's client does)")


def _modal_error(exc: Exception) -> Exception:
    """Modal's client errors as gpuflex errors, with what to do."""
    name = type(exc).__name__
    if name == "AuthError":
        return AuthenticationError(f"Modal refused the token: {exc}. Run `modal token new` or check "
                                   "MODAL_TOKEN_ID / MODAL_TOKEN_SECRET")
    if name in ("ConnectionError", "GRPCError", "OSError"):
        return BackendUnavailable(f"cannot reach Modal: {exc}")
    return exc

