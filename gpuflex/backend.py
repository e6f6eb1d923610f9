"""The one extension point: a ``Backend`` runs endpoints somewhere.

Life cycle, as the core drives it::

    backend = BackendClass(config, events=...)      # cheap: no I/O
    backend.attach(task_group)                      # the core's task group for background work
    await backend.deploy(spec, bundle)              # per endpoint; again on every hot reload (new bundle)
    handle = await backend.submit(call)             # per call (and per retry attempt)
    async for update in backend.updates(handle):    # RUNNING, then one terminal update
        ...                                         #   (or the core polls ``status`` when updates is not overridden)
    async for chunk in backend.stream(handle): ...  # generator endpoints only
    await backend.cancel(handle)                    # when the caller cancels or a deadline passes
    await backend.teardown(name)                    # gpuflex teardown
    # backends that keep deployments of their own (capability "releases"): gpuflex plan / deploy / versions /
    # rollback / call go through plan_release, apply_release, versions, rollback and call_json instead
    await backend.aclose()                          # always, last

Retries, deadlines, polling cadence, cost accounting and hooks live in the core client, not here.
A backend reports each job's terminal state with a reason and never leaves one without it.
"""

from __future__ import annotations

import abc
import importlib
import logging
import struct
import sys
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import attrs

from ._models import JobStatus, Price, WorkerInfo
from ._release import (
    DeployedEndpoint,
    EndpointPlan,
    FieldChange,
    PlanAction,
    Release,
    ReleaseEndpoint,
    Version,
    rollback_record,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

    from ._models import Bundle, EndpointSpec, WorkerState

__all__ = [
    "WORKER_LOGGER", "Backend", "BackendEvents", "BackendRef", "Call", "DeployedEndpoint", "EndpointPlan",
    "FieldChange", "JobUpdate", "NoConfig", "Payload", "PlanAction", "Release", "ReleaseEndpoint", "TaskSpawner",
    "Version", "lazy_exports", "log_worker_output", "rollback_record",
]

WORKER_LOGGER = "gpuflex.worker"


def lazy_exports(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) for a backend package whose public names live in its submodules:
    ``where`` maps each name to its module (``"._backend"``), imported on first use and kept. With a
    :class:`BackendRef` entry point, a process that never uses the backend never imports its modules.

    >>> __getattr__ = lazy_exports(__name__, {"AcmeBackend": "._backend", "AcmeConfig": "._config"})
    """
    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name], package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__


@attrs.frozen(kw_only=True)
class BackendRef:
    """A backend a plugin registers by name without importing it (``gpuflex_register_backends`` may return one
    instead of the class): ``target`` (``"package.module:ClassName"``) is imported only when the backend is used,
    so installing a backend costs nothing to processes that use another. ``name`` and ``aliases`` must be the
    class's own (checked on import)."""

    name: str
    target: str
    aliases: tuple[str, ...] = ()

    def load(self) -> type[Backend]:
        module_name, _, attribute = self.target.partition(":")
        if not module_name or not attribute:
            raise ValueError(f"a BackendRef target is 'package.module:ClassName', got {self.target!r}")
        value: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            value = getattr(value, part)
        if not (isinstance(value, type) and issubclass(value, Backend)):
            raise TypeError(f"{self.target} is {value!r}, not a gpuflex.backend.Backend subclass")
        if value.name != self.name or tuple(value.aliases) != tuple(self.aliases):
            raise ValueError(f"{self.target} is named {value.name!r} (aliases {tuple(value.aliases)!r}) but was "
                             f"registered as {self.name!r} (aliases {tuple(self.aliases)!r})")
        return value
_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR,
           "CRITICAL": logging.CRITICAL}


def _worker_logger() -> logging.Logger:
    """``gpuflex.worker``, shown on stderr at INFO when the app configured no logging of its own; an app routes
    or silences it like any logger (``logging.getLogger("gpuflex.worker").setLevel(logging.WARNING)``)."""
    logger = logging.getLogger(WORKER_LOGGER)
    if not logger.handlers and not logging.getLogger().handlers and not getattr(logger, "_gpuflex_default", False):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
        logger._gpuflex_default = True  # type: ignore[attr-defined]
    return logger


def log_worker_output(endpoint: str, worker: str, stream: str, text: str) -> None:
    """Log one line of a worker's output to ``gpuflex.worker`` as ``[endpoint worker] text``. Log records keep
    their level (``text`` starts with it); printed lines are INFO. The record carries ``gpuflex_endpoint``,
    ``gpuflex_worker`` and ``gpuflex_stream`` for handlers that route by them."""
    level = logging.INFO
    if stream == "log":
        level = _LEVELS.get(text.split(" ", 1)[0], logging.INFO)
    _worker_logger().log(level, "[%s %s] %s", endpoint, worker, text,
                         extra={"gpuflex_endpoint": endpoint, "gpuflex_worker": worker, "gpuflex_stream": stream})


@attrs.frozen
class Payload:
    """Serialized data: a pickle stream plus its out-of-band buffers (pickle protocol 5).

    Backends that can move buffers without copying (shared memory) use ``buffers`` directly; the others send
    ``to_bytes()`` and rebuild with ``from_bytes()``.
    """

    data: bytes
    buffers: tuple[Any, ...] = ()  # bytes-like objects (bytes, memoryview, PickleBuffer)

    @property
    def nbytes(self) -> int:
        return len(self.data) + sum(memoryview(b).nbytes for b in self.buffers)

    def to_bytes(self) -> bytes:
        views = [memoryview(b).cast("B") for b in self.buffers]
        header = struct.pack(f"<I{len(views) + 1}Q", len(views), len(self.data), *(v.nbytes for v in views))
        return b"".join([header, self.data, *views])

    @classmethod
    def from_bytes(cls, blob: bytes | memoryview) -> Payload:
        view = memoryview(blob)
        (count,) = struct.unpack_from("<I", view)
        sizes = struct.unpack_from(f"<{count + 1}Q", view, 4)
        offset = 4 + 8 * (count + 1)
        parts = []
        for size in sizes:
            parts.append(view[offset : offset + size])
            offset += size
        return cls(bytes(parts[0]), tuple(parts[1:]))


@attrs.frozen(kw_only=True)
class Call:
    """One attempt at running one call of an endpoint."""

    job_id: str
    attempt: int
    endpoint: EndpointSpec
    method: str | None
    payload: Payload
    timeout: float | None = None


@attrs.frozen(kw_only=True)
class JobUpdate:
    """A backend's report on one job.

    A terminal update carries either ``outcome`` (the worker's serialized result or exception) or ``reason``
    (why the infrastructure could not produce one). ``retryable`` marks infrastructure failures (a lost worker)
    that the core may retry.
    """

    status: JobStatus
    worker: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    outcome: Payload | None = None
    reason: str | None = None
    retryable: bool = False
    billed_seconds: float | None = None


class TaskSpawner(Protocol):
    """What a backend may do with the core's task group: start background tasks that live until ``aclose``.
    A task that raises is logged by the core and does not stop the others."""

    def start_soon(self, func: Callable[..., Awaitable[Any]], *args: Any, name: object = None) -> None: ...


@attrs.frozen
class NoConfig:
    """Configuration of a backend that takes no options."""


class BackendEvents:
    """What a backend tells the core about its workers; the core turns these into hook calls."""

    def worker_started(self, worker: WorkerInfo) -> None:
        """A worker became ready to take jobs."""

    def worker_stopped(self, worker: WorkerInfo, reason: str) -> None:
        """A worker stopped (scaled down, crashed, replaced by a reload)."""

    def worker_state(self, worker: WorkerInfo, state: WorkerState) -> None:
        """A worker changed state (IDLE <-> BUSY)."""

    def worker_output(self, endpoint: str, worker: str, stream: str, text: str) -> None:
        """A line the user's code printed (``stream`` ``"stdout"``/``"stderr"``) or logged (``"log"``) in a
        worker; sent by the worker runtime as ``("output", stream, text)``. Logged to the ``gpuflex.worker``
        logger, marked with the endpoint and the worker."""
        log_worker_output(endpoint, worker, stream, text)


class Backend(abc.ABC):
    """Runs endpoints on one kind of target. Subclass it in a plugin and return the class from
    ``gpuflex_register_backends``.

    Class attributes:

    * ``name``: the name users pass to ``--backend`` / ``gpuflex.use``.
    * ``aliases``: other accepted names.
    * ``config_cls``: an attrs class of this backend's options (``gpuflex.use(name, **options)``).
    * ``capabilities``: feature -> ``None`` when supported, or a reason when not (e.g.
      ``{"gpu": "no CUDA device on this machine"}``). The conformance suite skips checks the backend declares
      unsupported, and the core warns when an endpoint needs one.
    * ``max_payload_bytes``: the largest call payload the target accepts, or ``None``.
    * ``retries_in_target``: the target retries failed calls itself, from the endpoint's ``retries`` (Modal's
      ``Retries``); the core then does not retry them again.
    """

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    config_cls: ClassVar[type[Any]] = NoConfig
    capabilities: ClassVar[Mapping[str, str | None]] = {}
    max_payload_bytes: ClassVar[int | None] = None
    retries_in_target: ClassVar[bool] = False

    def __init__(self, config: Any = None, *, events: BackendEvents | None = None) -> None:
        self.config = config if config is not None else self.config_cls()
        self.events = events or BackendEvents()
        self.task_group: TaskSpawner | None = None

    def attach(self, task_group: TaskSpawner) -> None:
        """Called by the core once, before ``deploy``: a task group, alive until after ``aclose``, for this
        backend's background work (reading from workers, scaling timers)."""
        self.task_group = task_group

    @classmethod
    def supports(cls, feature: str) -> bool:
        return cls.capabilities.get(feature, None) is None

    def live_capabilities(self) -> Mapping[str, str | None]:
        """*optional* Capabilities of this instance, which may depend on the machine (e.g. whether CUDA exists)."""
        return self.capabilities

    # -- deployment -------------------------------------------------------------------------------------------

    @abc.abstractmethod
    async def deploy(self, endpoint: EndpointSpec, bundle: Bundle) -> None:
        """**REQUIRED** Make ``endpoint`` runnable with the code in ``bundle``.

        Called before the first call of an endpoint, and again with a new bundle on every hot reload: calls
        already running finish on the old code, the next call runs the new code. Must be idempotent.
        """

    async def publish(self) -> str | None:
        """*optional* ``gpuflex deploy``: after every endpoint is deployed, make the deployment outlive this
        process (Modal's ``app.deploy``). Return where it lives (a URL, an id), or ``None`` when the backend's
        deployments always outlive the process, or never do."""
        return None

    async def teardown(self, endpoint: str | None = None) -> None:  # noqa: B027 - optional hook method
        """*optional* Remove what ``deploy`` created, for one endpoint or (``None``) all of them."""

    # -- releases: deployments a backend keeps (capability "releases"; see gpuflex._release) -----------------

    async def plan_release(self, release: Release) -> list[EndpointPlan]:
        """*optional* ``gpuflex plan``/``deploy``: read what is deployed in ``release.env`` and compare it with
        ``release``: one plan per endpoint, plus one ``REMOVE`` per endpoint this app deployed that is gone from
        it. Creates and changes nothing."""
        raise NotImplementedError(f"the {self.name} backend keeps no deployments of its own")

    async def apply_release(self, release: Release, plans: list[EndpointPlan]) -> list[DeployedEndpoint]:
        """*optional* ``gpuflex deploy``: make the changes in ``plans`` (nothing for an ``UNCHANGED`` one: no
        mutating call), store each endpoint's code where its workers find it without a client, record a
        :class:`Version` for every endpoint changed, and say where each endpoint is called."""
        raise NotImplementedError(f"the {self.name} backend keeps no deployments of its own")

    async def versions(self, env: str, endpoint: str) -> list[Version]:
        """*optional* ``gpuflex versions``: every recorded deploy of ``endpoint`` in ``env``, oldest first."""
        raise NotImplementedError(f"the {self.name} backend keeps no deployments of its own")

    async def rollback(self, env: str, endpoint: str, version: int | None = None) -> Version:
        """*optional* ``gpuflex rollback``: deploy the code and settings of ``version`` (default: the one before
        the current) again, recorded as a new version; return it."""
        raise NotImplementedError(f"the {self.name} backend keeps no deployments of its own")

    async def call_json(self, env: str, endpoint: str, body: Any) -> Any:
        """*optional* ``gpuflex call``: call a deployed endpoint as a plain HTTP client would, with JSON
        arguments; return its JSON result (a generator's: the list of chunks). A call that fails raises
        ``JobFailed`` with the endpoint's error (``ValidationError: steps: ...``)."""
        raise NotImplementedError(f"the {self.name} backend keeps no deployments of its own")

    def http_api(self, deployed: DeployedEndpoint, calls: list[Mapping[str, Any]]) -> dict[str, Any]:
        """*optional* The OpenAPI path items a plain HTTP client calls ``deployed`` through (each with its own
        ``servers``). ``calls`` describes each callable: ``method`` (None for a function), ``kind``,
        ``input``/``output`` (JSON schemas, often ``$ref``), ``summary``."""
        raise NotImplementedError(f"the {self.name} backend keeps no deployments of its own")

    # -- jobs -------------------------------------------------------------------------------------------------

    @abc.abstractmethod
    async def submit(self, call: Call) -> str:
        """**REQUIRED** Queue one attempt of a call; return a handle (any string unique within this backend)."""

    @abc.abstractmethod
    async def status(self, handle: str) -> JobUpdate:
        """**REQUIRED** The job's current state. The core polls this when ``updates`` is not overridden."""

    def updates(self, handle: str) -> AsyncIterator[JobUpdate]:
        """*optional* Push-based updates: yield each state change, ending with the terminal update.

        Backends that are told when a job changes state (the local backend, a persistent connection) override
        this; the others leave it and the core polls ``status`` with backoff.
        """
        raise NotImplementedError

    def stream(self, handle: str) -> AsyncIterator[Payload]:
        """*optional* (REQUIRED for generator endpoints) Yield each chunk a generator job produces, as it is
        produced, and return when the job ends. The terminal update says how it ended."""
        raise NotImplementedError(f"the {self.name} backend does not stream generator results")

    @abc.abstractmethod
    async def cancel(self, handle: str) -> None:
        """**REQUIRED** Stop a queued or running job. Its terminal update becomes CANCELLED (or TIMED_OUT when the
        core cancels on a deadline; the core records which). Cancelling a finished job does nothing."""

    # -- scaling, prices, introspection ---------------------------------------------------------------------

    async def scale(self, endpoint: str, *, min_workers: int, max_workers: int) -> None:  # noqa: B027
        """*optional* Change an endpoint's worker bounds without a redeploy."""

    def price(self, endpoint: EndpointSpec) -> Price:
        """*optional* What one worker of ``endpoint`` costs and how it is billed. Default: free."""
        return Price()

    async def workers(self) -> list[WorkerInfo]:
        """*optional* A snapshot of the workers this backend runs now."""
        return []

    @abc.abstractmethod
    async def aclose(self) -> None:
        """**REQUIRED** Stop everything this instance started (workers, connections). Called once, last."""

    async def __aenter__(self) -> Backend:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
