"""``GET /metrics``: :func:`gpuflex.stats` in the Prometheus text format, written with prometheus-client.

=====================================  =========  ===============================================================
metric                                 type       labels; what it counts
=====================================  =========  ===============================================================
``gpuflex_jobs_total``                 counter    endpoint, backend, status: jobs finished, by final status
``gpuflex_jobs_in_flight``             gauge      endpoint, backend, status (QUEUED, RUNNING): jobs not finished
``gpuflex_job_duration_seconds``       histogram  endpoint, backend, phase (queued, cold_start, run)
``gpuflex_workers``                    gauge      endpoint, backend, state (STARTING, IDLE, BUSY, STOPPING)
``gpuflex_cost_usd_total``             counter    endpoint, backend: the jobs' own cost
``gpuflex_batch_size``                 histogram  endpoint, backend: calls answered together (batched endpoints)
``gpuflex_spent_usd``                  gauge      (none): all spent, idle tails of per-second workers included
``gpuflex_budget_usd``                 gauge      (none): the ``--max-cost`` limit, when one is set
=====================================  =========  ===============================================================

A fresh registry is filled from one snapshot per scrape (nothing is registered globally).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from .._models import WorkerState

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client.metrics_core import Metric

    from .._stats import Histogram, Stats

__all__ = ["CONTENT_TYPE", "metrics_text"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
WORKER_STATES = [s.value for s in WorkerState if s is not WorkerState.DEAD]


def _buckets(histogram: Histogram) -> list[tuple[str, float]]:
    return [("+Inf" if math.isinf(le) else repr(float(le)), float(count)) for le, count in histogram.buckets]


class _Snapshot(Collector):
    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        labels = ["endpoint", "backend"]
        jobs = CounterMetricFamily("gpuflex_jobs", "Jobs finished, by final status.", labels=[*labels, "status"])
        flight = GaugeMetricFamily("gpuflex_jobs_in_flight", "Jobs queued or running now.",
                                   labels=[*labels, "status"])
        phases = HistogramMetricFamily("gpuflex_job_duration_seconds", "Seconds finished jobs spent in each phase: "
                                       "queued (less any cold start), cold_start (waiting for the worker that took "
                                       "the job to start), run.", labels=[*labels, "phase"])
        workers = GaugeMetricFamily("gpuflex_workers", "Workers by state.", labels=[*labels, "state"])
        cost = CounterMetricFamily("gpuflex_cost_usd", "What finished jobs cost, by the backend's billing rule "
                                   "(idle tails are in gpuflex_spent_usd).", labels=labels)
        batch = HistogramMetricFamily("gpuflex_batch_size", "Calls of a batched endpoint a worker answered "
                                      "together, seen from the caller.", labels=labels)
        for e in self.stats.endpoints:
            key = [e.endpoint, e.backend]
            for status, count in sorted(e.jobs.items()):
                jobs.add_metric([*key, status], count)
            for status in ("QUEUED", "RUNNING"):
                flight.add_metric([*key, status], e.in_flight.get(status, 0))
            for phase, histogram in e.phases.items():
                phases.add_metric([*key, phase], _buckets(histogram), histogram.sum)
            for state in WORKER_STATES:
                workers.add_metric([*key, state], e.workers.get(state, 0))
            cost.add_metric(key, e.cost_usd)
            if e.batch_size is not None:
                batch.add_metric(key, _buckets(e.batch_size), e.batch_size.sum)
        yield from (jobs, flight, phases, workers, cost, batch)
        yield GaugeMetricFamily("gpuflex_spent_usd", "All spent by this process, idle tails of per-second workers "
                                "included.", value=self.stats.spent_usd)
        if self.stats.budget_usd is not None:
            yield GaugeMetricFamily("gpuflex_budget_usd", "The spending limit (--max-cost).",
                                    value=self.stats.budget_usd)


def metrics_text(stats: Stats) -> bytes:
    """``stats`` in the Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(stats))
    return generate_latest(registry)
