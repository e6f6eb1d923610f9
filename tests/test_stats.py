"""``gpuflex.stats()`` against jobs actually run on the local backend: counts by status, the time of each phase,
workers with their output, recent jobs, batch sizes, and spend."""

from __future__ import annotations

import importlib.util
import math
import sys
import time
from pathlib import Path

import pytest

import gpuflex
from gpuflex import JobStatus, WorkerState
from gpuflex._collector import collector
from gpuflex._stats import histogram
from gpuflex.testing import load_module

APP = Path(__file__).resolve().parent / "apps" / "observe_app.py"


app = load_module(APP)


@pytest.fixture
def fresh():
    gpuflex.shutdown()
    collector().reset()
    yield collector()
    gpuflex.shutdown()


def _wait(predicate, what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


def test_histogram_counts_cumulatively():
    h = histogram((1.0, 2.0, math.inf), [0.5, 1.0, 1.5, 7.0])
    assert h.buckets == ((1.0, 2), (2.0, 3), (math.inf, 4))
    assert (h.count, h.sum, h.mean) == (4, 10.0, 2.5)
    assert h.to_json()["buckets"][-1] == ["+Inf", 4]


def test_stats_count_the_jobs_that_ran(fresh):
    jobs = [app.slow.spawn(0.05), app.slow.spawn(0.05)]
    assert [job.result(timeout=60) for job in jobs] == ["done", "done"]
    with pytest.raises(ValueError, match="broken on purpose"):
        app.broken()
    _wait(lambda: sum(sum(e.jobs.values()) for e in gpuflex.stats().endpoints) == 3, "three finished jobs")
    stats = gpuflex.stats()

    slow = stats.endpoint("slow", "local")
    assert slow is not None and slow.jobs == {"COMPLETED": 2} and slow.in_flight == {}
    assert stats.endpoint("broken").jobs == {"FAILED": 1}
    assert slow.settings["max_workers"] == 1 and slow.gpu is None
    # each phase is counted once per job, and sums to what the jobs themselves measured
    assert {name: h.count for name, h in slow.phases.items()} == {"queued": 2, "cold_start": 2, "run": 2}
    assert slow.phases["run"].sum == pytest.approx(sum(job.run_time for job in jobs))
    assert slow.phases["run"].sum >= 0.1
    waited = slow.phases["queued"].sum + slow.phases["cold_start"].sum
    assert waited == pytest.approx(sum(job.queue_time for job in jobs))
    assert slow.phases["cold_start"].sum > 0  # the first job waited for its worker to start

    by_id = {j.id: j for j in stats.jobs}
    for job in jobs:
        seen = by_id[job.id]
        assert seen.status is JobStatus.COMPLETED and seen.worker == job.worker
        assert seen.run == pytest.approx(job.run_time)
        assert seen.queued + seen.cold_start == pytest.approx(job.queue_time)

    (worker,) = [w for w in stats.workers if w.endpoint == "slow"]
    assert worker.state is WorkerState.IDLE and worker.gpus == () and worker.pid
    assert worker.jobs_done == 2 and worker.active_jobs == 0
    assert worker.ready_at >= worker.started_at
    lines = [(stream, text) for _, stream, text in worker.output]
    assert lines == [("stdout", "<b>slow</b> sleeping 0.05 s")] * 2
    assert slow.workers == {"IDLE": 1}
    assert stats.spent_usd == gpuflex.total_cost().usd
    assert stats.to_json()["endpoints"][0]["phases"]["run"]["count"] in (1, 2)


def test_stats_count_costs_under_an_hourly_rate(fresh):
    with gpuflex.use("local", hourly_rate=3600.0):  # $1 per second of run
        job = app.slow.spawn(0.05)
        job.result(timeout=60)
    _wait(lambda: gpuflex.stats().endpoint("slow") and gpuflex.stats().endpoint("slow").jobs, "the job to count")
    slow = gpuflex.stats().endpoint("slow")
    assert slow.cost_usd == pytest.approx(job.cost.usd) and slow.cost_usd >= 0.05
    assert gpuflex.stats().spent_usd == pytest.approx(gpuflex.total_cost().usd)


def test_batch_sizes_are_seen_from_the_caller(fresh):
    assert list(app.doubled.map(range(4))) == [0, 2, 4, 6]  # a full batch of 4 runs at once
    assert list(app.doubled.map(range(3))) == [0, 2, 4]  # 3 wait a second for a fourth, then run
    _wait(lambda: gpuflex.stats().endpoint("doubled").batch_size.count == 2, "two batches")
    sizes = gpuflex.stats().endpoint("doubled").batch_size
    assert (sizes.count, sizes.sum) == (2, 7)
    assert dict(sizes.buckets)[2.0] == 0 and dict(sizes.buckets)[4.0] == 2
    assert gpuflex.stats().endpoint("slow") is None  # not batched, never called here


def test_a_job_in_flight_shows_as_running(fresh):
    job = app.slow.spawn(1.0)
    _wait(lambda: job.status is JobStatus.RUNNING, "the job to start", limit=60)
    _wait(lambda: gpuflex.stats().endpoint("slow").in_flight == {"RUNNING": 1}, "the stats to see it")
    stats = gpuflex.stats()
    (seen,) = [j for j in stats.jobs if j.id == job.id]
    assert seen.status is JobStatus.RUNNING and seen.finished_at is None and seen.run is None
    assert [w.state for w in stats.workers if w.endpoint == "slow"] == [WorkerState.BUSY]
    job.result(timeout=60)
    _wait(lambda: [w.state for w in gpuflex.stats().workers if w.endpoint == "slow"] == [WorkerState.IDLE],
          "the worker to be idle again")


def _core_app():
    module = sys.modules.get("_gpuflex_app")
    if module is None:
        spec = importlib.util.spec_from_file_location("_gpuflex_app", Path(__file__).with_name("_gpuflex_app.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["_gpuflex_app"] = module
        spec.loader.exec_module(module)
    return module


def test_a_retried_job_counts_once_with_its_attempts(fresh, tmp_path):
    job = _core_app().hook_retrying.spawn(str(tmp_path / "marker"))  # fails once, then succeeds
    assert job.result(timeout=60) == "second attempt"
    _wait(lambda: gpuflex.stats().endpoint("hook_retrying") is not None
          and gpuflex.stats().endpoint("hook_retrying").jobs, "the job to count")
    stats = gpuflex.stats()
    assert stats.endpoint("hook_retrying").jobs == {"COMPLETED": 1}
    (seen,) = [j for j in stats.jobs if j.id == job.id]
    assert seen.status is JobStatus.COMPLETED and seen.attempts == 2
    assert seen.reason  # why it was retried, as the core said
    (worker,) = [w for w in stats.workers if w.endpoint == "hook_retrying"]
    assert worker.active_jobs == 0 and worker.state is WorkerState.IDLE
