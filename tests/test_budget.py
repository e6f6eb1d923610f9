"""The budget guard counts work in flight: it refuses a job that would pass the budget with the jobs already
admitted, and stops running work just before its growing cost would pass it (unit, and end to end on the local
backend)."""

from __future__ import annotations

from pathlib import Path

import pytest

import gpuflex
from gpuflex import Cost, Price
from gpuflex._budget import BudgetGuard
from gpuflex._costs import CostMeter
from gpuflex.errors import QuotaExceeded
from gpuflex.testing import load_module

PER_SECOND = Price(usd_per_hour=3600.0, billing="per-second", increment=1.0)  # $1 per started second
UPTIME = Price(usd_per_hour=3600.0, billing="uptime")  # $1 per second of running


app = load_module(Path(__file__).with_name("_gpuflex_app.py"))


def test_admitted_jobs_count_against_the_budget_before_they_finish():
    guard = BudgetGuard(CostMeter(), limit=2.0)
    assert guard.admit("a", "e", PER_SECOND) is None  # expected: one increment, $1
    assert guard.admit("b", "e", PER_SECOND) is None
    reason = guard.admit("c", "e", PER_SECOND)
    assert reason is not None and "$2.0000" in reason and "in flight" in reason
    guard.finished("a")
    assert guard.in_flight() == pytest.approx(1.0)


def test_idle_tails_count_once_per_running_worker():
    with_tail = Price(usd_per_hour=3600.0, billing="per-second", increment=1.0, tail_seconds=2.0)
    guard = BudgetGuard(CostMeter(), limit=10.0)
    assert guard.expected("e", with_tail) == pytest.approx(3.0)  # one increment, then two seconds idle
    for job_id in "abc":
        assert guard.admit(job_id, "e", with_tail, now=100.0) is None
    assert guard.admit("d", "e", with_tail, now=100.0) is not None  # 9 in flight + 3 would pass 10
    guard.started("a", at=100.0, worker="w1")
    guard.started("b", at=100.0, worker="w1")  # the same worker: one tail after both
    assert guard.in_flight(at=100.5) == pytest.approx(1 + 1 + 3 + 2)


def test_a_job_is_expected_to_cost_its_endpoints_mean():
    meter = CostMeter()
    guard = BudgetGuard(meter, limit=1.0)
    meter.record("e", Cost(usd=0.4, billed_seconds=0.4, rule="uptime"), gpus=0)
    assert guard.expected("e", UPTIME) == pytest.approx(0.4)
    assert guard.admit("a", "e", UPTIME) is None  # 0.4 spent + 0.4 expected
    assert guard.admit("b", "e", UPTIME) is not None  # + 0.4 more would pass 1.0


def test_running_jobs_are_stopped_before_their_cost_passes_the_budget():
    guard = BudgetGuard(CostMeter(), limit=0.5)
    assert guard.seconds_left() is None  # nothing runs
    assert guard.admit("a", "e", UPTIME) is None
    guard.started("a", at=100.0)
    assert guard.seconds_left(now=100.0) == pytest.approx(0.5, abs=0.002)
    assert guard.admit("b", "e", UPTIME, now=100.2) is None
    guard.started("b", at=100.2)  # two jobs at $1/s each: 0.2 + 2t = 0.5
    assert guard.seconds_left(now=100.2) == pytest.approx(0.15, abs=0.002)
    assert guard.seconds_left(now=101.0) == 0.0
    assert sorted(guard.stop_all(now=100.3)) == ["a", "b"]
    assert guard.in_flight(at=200.0) == pytest.approx(0.3 + 0.1)  # stopped: their cost no longer grows
    assert guard.seconds_left(now=200.0) is None


@pytest.fixture
def budget(monkeypatch):
    def start(limit: float) -> None:
        monkeypatch.setenv("GPUFLEX_MAX_COST", str(limit))
        gpuflex.shutdown()  # the next session reads the limit

    yield start
    monkeypatch.delenv("GPUFLEX_MAX_COST", raising=False)
    gpuflex.shutdown()


def test_work_in_flight_never_passes_the_budget(budget):
    budget(0.02)
    with gpuflex.use("local", hourly_rate=36.0):  # $0.01 per second of running, per worker
        jobs = [app.budget_parallel.spawn(2.0) for _ in range(3)]  # $0.06 if they all ran
        for job in jobs:
            with pytest.raises(QuotaExceeded, match="budget"):
                job.result(timeout=60)
        assert all(job.status is gpuflex.JobStatus.FAILED and "budget" in (job.reason or "") for job in jobs)
        spent = gpuflex.total_cost().usd
        assert 0 < spent <= 0.02, f"spent ${spent:.4f} of a $0.02 budget"
        with pytest.raises(QuotaExceeded, match="budget"):
            app.budget_parallel(0.0)  # expected to cost what the others did: refused before it runs
    assert gpuflex.costs()["budget_parallel"].calls == 3
