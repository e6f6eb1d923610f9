"""The core's value models: endpoint specs, job and worker states, bundles, prices and costs."""

from __future__ import annotations

import enum
import hashlib
import json
import typing
from typing import Any

import attrs

from .errors import ConfigError

if typing.TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from .gpus import GPU

__all__ = [
    "Bundle",
    "BundleFile",
    "Cost",
    "EndpointKind",
    "EndpointSpec",
    "FunctionRef",
    "JobStatus",
    "Price",
    "Resources",
    "WorkerInfo",
    "WorkerState",
]


class JobStatus(enum.Enum):
    """Where a job is. The last four are terminal: a job reaches exactly one of them, with a reason."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"

    @property
    def is_terminal(self) -> bool:
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)


class WorkerState(enum.Enum):
    """A worker's life: STARTING -> IDLE <-> BUSY -> STOPPING -> DEAD."""

    STARTING = "STARTING"
    IDLE = "IDLE"
    BUSY = "BUSY"
    STOPPING = "STOPPING"
    DEAD = "DEAD"


class EndpointKind(enum.Enum):
    """What the decorated object is; it decides how a call returns."""

    FUNCTION = "function"
    ASYNC_FUNCTION = "async_function"
    GENERATOR = "generator"
    ASYNC_GENERATOR = "async_generator"
    CLASS = "class"

    @property
    def streams(self) -> bool:
        return self in (EndpointKind.GENERATOR, EndpointKind.ASYNC_GENERATOR)


def _non_negative_int(inst: object, attr: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{attr.name} must be a non-negative integer, got {value!r}")


def _positive_number_or_none(inst: object, attr: attrs.Attribute[Any], value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{attr.name} must be a positive number of seconds or None, got {value!r}")


def _sorted_dict(value: Mapping[str, str]) -> dict[str, str]:
    return dict(sorted(value.items()))


@typing.final
@attrs.frozen(kw_only=True)
class Resources:
    """Hardware per worker: GPUs, CPU cores, memory in MiB."""

    gpu: GPU | None = None
    cpu: float | None = attrs.field(default=None, validator=_positive_number_or_none)
    memory: float | None = attrs.field(default=None, validator=_positive_number_or_none)


@typing.final
@attrs.frozen(kw_only=True)
class FunctionRef:
    """How a worker finds the user's object: import ``module`` and walk ``qualname``.

    ``import_path`` (relative to the bundle root) goes on the worker's ``sys.path``. ``path`` is set when the
    module is a script (``__main__``): the worker imports the file under a private name so its
    ``if __name__ == "__main__"`` block does not run. ``pickled`` holds the object by value (cloudpickle) when it
    cannot be imported (closures, interactive sessions).
    """

    module: str
    qualname: str
    import_path: str = "."
    path: str | None = None
    pickled: bytes | None = attrs.field(default=None, repr=False)

    @property
    def label(self) -> str:
        return f"{self.module}:{self.qualname}"


@typing.final
@attrs.frozen(kw_only=True)
class EndpointSpec:
    """Everything a backend needs to know about one endpoint. Built by ``@gpuflex.endpoint``."""

    name: str
    kind: EndpointKind
    target: FunctionRef
    methods: Mapping[str, EndpointKind] = attrs.field(factory=dict)
    resources: Resources = Resources()
    min_workers: int = attrs.field(default=0, validator=_non_negative_int)
    max_workers: int = attrs.field(default=1, validator=_non_negative_int)
    idle_timeout: float = attrs.field(default=60.0, validator=_positive_number_or_none)
    timeout: float | None = attrs.field(default=None, validator=_positive_number_or_none)
    retries: int = attrs.field(default=0, validator=_non_negative_int)
    concurrency: int = attrs.field(default=1, validator=_non_negative_int)
    max_batch_size: int | None = None
    batch_wait_ms: float = 10.0
    dependencies: tuple[str, ...] = ()
    system_dependencies: tuple[str, ...] = ()
    env: Mapping[str, str] = attrs.field(factory=dict, converter=_sorted_dict)
    secrets: tuple[str, ...] = ()
    backend: str | None = None

    def __attrs_post_init__(self) -> None:
        if not self.name.replace("-", "_").isidentifier():
            raise ConfigError(f"endpoint name must be letters, digits, '_' or '-', got {self.name!r}")
        if self.max_workers < 1:
            raise ConfigError(f"max_workers must be at least 1, got {self.max_workers}")
        if self.min_workers > self.max_workers:
            raise ConfigError(
                f"min_workers ({self.min_workers}) is above max_workers ({self.max_workers}) for {self.name!r}"
            )
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {self.concurrency}")
        self._check_batching()
        for key, value in self.env.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ConfigError(f"env must map strings to strings; {key!r}: {value!r} is not")

    def _check_batching(self) -> None:
        if self.max_batch_size is None:
            return
        if isinstance(self.max_batch_size, bool) or not isinstance(self.max_batch_size, int) \
                or self.max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be a whole number of at least 1, got {self.max_batch_size!r}")
        wait = self.batch_wait_ms
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not wait >= 0:
            raise ConfigError(f"batch_wait_ms must be non-negative milliseconds, got {wait!r}")
        kinds = [self.kind] if self.kind is not EndpointKind.CLASS else list(self.methods.values())
        streaming = (EndpointKind.GENERATOR, EndpointKind.ASYNC_GENERATOR)
        if any(kind in streaming for kind in kinds):
            raise ConfigError(f"endpoint {self.name!r}: generators cannot be batched (max_batch_size); a batched "
                              "function takes a list of items and returns a list of results")

    @property
    def batched(self) -> bool:
        return self.max_batch_size is not None

    @property
    def calls_per_worker(self) -> int:
        """Calls one worker takes at once: ``concurrency`` batches of up to ``max_batch_size`` calls each."""
        return self.concurrency * (self.max_batch_size or 1)

    @property
    def gpu(self) -> GPU | None:
        return self.resources.gpu

    def kind_of(self, method: str | None) -> EndpointKind:
        """The kind of one callable: the endpoint itself, or a method of a class endpoint."""
        if self.kind is not EndpointKind.CLASS:
            return self.kind
        name = method or "__call__"
        if name not in self.methods:
            raise ConfigError(f"endpoint {self.name!r} has no remote method {name!r}; it has {sorted(self.methods)}")
        return self.methods[name]

    def config_hash(self) -> str:
        """A hash of the deploy-relevant settings: a change means the backend must redeploy."""
        data = {
            "name": self.name,
            "gpu": str(self.gpu) if self.gpu else None,
            "cpu": self.resources.cpu,
            "memory": self.resources.memory,
            "scale": [self.min_workers, self.max_workers, self.idle_timeout, self.concurrency],
            "batch": [self.max_batch_size, self.batch_wait_ms] if self.max_batch_size else None,
            "timeout": self.timeout,
            "dependencies": sorted(self.dependencies),
            "system_dependencies": sorted(self.system_dependencies),
            "env": dict(self.env),
            "secrets": sorted(self.secrets),
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@typing.final
@attrs.frozen(kw_only=True)
class BundleFile:
    path: str
    sha256: str
    size: int


@typing.final
@attrs.frozen(kw_only=True)
class Bundle:
    """A content-addressed snapshot of the project's source, materialised at ``root``."""

    hash: str
    root: Path
    files: tuple[BundleFile, ...]
    import_paths: tuple[str, ...] = (".",)
    python: str = ""
    gpuflex: str = ""
    skipped: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def manifest(self) -> dict[str, object]:
        return {
            "hash": self.hash,
            "python": self.python,
            "gpuflex": self.gpuflex,
            "import_paths": list(self.import_paths),
            "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in self.files],
        }


@typing.final
@attrs.frozen(kw_only=True)
class Price:
    """What one worker of an endpoint costs, and how the backend bills it.

    ``billing`` is one of ``"free"``, ``"per-second"`` (execution time, rounded up to ``increment`` seconds; a
    worker not kept warm also bills ``tail_seconds`` of idle time after the last call of a burst, once per burst),
    ``"uptime"`` (hourly rate times how long the worker or host is up, split over the jobs it ran), or
    ``"unknown"`` when the vendor publishes no price for this hardware: nothing is counted, and reports say so
    rather than show it as free.
    """

    usd_per_hour: float = 0.0
    billing: str = "free"
    increment: float = 1.0
    tail_seconds: float = 0.0
    idle_usd_per_hour: float | None = None
    source: str = ""

    @property
    def usd_per_second(self) -> float:
        return self.usd_per_hour / 3600.0


@typing.final
@attrs.frozen(kw_only=True)
class Cost:
    """The cost of one job (or a sum of them), with the rule that produced it."""

    usd: float = 0.0
    billed_seconds: float = 0.0
    rule: str = "free"

    def __add__(self, other: Cost) -> Cost:
        if self == Cost():  # the empty start of a sum takes the other side's rule
            return other
        if other == Cost():
            return self
        rule = self.rule if self.rule == other.rule else "mixed"
        return Cost(usd=self.usd + other.usd, billed_seconds=self.billed_seconds + other.billed_seconds, rule=rule)


@attrs.define(kw_only=True)
class WorkerInfo:
    """A snapshot of one worker, as a backend reports it."""

    id: str
    endpoint: str
    state: WorkerState
    started_at: float
    host: str = "localhost"
    gpus: tuple[str, ...] = ()
    pid: int | None = None
    active_jobs: int = 0
    jobs_done: int = 0
    bundle_hash: str = ""
