"""What ran in this process, as numbers: ``gpuflex.stats()`` returns a :class:`Stats` snapshot, which the dev server's
dashboard, ``/stats`` and ``/metrics`` serve too. The counting is done by :mod:`gpuflex._collector`.

Jobs are counted when they finish, by endpoint, backend and final status; their time is split in three phases:

* ``queued``: from ``spawn`` (or the HTTP request) until a worker took the job, less any cold start;
* ``cold_start``: the part of that wait spent starting the worker that took it (its process, imports and a class's
  ``setup()``), known for backends that report their workers (local, pod); 0 for a job that found a worker ready;
* ``run``: on the worker.
"""

from __future__ import annotations

import math
import typing
from typing import Any

import attrs

if typing.TYPE_CHECKING:
    from collections.abc import Mapping

    from ._models import JobStatus, WorkerState

__all__ = ["PHASES", "EndpointStats", "Histogram", "JobStats", "Stats", "WorkerStats", "histogram"]

PHASES = ("queued", "cold_start", "run")
#: seconds: Prometheus' default buckets, then the minutes a cold start or a long call can take
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                   math.inf)
BATCH_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, math.inf)


@typing.final
@attrs.frozen(kw_only=True)
class Histogram:
    """Observations in cumulative buckets, as Prometheus counts them: ``buckets`` pairs each upper bound with how
    many observations were at most that (the last bound is infinity, holding ``count``)."""

    buckets: tuple[tuple[float, int], ...]
    count: int = 0
    sum: float = 0.0

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "sum": self.sum,
                "buckets": [["+Inf" if math.isinf(le) else le, n] for le, n in self.buckets]}


def histogram(bounds: tuple[float, ...], values: list[float]) -> Histogram:
    """A :class:`Histogram` of ``values`` over ``bounds`` (ascending, ending with infinity)."""
    return Histogram(buckets=tuple((le, sum(1 for v in values if v <= le)) for le in bounds), count=len(values),
                     sum=float(sum(values)))


@typing.final
@attrs.frozen(kw_only=True)
class EndpointStats:
    """One endpoint on one backend: its settings, its finished jobs by status, the time they spent in each phase,
    its workers by state, and what its jobs cost.

    ``cost_usd`` sums the jobs' own costs (their run, billed by the backend's rule); the idle tails of per-second
    workers, billed once per burst of calls, are in :attr:`Stats.spent_usd` and ``gpuflex.costs()``.
    ``batch_size`` is set for a batched endpoint (``max_batch_size``): how many calls a worker answered together,
    seen from the caller (calls of one worker that finished within 20 ms of each other, up to ``max_batch_size``;
    the worker's own count does not travel back).
    """

    endpoint: str
    backend: str
    gpu: str | None = None
    settings: Mapping[str, Any] = attrs.field(factory=dict)
    jobs: Mapping[str, int] = attrs.field(factory=dict)
    in_flight: Mapping[str, int] = attrs.field(factory=dict)
    phases: Mapping[str, Histogram] = attrs.field(factory=dict)
    workers: Mapping[str, int] = attrs.field(factory=dict)
    cost_usd: float = 0.0
    unpriced_jobs: int = 0
    batch_size: Histogram | None = None

    def to_json(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "backend": self.backend, "gpu": self.gpu, "settings": dict(self.settings),
                "jobs": dict(self.jobs), "in_flight": dict(self.in_flight),
                "phases": {name: h.to_json() for name, h in self.phases.items()}, "workers": dict(self.workers),
                "cost_usd": self.cost_usd, "unpriced_jobs": self.unpriced_jobs,
                "batch_size": self.batch_size.to_json() if self.batch_size else None}


@typing.final
@attrs.frozen(kw_only=True)
class WorkerStats:
    """One worker: its state, the GPUs it actually got, its life, and the last lines it printed or logged
    (``output``: ``(time, stream, text)``, oldest first). ``state`` is ``None`` for a worker whose backend reports
    no lifecycle (seen only through its jobs or its output)."""

    id: str
    endpoint: str
    backend: str
    state: WorkerState | None
    gpus: tuple[str, ...] = ()
    host: str = ""
    pid: int | None = None
    started_at: float | None = None
    ready_at: float | None = None
    stopped_at: float | None = None
    reason: str | None = None
    active_jobs: int = 0
    jobs_done: int = 0
    output: tuple[tuple[float, str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = attrs.asdict(self, recurse=False)
        data.update(state=self.state.value if self.state else None, gpus=list(self.gpus),
                    output=[list(line) for line in self.output])
        return data


@typing.final
@attrs.frozen(kw_only=True)
class JobStats:
    """One job's timeline (``queued``, ``cold_start``, ``run``: seconds, ``None`` until known) and cost."""

    id: str
    endpoint: str
    backend: str
    status: JobStatus
    worker: str | None = None
    attempts: int = 0
    submitted_at: float
    started_at: float | None = None
    finished_at: float | None = None
    queued: float | None = None
    cold_start: float | None = None
    run: float | None = None
    cost_usd: float = 0.0
    billing: str = "free"
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = attrs.asdict(self, recurse=False)
        data["status"] = self.status.value
        return data


@typing.final
@attrs.frozen(kw_only=True)
class Stats:
    """A snapshot of what this process ran (``gpuflex.stats()``): per endpoint and backend, its workers, its recent
    jobs (the last 200, oldest first), what was spent (jobs and idle tails) and the budget (``--max-cost``)."""

    endpoints: tuple[EndpointStats, ...] = ()
    workers: tuple[WorkerStats, ...] = ()
    jobs: tuple[JobStats, ...] = ()
    spent_usd: float = 0.0
    budget_usd: float | None = None
    taken_at: float = 0.0

    def endpoint(self, name: str, backend: str | None = None) -> EndpointStats | None:
        """The entry of endpoint ``name`` (on ``backend``, when it ran on several)."""
        return next((e for e in self.endpoints if e.endpoint == name and backend in (None, e.backend)), None)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data (what the dev server's ``GET /stats`` answers)."""
        return {"endpoints": [e.to_json() for e in self.endpoints], "workers": [w.to_json() for w in self.workers],
                "jobs": [j.to_json() for j in self.jobs], "spent_usd": self.spent_usd,
                "budget_usd": self.budget_usd, "taken_at": self.taken_at}
