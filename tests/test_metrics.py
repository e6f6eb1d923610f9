"""``GET /metrics`` of a dev server that ran real jobs, parsed with prometheus-client's own parser and checked
against what those jobs report (``GET /jobs/<id>``)."""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpuflex.testing import load_module

helpers = load_module(Path(__file__).with_name("_observe.py"))


def _samples(text: str) -> dict[str, dict[tuple, float]]:
    """sample name -> {sorted label items: value}."""
    found: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def _key(**labels) -> tuple:
    return tuple(sorted(labels.items()))


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """A server at $1 a second on the local backend, after 1 call of ``Warming`` (its worker seen STARTING), 3 of
    ``slow``, 1 of ``broken`` and 7 batched calls of ``doubled`` (a batch of 4, then one of 3), with what each job
    reported, and its metrics."""
    tmp = tmp_path_factory.mktemp("metrics")
    root = helpers.project(tmp, hourly_rate=3600.0)
    srv = helpers.Server(root / "observe_app.py", tmp / "server.log", "--max-cost", "50", cwd=root)
    try:
        warming = srv.client.post("/Warming/jobs", json={}).json()["id"]
        starting = _key(endpoint="Warming", backend="local", state="STARTING")
        deadline = time.monotonic() + 60
        while _samples(srv.client.get("/metrics").text).get("gpuflex_workers", {}).get(starting) != 1:
            assert time.monotonic() < deadline, "never saw the worker starting"
            time.sleep(0.05)
        warmed = srv.wait_job(warming)
        assert warmed["status"] == "COMPLETED"
        ids = {"slow": [srv.client.post("/slow/jobs", json={"seconds": 0.05}).json()["id"] for _ in range(3)],
               "broken": [srv.client.post("/broken/jobs", json={}).json()["id"]]}
        jobs = {name: [srv.wait_job(i) for i in job_ids] for name, job_ids in ids.items()}
        jobs["Warming"] = [warmed]
        jobs["doubled"] = []
        for size in (4, 3):
            with ThreadPoolExecutor(size) as pool:  # together: the worker batches them
                batch = list(pool.map(lambda x: srv.client.post("/doubled/jobs", json={"xs": x}).json()["id"],
                                      range(size)))
            jobs["doubled"] += [srv.wait_job(i) for i in batch]
        response = srv.client.get("/metrics")
    finally:
        srv.stop()
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return jobs, _samples(response.text)


def test_jobs_total_by_endpoint_backend_and_status(ran):
    jobs, samples = ran
    assert [j["status"] for j in jobs["slow"]] == ["COMPLETED"] * 3
    assert [j["status"] for j in jobs["broken"]] == ["FAILED"]
    assert samples["gpuflex_jobs_total"] == {
        _key(endpoint="slow", backend="local", status="COMPLETED"): 3.0,
        _key(endpoint="broken", backend="local", status="FAILED"): 1.0,
        _key(endpoint="doubled", backend="local", status="COMPLETED"): 7.0,
        _key(endpoint="Warming", backend="local", status="COMPLETED"): 1.0,
    }
    assert all(v == 0 for v in samples["gpuflex_jobs_in_flight"].values())


@pytest.mark.parametrize("endpoint", ["slow", "broken", "doubled"])
def test_duration_histograms_add_up_to_the_jobs_own_timings(ran, endpoint):
    jobs, samples = ran
    mine = jobs[endpoint]

    def value(name, phase):
        return samples[f"gpuflex_job_duration_seconds_{name}"][_key(endpoint=endpoint, backend="local", phase=phase)]

    for phase in ("queued", "cold_start", "run"):
        assert value("count", phase) == len(mine)
        bucket = samples["gpuflex_job_duration_seconds_bucket"]
        assert bucket[_key(endpoint=endpoint, backend="local", phase=phase, le="+Inf")] == len(mine)
    assert value("sum", "run") == pytest.approx(sum(j["run_time"] for j in mine), rel=1e-9, abs=1e-9)
    assert value("sum", "queued") + value("sum", "cold_start") == pytest.approx(
        sum(j["queue_time"] for j in mine), rel=1e-9, abs=1e-9)
    assert value("sum", "cold_start") > 0  # each endpoint's first job waited for its worker to start
    if endpoint == "slow":
        assert value("sum", "run") >= 3 * 0.05


def test_cost_total_is_what_the_jobs_cost(ran):
    jobs, samples = ran
    for endpoint, mine in jobs.items():
        expected = sum(j["cost"]["usd"] for j in mine)
        got = samples["gpuflex_cost_usd_total"][_key(endpoint=endpoint, backend="local")]
        assert got == pytest.approx(expected, rel=1e-9)
    assert samples["gpuflex_cost_usd_total"][_key(endpoint="slow", backend="local")] >= 0.15  # $1/s, 3 x 0.05 s
    spent = samples["gpuflex_spent_usd"][()]
    assert spent == pytest.approx(sum(j["cost"]["usd"] for mine in jobs.values() for j in mine), rel=1e-9)
    assert samples["gpuflex_budget_usd"][()] == 50.0


def test_workers_by_state(ran):
    _, samples = ran
    workers = samples["gpuflex_workers"]
    for endpoint in ("slow", "broken", "doubled", "Warming"):  # Warming's was seen STARTING (the fixture)
        states = {dict(k)["state"]: v for k, v in workers.items() if dict(k)["endpoint"] == endpoint}
        assert states == {"STARTING": 0, "IDLE": 1, "BUSY": 0, "STOPPING": 0}


def test_batch_sizes_of_the_batched_endpoint_only(ran):
    _, samples = ran
    key = _key(endpoint="doubled", backend="local")
    assert samples["gpuflex_batch_size_count"] == {key: 2.0}
    assert samples["gpuflex_batch_size_sum"] == {key: 7.0}
    buckets = {dict(k)["le"]: v for k, v in samples["gpuflex_batch_size_bucket"].items()}
    assert buckets["2.0"] == 0 and buckets["4.0"] == 2 and buckets["+Inf"] == 2
    assert math.isfinite(float(buckets["4.0"]))
