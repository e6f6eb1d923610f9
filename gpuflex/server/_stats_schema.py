"""The OpenAPI description of the dev server's live view: ``/``, ``/dashboard.js``, ``/stats`` and ``/metrics``
(their bodies as :mod:`gpuflex.server._dashboard` writes them, from :class:`gpuflex.Stats`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .._models import JobStatus, WorkerState  # noqa: TC001 - pydantic reads the annotations at run time

__all__ = ["MODELS", "stats_paths"]


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HistogramInfo(_Closed):
    count: int
    sum: float
    buckets: list[tuple[float | Literal["+Inf"], int]] = Field(
        description="[upper bound, observations at most that], cumulative, as Prometheus counts them")


class EndpointStatsInfo(_Closed):
    endpoint: str
    backend: str
    gpu: str | None
    settings: dict[str, Any]
    jobs: dict[str, int] = Field(description="Finished jobs by final status.")
    in_flight: dict[str, int] = Field(description="Jobs QUEUED or RUNNING now.")
    phases: dict[str, HistogramInfo] = Field(description="Seconds in each phase: queued, cold_start, run.")
    workers: dict[str, int] = Field(description="Workers by state.")
    cost_usd: float
    unpriced_jobs: int
    batch_size: HistogramInfo | None


class WorkerStatsInfo(_Closed):
    id: str
    endpoint: str
    backend: str
    state: WorkerState | None = Field(description="null: the backend reports no lifecycle for this worker.")
    gpus: list[str]
    host: str
    pid: int | None
    started_at: float | None
    ready_at: float | None
    stopped_at: float | None
    reason: str | None
    active_jobs: int
    jobs_done: int
    output: list[tuple[float, str, str]] = Field(description="Its last lines: [time, stream, text], oldest first.")


class JobStatsInfo(_Closed):
    id: str
    endpoint: str
    backend: str
    status: JobStatus
    worker: str | None
    attempts: int
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    queued: float | None
    cold_start: float | None
    run: float | None
    cost_usd: float
    billing: str
    reason: str | None


class DeclaredEndpoint(_Closed):
    endpoint: str
    backend: str
    kind: str
    gpu: str | None
    settings: dict[str, Any]


class EndpointSpend(_Closed):
    endpoint: str
    calls: int
    cost_usd: float
    idle_usd: float
    bursts: int


class ServerStats(_Closed):
    """``gpuflex.stats()`` with the app's declared endpoints and the spend per endpoint (idle tails included)."""

    endpoints: list[EndpointStatsInfo]
    workers: list[WorkerStatsInfo]
    jobs: list[JobStatsInfo] = Field(description="The last 200 jobs, oldest first.")
    spent_usd: float
    budget_usd: float | None
    taken_at: float
    app: str
    reloads: int
    declared: list[DeclaredEndpoint]
    costs: list[EndpointSpend]


MODELS = {"ServerStats": ServerStats}
_TEXT = {"schema": {"type": "string"}}
_STATS_EVENTS = {"schema": {
    "type": "object", "required": ["data"],
    "description": "Server-sent events while the request accepts text/event-stream: `event: stats` with the JSON "
                   "snapshot, on each change (at most four a second) and at least every 5 s.",
    "properties": {"event": {"enum": ["stats"]}, "data": {"type": "string", "contentMediaType": "application/json"}},
}}


def stats_paths(refs: dict[Any, dict[str, Any]], errors: dict[str, Any]) -> dict[str, Any]:
    """The live view's paths; ``errors`` holds the 401 answer when the server has a token."""
    tags = ["server"]
    return {
        "/": {"get": {"tags": tags, "summary": "The dashboard (a page with no data of its own: it reads /stats)",
                      "operationId": "dashboard",
                      "responses": {"200": {"description": "The page.", "content": {"text/html": _TEXT}}}}},
        "/dashboard.js": {"get": {"tags": tags, "summary": "The dashboard's script", "operationId": "dashboard_js",
                                  "responses": {"200": {"description": "The script.",
                                                        "content": {"text/javascript": _TEXT}}}}},
        "/stats": {"get": {
            "tags": tags, "summary": "Jobs, phases, workers and spend, as JSON or server-sent events",
            "operationId": "stats",
            "responses": {"200": {"description": "A snapshot (gpuflex.stats() and the app's endpoints).",
                                  "content": {"application/json": {"schema": refs["ServerStats"]},
                                              "text/event-stream": _STATS_EVENTS}},
                          **errors}}},
        "/metrics": {"get": {
            "tags": tags, "summary": "The same counters in the Prometheus text format", "operationId": "metrics",
            "responses": {"200": {"description": "gpuflex_jobs_total, gpuflex_job_duration_seconds, "
                                                 "gpuflex_workers, gpuflex_cost_usd_total, gpuflex_batch_size...",
                                  "content": {"text/plain": _TEXT}},
                          **errors}}},
    }
