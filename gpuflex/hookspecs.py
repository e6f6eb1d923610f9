"""Hook specifications: how plugins register backends and observe or steer the core.

Hooks register and observe; they never run jobs (that is :class:`gpuflex.backend.Backend`'s work). Implement
them with ``from gpuflex import hookimpl`` in a module named by a ``gpuflex`` entry point. Every hook is called
with keyword arguments; a plugin may accept any subset of the parameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from ._job import Job
    from ._models import Bundle, Cost, EndpointSpec, Price, WorkerInfo
    from .backend import Backend, BackendRef

hookspec = pluggy.HookspecMarker("gpuflex")

# -- registration ---------------------------------------------------------------------------------------------


@hookspec
def gpuflex_register_backends() -> type[Backend] | BackendRef | list[type[Backend] | BackendRef] | None:
    """Return the backend class (or classes) this plugin provides, or a :class:`~gpuflex.backend.BackendRef` per
    backend to have it imported only when it is used (processes that use another backend never import it).

    Called once, when the registry is first needed (``gpuflex.list_backends()``, the first call of an endpoint).

    :returns: a :class:`~gpuflex.backend.Backend` subclass or a ``BackendRef``, a list of them, or ``None``.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2 a ``BackendRef`` is accepted.
    """


# -- configuration --------------------------------------------------------------------------------------------


@hookspec
def gpuflex_endpoint_spec(spec: EndpointSpec) -> EndpointSpec | None:
    """Validate or change an endpoint's spec before it is bound to a backend.

    Called once per endpoint and backend, before the first deploy. Raise :class:`gpuflex.errors.ConfigError` to
    reject the spec; return a replacement (built with ``attrs.evolve``) to change it. Replacements are applied
    in pluggy's call order (the plugin registered last runs first), each plugin seeing the previous result.

    :param spec: the endpoint as decorated.
    :returns: a replacement spec, or ``None`` to keep it.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def gpuflex_select_backend(spec: EndpointSpec) -> str | None:
    """Choose the backend for an endpoint that names none itself.

    Called in the caller's thread on every call of an endpoint that names no backend and runs outside
    ``gpuflex.use`` (those win), before the project file and ``GPUFLEX_BACKEND`` are consulted: keep it cheap.
    Stops at first non-None result.

    :param spec: the endpoint being bound.
    :returns: a backend name, or ``None`` to leave the choice to the usual order.

    .. versionadded:: 0.1
    """


@hookspec
def gpuflex_bundle_ignore(root: str) -> list[str] | None:
    """Add gitignore-style patterns of files to leave out of a bundle.

    Called every time a bundle is built: on the first call, and after each ``gpuflex.reload()`` (which
    ``gpuflex serve`` triggers when a file is saved).

    :param root: the project directory being bundled.
    :returns: patterns, or ``None``.

    .. versionadded:: 0.1
    """


@hookspec
def gpuflex_deployed(spec: EndpointSpec, bundle: Bundle, backend: str) -> None:
    """Observe a deploy: an endpoint now runs the code in ``bundle`` on ``backend``.

    Called after every successful ``Backend.deploy``, including each hot reload.

    .. versionadded:: 0.1
    """


# -- prices and budgets ---------------------------------------------------------------------------------------


@hookspec(firstresult=True)
def gpuflex_price(spec: EndpointSpec, backend: str, default: Price) -> Price | None:
    """Override what an endpoint's workers cost (a negotiated rate, a private cluster's internal price).

    Called once per backend instance and endpoint (before its first job; again after its spec changes) and by
    ``gpuflex plan``; the answer is kept. Stops at first non-None result.

    :param default: the backend's own price.
    :returns: a :class:`~gpuflex.Price`, or ``None`` to keep ``default``.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def gpuflex_check_budget(spec: EndpointSpec, spent: Cost, backend: str) -> str | None:
    """Veto new work: return a reason to refuse a job before it is submitted.

    Called before every submit with what has been spent so far in this process. Stops at first non-None
    result; the caller gets :class:`gpuflex.errors.QuotaExceeded` with the reason.

    :returns: a reason to refuse, or ``None`` to allow.

    .. versionadded:: 0.1
    """


# -- job lifecycle --------------------------------------------------------------------------------------------


@hookspec
def gpuflex_job_submitted(job: Job) -> None:
    """A job was accepted (called once per job, before its first attempt is queued).

    .. versionadded:: 0.1
    """


@hookspec
def gpuflex_job_started(job: Job) -> None:
    """A job's attempt started running on a worker (called once per attempt).

    .. versionadded:: 0.1
    """


@hookspec
def gpuflex_job_retrying(job: Job, reason: str) -> None:
    """A job's attempt failed and another attempt is about to be queued.

    .. versionadded:: 0.1
    """


@hookspec
def gpuflex_job_finished(job: Job) -> None:
    """A job reached its terminal state; ``job.status``, ``job.cost`` and the timings are final.

    Called exactly once per job, whatever the outcome.

    .. versionadded:: 0.1
    """


# -- worker lifecycle -----------------------------------------------------------------------------------------


@hookspec
def gpuflex_worker_started(worker: WorkerInfo, backend: str) -> None:
    """A worker became ready to take jobs.

    .. versionadded:: 0.1
    """


@hookspec
def gpuflex_worker_stopped(worker: WorkerInfo, backend: str, reason: str) -> None:
    """A worker stopped: scaled down, crashed, killed, or replaced by a hot reload.

    .. versionadded:: 0.1
    """


@hookspec
def gpuflex_worker_output(endpoint: str, worker: str, stream: str, text: str, backend: str) -> None:
    """A worker printed a line (``stream`` ``"stdout"`` or ``"stderr"``) or logged one (``"log"``, the text starting
    with the level name).

    Called on the gpuflex loop thread for every line a backend reports through ``BackendEvents.worker_output``,
    besides the record of the ``gpuflex.worker`` logger (whose level does not filter what this hook sees): keep it
    quick. ``worker`` is the backend's name for the worker (``image-build`` for Modal's build lines).

    .. versionadded:: 0.1
    """
