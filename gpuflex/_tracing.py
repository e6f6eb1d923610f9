"""OpenTelemetry spans per job, opt-in: ``GPUFLEX_TRACING=1`` (set before the first call) registers
:class:`JobTracer` on the plugin manager. Off, nothing is registered and ``opentelemetry`` is never imported.

Each job is one trace, written with the OpenTelemetry API through the tracer provider the application configured
(the SDK and its exporter are the application's choice, as for any library)::

    gpuflex.job <endpoint>            submitted -> finished; status, cost, attempts, worker
    ├── gpuflex.submit                binding the endpoint: bundle, deploy (first call), budget check
    ├── gpuflex.queue                 accepted -> a worker took it (one per attempt)
    ├── gpuflex.run                   on the worker (one per attempt; a retried one ends in error)
    └── gpuflex.result                the terminal update -> the job's outcome recorded (cost, hooks)

Every span carries ``gpuflex.endpoint``, ``gpuflex.backend`` and ``gpuflex.job_id``; run spans and the job's span
``gpuflex.worker``. The job's span is a root: hooks run on gpuflex's own thread, where the caller's span is not
the current one.
"""

from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

from ._version import __version__
from .errors import GpuflexWarning

if TYPE_CHECKING:
    import pluggy as pluggy_types
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from ._job import Job

__all__ = ["PLUGIN_NAME", "TRACING_ENV", "JobTracer", "install_tracing"]

TRACING_ENV = "GPUFLEX_TRACING"
PLUGIN_NAME = "gpuflex-tracing"
hookimpl = pluggy.HookimplMarker("gpuflex")


def _ns(seconds: float | None) -> int:
    return time.time_ns() if seconds is None else int(seconds * 1e9)


@attrs.define
class _Open:
    root: Span
    queue: Span | None = None
    run: Span | None = None


class JobTracer:
    """A plugin: one trace per job (see the module docstring)."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        self._open: dict[str, _Open] = {}

    def _attributes(self, job: Job) -> dict[str, Any]:
        return {"gpuflex.endpoint": job.endpoint, "gpuflex.backend": job.backend, "gpuflex.job_id": job.id}

    def _child(self, parent: Span, name: str, job: Job, start: float | None, **extra: Any) -> Span:
        from opentelemetry import trace

        attributes = {**self._attributes(job), **{k: v for k, v in extra.items() if v is not None}}
        return self.tracer.start_span(name, context=trace.set_span_in_context(parent), start_time=_ns(start),
                                      attributes=attributes)

    def _begin(self, job: Job) -> _Open:
        root = self.tracer.start_span(f"gpuflex.job {job.endpoint}", start_time=_ns(job.submitted_at),
                                      attributes=self._attributes(job))
        opened = self._open[job.id] = _Open(root)
        return opened

    @hookimpl
    def gpuflex_job_submitted(self, job: Job) -> None:
        opened = self._begin(job)
        self._child(opened.root, "gpuflex.submit", job, job.submitted_at).end()
        opened.queue = self._child(opened.root, "gpuflex.queue", job, None, **{"gpuflex.attempt": 1})

    @hookimpl
    def gpuflex_job_started(self, job: Job) -> None:
        opened = self._open.get(job.id)
        if opened is None:
            return
        if opened.queue is not None:
            opened.queue.end(end_time=_ns(job.started_at))
            opened.queue = None
        opened.run = self._child(opened.root, "gpuflex.run", job, job.started_at,
                                 **{"gpuflex.worker": job.worker, "gpuflex.attempt": job.attempts})

    @hookimpl
    def gpuflex_job_retrying(self, job: Job, reason: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        opened = self._open.get(job.id)
        if opened is None:
            return
        if opened.run is not None:
            opened.run.set_status(Status(StatusCode.ERROR, reason))
            opened.run.end()
            opened.run = None
        opened.root.add_event("gpuflex.retry", {"gpuflex.reason": reason, "gpuflex.attempt": job.attempts})
        opened.queue = self._child(opened.root, "gpuflex.queue", job, None, **{"gpuflex.attempt": job.attempts + 1})

    @hookimpl
    def gpuflex_job_finished(self, job: Job) -> None:
        from opentelemetry.trace import Status, StatusCode

        opened = self._open.pop(job.id, None) or self._begin(job)  # failed before it was submitted
        end = _ns(job.finished_at)
        for span in (opened.queue, opened.run):
            if span is not None:
                span.end(end_time=end)
        self._child(opened.root, "gpuflex.result", job, job.finished_at, **{"gpuflex.status": job.status.value}).end()
        root = opened.root
        root.set_attributes({"gpuflex.status": job.status.value, "gpuflex.attempts": job.attempts,
                             "gpuflex.cost_usd": job.cost.usd, "gpuflex.billing": job.cost.rule})
        if job.worker:
            root.set_attribute("gpuflex.worker", job.worker)
        if job.status.value != "COMPLETED":
            root.set_status(Status(StatusCode.ERROR, f"{job.status.value}: {job.reason or 'no reason given'}"))
        root.end()


def install_tracing(pm: pluggy_types.PluginManager, tracer_provider: TracerProvider | None = None
                    ) -> JobTracer | None:
    """Register a :class:`JobTracer` (replacing one registered before) writing through ``tracer_provider``, or
    OpenTelemetry's global one. Warns and returns ``None`` when ``opentelemetry-api`` is not installed."""
    try:
        from opentelemetry import trace
    except ImportError:
        warnings.warn(f"{TRACING_ENV} is set, but OpenTelemetry is not installed: no spans are written. "
                      "Install it with: pip install 'gpuflex[otel]' (and an SDK with an exporter)",
                      GpuflexWarning, stacklevel=2)
        return None
    old = pm.get_plugin(PLUGIN_NAME)
    if old is not None:
        pm.unregister(old)
    tracer = JobTracer(trace.get_tracer("gpuflex", __version__, tracer_provider=tracer_provider))
    pm.register(tracer, name=PLUGIN_NAME)
    return tracer
