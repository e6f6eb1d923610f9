"""gpuflex: one decorated Python function, any GPU target.

>>> import gpuflex
>>> @gpuflex.endpoint(gpu="H100", max_workers=4)
... def embed(text: str) -> list[float]: ...
"""

from __future__ import annotations

import importlib as _importlib
import os as _os
import typing as _typing

from . import errors as errors
from ._version import __version__ as __version__
from .errors import GpuflexError as GpuflexError
from .errors import RemoteError as RemoteError

if _typing.TYPE_CHECKING:
    from ._config import use as use
    from ._costs import EndpointCosts as EndpointCosts
    from ._job import Job as Job
    from ._models import Bundle as Bundle
    from ._models import Cost as Cost
    from ._models import EndpointKind as EndpointKind
    from ._models import EndpointSpec as EndpointSpec
    from ._models import JobStatus as JobStatus
    from ._models import Price as Price
    from ._models import Resources as Resources
    from ._models import WorkerInfo as WorkerInfo
    from ._models import WorkerState as WorkerState
    from ._plugins import hookimpl as hookimpl
    from ._registry import list_backends as list_backends
    from ._stats import EndpointStats as EndpointStats
    from ._stats import Histogram as Histogram
    from ._stats import JobStats as JobStats
    from ._stats import Stats as Stats
    from ._stats import WorkerStats as WorkerStats
    from .client._endpoint import Endpoint as Endpoint
    from .client._endpoint import RemoteInstance as RemoteInstance
    from .client._endpoint import endpoint as endpoint
    from .client._session import Session
    from .client._session import shutdown as shutdown
    from .gpus import GPU as GPU

# ``import gpuflex`` itself imports almost nothing: the public names below load on first use, all at once. A worker
# process (``python -m gpuflex.runtime``) imports the package too and needs none of them, so it starts faster.
_LAZY: dict[str, tuple[str, str]] = {
    "use": ("._config", "use"),
    "EndpointCosts": ("._costs", "EndpointCosts"),
    "Job": ("._job", "Job"),
    "Bundle": ("._models", "Bundle"),
    "Cost": ("._models", "Cost"),
    "EndpointKind": ("._models", "EndpointKind"),
    "EndpointSpec": ("._models", "EndpointSpec"),
    "JobStatus": ("._models", "JobStatus"),
    "Price": ("._models", "Price"),
    "Resources": ("._models", "Resources"),
    "WorkerInfo": ("._models", "WorkerInfo"),
    "WorkerState": ("._models", "WorkerState"),
    "hookimpl": ("._plugins", "hookimpl"),
    "list_backends": ("._registry", "list_backends"),
    "EndpointStats": ("._stats", "EndpointStats"),
    "Histogram": ("._stats", "Histogram"),
    "JobStats": ("._stats", "JobStats"),
    "Stats": ("._stats", "Stats"),
    "WorkerStats": ("._stats", "WorkerStats"),
    "Endpoint": (".client._endpoint", "Endpoint"),
    "RemoteInstance": (".client._endpoint", "RemoteInstance"),
    "endpoint": (".client._endpoint", "endpoint"),
    "shutdown": (".client._session", "shutdown"),
    "GPU": (".gpus", "GPU"),
}


def _load_public_names() -> None:
    namespace = globals()
    for alias, (module, name) in _LAZY.items():
        obj = getattr(_importlib.import_module(module, __name__), name)
        if isinstance(obj, type) and obj.__module__ != "gpuflex.errors":
            obj.__module__ = "gpuflex"
        namespace[alias] = obj


def __getattr__(name: str) -> _typing.Any:
    if name in _LAZY:
        if _os.environ.get("GPUFLEX_IN_WORKER"):  # a worker loads only what the endpoint's module uses
            module, attribute = _LAZY[name]
            globals()[name] = getattr(_importlib.import_module(module, __name__), attribute)
        else:
            _load_public_names()
        return globals()[name]
    raise AttributeError(f"module 'gpuflex' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def _get_session() -> Session:
    from .client._session import get_session

    return get_session()


def costs() -> dict[str, EndpointCosts]:
    """Calls, GPU-seconds and dollars per endpoint, for the jobs this process ran."""
    return _get_session().meter.summary()


def reload() -> None:
    """Pick up saved code changes: the next call of each endpoint rebuilds its bundle and, if anything changed,
    redeploys (the local backend loads the new code into its running workers between calls)."""
    _get_session().invalidate_bundles()


def stats() -> Stats:
    """Jobs by status, their queue, cold-start and run times, workers by state with their output, recent jobs,
    and what was spent against the budget, for this process so far: the numbers the dev server's dashboard and
    ``/metrics`` show, for a script without a server."""
    from ._collector import collector

    session = _get_session()
    return collector().snapshot(spent_usd=session.meter.total().usd, budget_usd=session.budget.current_limit())


def total_cost() -> Cost:
    """What every job this process ran has cost so far."""
    return _get_session().meter.total()


__all__ = sorted(
    [
        "GPU",
        "Bundle",
        "Cost",
        "Endpoint",
        "EndpointCosts",
        "EndpointKind",
        "EndpointSpec",
        "EndpointStats",
        "GpuflexError",
        "Histogram",
        "Job",
        "JobStats",
        "JobStatus",
        "Price",
        "RemoteError",
        "RemoteInstance",
        "Resources",
        "Stats",
        "WorkerInfo",
        "WorkerState",
        "WorkerStats",
        "__version__",
        "costs",
        "endpoint",
        "errors",
        "hookimpl",
        "list_backends",
        "reload",
        "shutdown",
        "stats",
        "total_cost",
        "use",
    ]
)
