"""The serverless backend against the emulator: what it sends to RunPod, and how it behaves when things fail
(a rejected or missing key, 429/5xx answers, a worker killed mid-job, a queue that never moves, oversize calls)."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path

import anyio
import attrs
import httpx
import pytest
from gpuflex_runpod import RunPodBackend, RunPodConfig
from gpuflex_runpod._hardware import gpu_ids
from gpuflex_runpod.emulator._catalog import SERVERLESS_POOLS

from gpuflex import errors
from gpuflex.client._session import get_session
from gpuflex.testing import backend_in_use, wait_until

sys.path.insert(0, str(Path(__file__).parent))  # workers import _runpod_app by reference, from the bundle
import _runpod_app as app  # noqa: E402

LIST = "query { myself { endpoints { id name workersMin workersMax workersStandby idleTimeout scalerType " \
       "scalerValue gpuIds gpuCount executionTimeoutMs flashBootType template { env { key value } } } } }"


def _admin(url, key):
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _remote(admin, name):
    endpoints = admin.post("/graphql", json={"query": LIST}).json()["data"]["myself"]["endpoints"]
    return [e for e in endpoints if e["name"] == name]


def test_deploy_sends_every_scaling_field_updates_in_place_and_tears_down(make_backend, emulator_url, emulator_key):
    backend = make_backend()
    bundle = get_session().bundle_for(app.on_h100)
    spec = app.on_h100.spec

    async def deploy_then_scale():
        try:
            await backend.deploy(spec, bundle)
            first = backend.deployed["rp_gpu"].remote["id"]
            await backend.deploy(attrs.evolve(spec, env={"MODE": "changed"}), bundle)  # a new spec hash
            assert backend.deployed["rp_gpu"].remote["id"] == first, "a changed spec must update in place"
            await backend.scale("rp_gpu", min_workers=0, max_workers=2)
            assert backend.deployed["rp_gpu"].remote["id"] == first, "a settings change must update in place"
            return first
        finally:
            await backend.aclose()

    endpoint_id = anyio.run(deploy_then_scale)
    with _admin(emulator_url, emulator_key) as admin:
        (remote,) = _remote(admin, "gpuflex-dev-rp_gpu")
        assert remote["id"] == endpoint_id
        assert (remote["workersMin"], remote["workersMax"], remote["workersStandby"]) == (0, 2, 0)
        assert (remote["idleTimeout"], remote["executionTimeoutMs"]) == (30, 150_000)  # timeout + 30 s backstop
        assert remote["gpuIds"] == gpu_ids(spec.gpu, SERVERLESS_POOLS) and remote["gpuIds"].startswith("ADA_80_PRO")
        assert (remote["gpuCount"], remote["scalerType"], remote["flashBootType"]) == (1, "REQUEST_COUNT", "FLASHBOOT")
        env = {item["key"]: item["value"] for item in remote["template"]["env"]}
        assert env["MODE"] == "changed" and env["GPUFLEX_CONCURRENCY"] == "1"

        second = make_backend()  # a later run adopts the endpoint instead of creating another
        spec = attrs.evolve(spec, env={"MODE": "changed"}, max_workers=2)

        async def adopt_then_teardown():
            try:
                await second.deploy(spec, bundle)
                adopted = second.deployed["rp_gpu"].remote["id"]
                await second.teardown(None)
                return adopted
            finally:
                await second.aclose()

        assert anyio.run(adopt_then_teardown) == endpoint_id
        assert _remote(admin, "gpuflex-dev-rp_gpu") == []


def test_price_is_runpods_per_second_rate_for_the_pool(make_backend):
    price = make_backend().price(app.on_h100.spec)
    assert price.billing == "per-second" and price.usd_per_hour == pytest.approx(0.00116 * 3600)
    assert "ADA_80_PRO" in price.source


def test_job_cost_is_execution_and_the_idle_tail_apart_at_the_pool_rate(make_backend):
    with backend_in_use(make_backend) as backend:
        job = app.on_h100.spawn(21)
        assert job.result(timeout=60) == 42
        price = backend.price(app.on_h100.spec)
        assert price.tail_seconds == 30 and job.cost.rule == "per-second"
        # a short job bills its execution rounded up to the second; the 30 s idle tail is once per burst, apart
        assert 1 <= job.cost.billed_seconds < 30 and job.cost.billed_seconds == int(job.cost.billed_seconds)
        assert job.cost.usd == pytest.approx(job.cost.billed_seconds * 0.00116)
        assert job.tail.billed_seconds == 30 and job.tail.usd == pytest.approx(30 * 0.00116)


def test_rejected_key_says_so_and_never_shows_the_key(make_backend):
    with backend_in_use(lambda: make_backend(api_key="wrong-key-7f3a")):
        with pytest.raises(errors.AuthenticationError) as caught:
            app.cold()
    assert "rejected the API key" in str(caught.value) and "wrong-key-7f3a" not in str(caught.value)


def test_missing_key_names_where_to_put_one(monkeypatch, tmp_path, emulator_url):
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with backend_in_use(lambda: RunPodBackend(RunPodConfig(api_url=emulator_url))):
        with pytest.raises(errors.AuthenticationError, match="RUNPOD_API_KEY"):
            app.cold()


def test_key_from_runpod_config_file(monkeypatch, tmp_path, emulator_url, emulator_key):
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".runpod").mkdir()
    (tmp_path / ".runpod" / "config.toml").write_text(f'[default]\napi_key = "{emulator_key}"\n')
    with backend_in_use(lambda: RunPodBackend(RunPodConfig(api_url=emulator_url, delete_on_close=False))):
        assert app.cold() > 0


def test_429_and_5xx_answers_are_retried(make_backend, emulator_url, emulator_key):
    with _admin(emulator_url, emulator_key) as admin, backend_in_use(make_backend):
        admin.post("/_emulator/faults", json={"status": 502, "count": 1, "match": "/graphql"})
        app.cold()  # deployed (through a 502 from the control plane) and warm
        for fault in ({"status": 503, "count": 2, "match": "/run"}, {"status": 429, "count": 2, "match": "/status/"}):
            admin.post("/_emulator/faults", json=fault)
        assert app.nap(1.5) == 1.5  # longer than /runsync waits: followed with /stream, then /status
        assert all(f["count"] == 0 for f in admin.get("/_emulator/faults").json()["faults"]), "a fault was not hit"


def test_a_500_on_run_is_not_retried_so_no_job_runs_twice(make_backend, emulator_url, emulator_key):
    with _admin(emulator_url, emulator_key) as admin, backend_in_use(make_backend) as backend:
        app.cold()
        before = get_session().run(backend.health("rp_cold"))["jobs"]
        admin.post("/_emulator/faults", json={"status": 500, "count": 1, "match": "/run"})
        with pytest.raises(errors.BackendError, match="500"):
            app.cold()
        after = get_session().run(backend.health("rp_cold"))["jobs"]
        assert after["completed"] == before["completed"] and after["inQueue"] == 0


def test_worker_killed_mid_job_is_reported_lost(make_backend, emulator_url, emulator_key, tmp_path):
    with _admin(emulator_url, emulator_key) as admin, backend_in_use(make_backend):
        started = tmp_path / "started"
        job = app.nap.spawn(60, str(started))
        deadline = time.monotonic() + 60
        while not started.exists():
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.02)
        (worker,) = [w for w in admin.get("/_emulator/workers").json()["workers"]
                     if w["name"] == "gpuflex-dev-rp_nap" and w["jobs"]]
        os.kill(worker["pid"], signal.SIGKILL)
        with pytest.raises(errors.WorkerLost, match="lost"):
            job.result(timeout=60)
        assert app.nap(0.01) == 0.01, "a new worker replaces the dead one"


def test_a_worker_without_the_bundle_gets_it_resent(make_backend, emulator_url, emulator_key):
    """Jobs name the bundle by hash once the first ones carried it; a new worker that lacks it says so, and the
    backend resends that call with the bundle inline."""
    with _admin(emulator_url, emulator_key) as admin, backend_in_use(make_backend) as backend:
        first = app.private_pid()  # carries the bundle inline (one job per possible worker: max_workers=1)
        assert backend.deployed["rp_private_cache"].inline_left == 0
        shutil.rmtree(app.PRIVATE_CACHE)
        listing: list[dict] = []

        def listed() -> bool:
            listing[:] = admin.get("/_emulator/workers").json()["workers"]
            return any(w["name"] == "gpuflex-dev-rp_private_cache" for w in listing)

        wait_until(listed, "the endpoint's worker to be listed")  # seen missing once, under load: kept in view
        matching = [w for w in listing if w["name"] == "gpuflex-dev-rp_private_cache"]
        assert len(matching) == 1, listing
        (worker,) = matching
        os.kill(worker["pid"], signal.SIGKILL)
        failed_before = get_session().run(backend.health("rp_private_cache"))["jobs"]["failed"]
        second = app.private_pid()  # by hash only: the new worker misses, the call is resent with the bundle
        assert second != first
        assert get_session().run(backend.health("rp_private_cache"))["jobs"]["failed"] == failed_before + 1


def test_oversize_payload_is_refused_naming_the_limit(make_backend):
    with backend_in_use(make_backend):
        with pytest.raises(errors.PayloadTooLarge, match="limit"):
            app.nap(b"x" * (9 * 1024 * 1024))


def test_gpuflex_deploy_keeps_its_endpoints_and_a_dev_run_removes_them(make_backend, emulator_url, emulator_key):
    bundle = get_session().bundle_for(app.on_h100)
    spec = attrs.evolve(app.on_h100.spec, name="rp_published")

    async def deploy(publish):
        backend = make_backend(delete_on_close=True)
        try:
            await backend.deploy(spec, bundle)
            if publish:
                where = await backend.publish()
                assert "rp_published = " in where
        finally:
            await backend.aclose()

    with _admin(emulator_url, emulator_key) as admin:
        anyio.run(deploy, False)
        assert _remote(admin, "gpuflex-dev-rp_published") == [], "a dev run deletes what it deployed"
        anyio.run(deploy, True)
        assert len(_remote(admin, "gpuflex-dev-rp_published")) == 1, "gpuflex deploy (publish) keeps it"

        async def cleanup():
            backend = make_backend()
            try:
                await backend.teardown("rp_published")
            finally:
                await backend.aclose()

        anyio.run(cleanup)
