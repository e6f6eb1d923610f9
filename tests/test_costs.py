"""Job costs under each billing rule, the per-endpoint meter, and the budget guard (unit and end to end)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import gpuflex
from gpuflex import Cost, Price
from gpuflex._budget import BudgetGuard
from gpuflex._costs import CostMeter, EndpointCosts, job_cost, summarize, tail_cost
from gpuflex._plugins import get_plugin_manager, hookimpl
from gpuflex.cli._report import usd
from gpuflex.errors import QuotaExceeded
from gpuflex.testing import load_module

app = load_module(Path(__file__).with_name("_gpuflex_app.py"))
nap, budget_nap, fails = app.nap, app.budget_nap, app.fails


# -- job_cost ------------------------------------------------------------------------------------------------------


def test_free_costs_nothing_but_counts_seconds():
    assert job_cost(Price(), run_seconds=12.5) == Cost(usd=0.0, billed_seconds=12.5, rule="free")


def test_a_zero_rate_is_free_whatever_the_rule():
    cost = job_cost(Price(usd_per_hour=0.0, billing="per-second", tail_seconds=5), run_seconds=2.0)
    assert cost.usd == 0.0


def test_per_second_rounds_up_to_the_increment_and_leaves_the_tail_out():
    price = Price(usd_per_hour=3.6, billing="per-second", increment=1.0, tail_seconds=2.0)
    cost = job_cost(price, run_seconds=2.3)
    assert cost.billed_seconds == 3.0  # 2.3 rounded up to whole seconds; the idle tail is not this job's
    assert cost.usd == pytest.approx(3 * 0.001)
    assert cost.rule == "per-second"


def test_a_short_job_is_not_billed_the_whole_tail():
    price = Price(usd_per_hour=3.6, billing="per-second", increment=1.0, tail_seconds=20.0)
    assert job_cost(price, run_seconds=0.077).billed_seconds == 1.0  # not 21.0
    assert tail_cost(price) == Cost(usd=pytest.approx(0.02), billed_seconds=20.0, rule="per-second")


def test_only_per_second_workers_have_a_tail():
    assert tail_cost(Price(usd_per_hour=36.0, billing="uptime", tail_seconds=100.0)) == Cost()
    assert tail_cost(Price(billing="per-second", tail_seconds=100.0)) == Cost()  # free
    assert tail_cost(Price(usd_per_hour=36.0, billing="per-second")) == Cost()  # kept warm: no tail


def test_per_second_with_a_coarse_increment():
    price = Price(usd_per_hour=36.0, billing="per-second", increment=60.0)
    assert job_cost(price, run_seconds=1.0).billed_seconds == 60.0
    assert job_cost(price, run_seconds=60.0).billed_seconds == 60.0
    assert job_cost(price, run_seconds=61.0).billed_seconds == 120.0
    assert job_cost(price, run_seconds=61.0).usd == pytest.approx(120 * 0.01)


def test_per_second_without_an_increment_bills_exact_time():
    price = Price(usd_per_hour=3600.0, billing="per-second", increment=0.0, tail_seconds=0.5)
    assert job_cost(price, run_seconds=0.25) == Cost(usd=pytest.approx(0.25), billed_seconds=0.25, rule="per-second")


def test_uptime_bills_running_time_at_the_hourly_rate():
    price = Price(usd_per_hour=36.0, billing="uptime", tail_seconds=100.0)  # no tail for uptime billing
    cost = job_cost(price, run_seconds=10.0, queue_seconds=50.0)  # nor queueing
    assert cost == Cost(usd=pytest.approx(0.1), billed_seconds=10.0, rule="uptime")


@given(
    st.floats(min_value=0, max_value=1e5, allow_nan=False),
    st.sampled_from([0.001, 0.1, 1.0, 60.0]),
    st.floats(min_value=0, max_value=30, allow_nan=False),
    st.floats(min_value=0.01, max_value=100, allow_nan=False),
)
def test_per_second_bills_at_least_the_time_and_less_than_one_more_increment(run, increment, tail, rate):
    cost = job_cost(Price(usd_per_hour=rate, billing="per-second", increment=increment, tail_seconds=tail),
                    run_seconds=run)
    seconds = run
    assert seconds - 1e-9 <= cost.billed_seconds <= seconds + increment + 1e-6 * max(1.0, seconds)
    steps = cost.billed_seconds / increment
    assert math.isclose(steps, round(steps), abs_tol=1e-6)
    assert cost.usd == pytest.approx(cost.billed_seconds * rate / 3600)


def test_price_per_second():
    assert Price(usd_per_hour=7.2).usd_per_second == pytest.approx(0.002)


def test_costs_add_and_report_mixed_rules():
    a = Cost(usd=1.0, billed_seconds=2.0, rule="uptime")
    b = Cost(usd=0.5, billed_seconds=1.0, rule="uptime")
    assert a + b == Cost(usd=1.5, billed_seconds=3.0, rule="uptime")
    assert (a + Cost(usd=0.1, billed_seconds=1.0, rule="per-second")).rule == "mixed"


# -- CostMeter --------------------------------------------------------------------------------------------------


def test_meter_sums_per_endpoint_and_counts_gpu_seconds():
    meter = CostMeter()
    meter.record("embed", Cost(usd=1.0, billed_seconds=10.0, rule="uptime"), gpus=2)
    meter.record("embed", Cost(usd=0.5, billed_seconds=5.0, rule="uptime"), gpus=2)
    meter.record("cpu_only", Cost(usd=0.0, billed_seconds=3.0, rule="free"), gpus=0)
    summary = meter.summary()
    assert list(summary) == ["cpu_only", "embed"]
    assert summary["embed"].calls == 2
    assert summary["embed"].gpu_seconds == 30.0
    assert summary["embed"].cost.usd == pytest.approx(1.5)
    assert summary["embed"].cost.billed_seconds == 15.0
    assert summary["cpu_only"] == EndpointCosts(calls=1, gpu_seconds=0.0, cost=Cost(billed_seconds=3.0))
    total = meter.total()
    assert total.usd == pytest.approx(1.5)
    assert total.billed_seconds == 18.0


def test_meter_summary_is_a_snapshot():
    meter = CostMeter()
    meter.record("e", Cost(usd=1.0, billed_seconds=1.0), gpus=1)
    snapshot = meter.summary()
    snapshot["e"].calls = 99
    meter.record("e", Cost(usd=1.0, billed_seconds=1.0), gpus=1)
    assert meter.summary()["e"].calls == 2


def test_meter_reset():
    meter = CostMeter()
    meter.record("e", Cost(usd=1.0, billed_seconds=1.0), gpus=1)
    meter.reset()
    assert meter.summary() == {}
    assert meter.total() == Cost()


def test_meter_counts_one_tail_per_burst_on_a_worker():
    meter = CostMeter()
    call, tail = Cost(usd=0.001, billed_seconds=1.0, rule="per-second"), Cost(usd=0.03, billed_seconds=30.0,
                                                                               rule="per-second")
    # a burst of three calls on one worker, each starting 5 s after the previous one ended
    for start in (0.0, 6.0, 12.0):
        meter.record("e", call, gpus=1, tail=tail, worker="w1", started_at=start, finished_at=start + 1.0)
    e = meter.summary()["e"]
    assert e.bursts == 1  # the last call's tail is pending: counted in full, once
    assert e.idle.usd == pytest.approx(2 * 0.005 + 0.03)  # two 5 s gaps, then the tail
    assert meter.total().usd == pytest.approx(3 * 0.001 + 0.04)
    # a call long after the tail ran out starts a second burst
    meter.record("e", call, gpus=1, tail=tail, worker="w1", started_at=100.0, finished_at=101.0)
    e = meter.summary()["e"]
    assert e.bursts == 2 and e.idle.usd == pytest.approx(0.01 + 0.03 + 0.03)
    # another worker has a tail of its own
    meter.record("e", call, gpus=1, tail=tail, worker="w2", started_at=100.0, finished_at=101.0)
    assert meter.summary()["e"].bursts == 3


# -- ledger summaries (gpuflex costs) --------------------------------------------------------------------------


def _record(endpoint, start, *, gpus=1, tail=30.0, worker="w", status="COMPLETED"):
    return {"endpoint": endpoint, "backend": "runpod", "status": status, "started_at": start,
            "finished_at": start + 0.077, "billed_seconds": 1.0, "cost_usd": 0.001, "gpus": gpus, "worker": worker,
            "tail_seconds": tail, "tail_usd": tail * 0.001}


def test_summary_counts_tails_per_burst_not_per_call():
    records = [_record("embed", t) for t in (0.0, 2.0, 4.0)] + [_record("embed", 1000.0)]
    (row,) = summarize(records)
    assert row.calls == 4 and row.billed_seconds == 4.0  # not 4 x 31 s
    assert row.bursts == 2
    gaps = 2 * (2.0 - 0.077)
    assert row.idle_seconds == pytest.approx(gaps + 2 * 30.0)
    assert row.idle_usd == pytest.approx((gaps + 60.0) * 0.001)
    assert row.total_usd == pytest.approx(0.004 + row.idle_usd)


def test_summary_reports_cpu_seconds_for_work_on_the_cpu():
    records = [_record("fell_back", 0.0, gpus=0, tail=0.0), _record("on_gpu", 0.0, gpus=2, tail=0.0)]
    fell_back, on_gpu = summarize(records)
    assert (fell_back.cpu_seconds, fell_back.gpu_seconds) == (1.0, 0.0)
    assert (on_gpu.cpu_seconds, on_gpu.gpu_seconds) == (0.0, 2.0)


@pytest.mark.parametrize(("value", "text"), [(0.004, "$0.004"), (0.0125, "$0.0125"), (0.0149, "$0.0149"),
                                             (3.99, "$3.99"), (1234.5, "$1,234.50"), (0.5, "$0.50"), (0, "$0"),
                                             (0.00000123, "$0.00000123")])
def test_dollars_have_enough_digits_to_be_non_zero(value, text):
    assert usd(value) == text


@given(st.floats(min_value=1e-9, max_value=1e6, allow_nan=False))
def test_a_cost_is_never_shown_as_zero(value):
    assert float(usd(value).lstrip("<$").replace(",", "")) > 0


# -- BudgetGuard -----------------------------------------------------------------------------------------------


def test_budget_refuses_once_the_limit_is_reached():
    meter = CostMeter()
    guard = BudgetGuard(meter, limit=1.0)
    assert guard.check() is None
    meter.record("e", Cost(usd=0.6, billed_seconds=1.0), gpus=0)
    assert guard.check() is None
    meter.record("e", Cost(usd=0.4, billed_seconds=1.0), gpus=0)
    reason = guard.check()
    assert reason is not None
    assert "$1.0000" in reason and "GPUFLEX_MAX_COST" in reason


def test_budget_reads_the_environment(monkeypatch):
    monkeypatch.setenv("GPUFLEX_MAX_COST", "2.5")
    assert BudgetGuard(CostMeter()).current_limit() == 2.5
    monkeypatch.delenv("GPUFLEX_MAX_COST")
    guard = BudgetGuard(CostMeter())
    assert guard.current_limit() is None
    assert guard.check() is None


# -- end to end on the local backend ---------------------------------------------------------------------------


@pytest.fixture
def session():
    gpuflex.shutdown()
    yield
    gpuflex.shutdown()


def test_hourly_rate_makes_jobs_cost_their_running_time(session):
    with gpuflex.use("local", hourly_rate=36.0):
        assert nap(0) == 0  # start the worker
        job = nap.spawn(0.2)
        assert job.result(timeout=60) == 0.2
    assert job.run_time is not None and job.run_time >= 0.2
    assert job.cost.usd > 0
    assert job.cost.usd == pytest.approx(job.run_time * 0.01, rel=1e-6)
    assert job.cost.billed_seconds == pytest.approx(job.run_time, rel=1e-6)
    costs = gpuflex.costs()["costs_nap"]
    assert costs.calls == 2
    assert costs.gpu_seconds == 0.0  # no GPU asked for
    assert costs.cost.usd >= job.cost.usd
    assert gpuflex.total_cost().usd == pytest.approx(costs.cost.usd)


def test_without_a_rate_local_jobs_are_free(session):
    job = nap.spawn(0.05)
    job.result(timeout=60)
    assert job.cost.usd == 0.0
    assert job.cost.billed_seconds == pytest.approx(job.run_time, rel=1e-6)


def test_failed_jobs_are_charged_too(session):
    with gpuflex.use("local", hourly_rate=3600.0):
        job = fails.spawn(0.05)
        with pytest.raises(ValueError, match="charged anyway"):
            job.result(timeout=60)
    assert job.cost.usd == pytest.approx(job.run_time, rel=1e-6)
    assert gpuflex.costs()["costs_fails"].calls == 1


def test_a_single_rule_is_reported_as_that_rule(session):
    with gpuflex.use("local", hourly_rate=36.0):
        job = nap.spawn(0.01)
        job.result(timeout=60)
    assert job.cost.rule == "uptime"
    assert gpuflex.costs()["costs_nap"].cost.rule == "uptime"


def test_max_cost_refuses_the_next_call_it_expects_to_pass_the_budget(session, monkeypatch):
    monkeypatch.setenv("GPUFLEX_MAX_COST", "0.05")
    gpuflex.shutdown()  # the next session reads the limit
    with gpuflex.use("local", hourly_rate=360.0):  # $0.10 per second of running
        first = budget_nap.spawn(0.3)
        assert first.result(timeout=60) == 0.3
        assert 0.03 <= first.cost.usd < 0.05
        with pytest.raises(QuotaExceeded) as info:
            budget_nap(0.3)  # expected to cost what the first did: spent + expected would pass $0.05
    assert "budget of $" in str(info.value) and "expected to cost" in str(info.value)
    assert gpuflex.costs()["costs_budget"].calls == 1  # the refused job was never run or charged


def test_max_cost_is_read_when_the_session_starts(session, monkeypatch):
    with gpuflex.use("local", hourly_rate=3600.0):
        assert budget_nap(0.01) == 0.01
        monkeypatch.setenv("GPUFLEX_MAX_COST", "0.000001")  # too late for this session
        assert budget_nap(0) == 0


def test_per_second_jobs_carry_the_tail_apart_and_the_meter_counts_it_once(session):
    class PerSecond:
        @hookimpl
        def gpuflex_price(self, spec, backend, default):
            return Price(usd_per_hour=36.0, billing="per-second", increment=1.0, tail_seconds=20.0)

    plugin = PerSecond()
    get_plugin_manager().register(plugin)
    try:
        jobs = []
        for _ in range(3):  # one after the other: one worker serves them all
            jobs.append(nap.spawn(0.0))
            jobs[-1].result(timeout=60)
    finally:
        get_plugin_manager().unregister(plugin)
    for job in jobs:
        assert job.cost.billed_seconds == 1.0  # not 21.0
        assert job.tail == Cost(usd=pytest.approx(0.2), billed_seconds=20.0, rule="per-second")
    costs = gpuflex.costs()["costs_nap"]
    assert costs.calls == 3 and costs.bursts == 1  # back to back on one worker: one tail
    assert costs.idle.usd < 2 * 0.2
    assert gpuflex.total_cost().usd == pytest.approx(costs.cost.usd + costs.idle.usd)
