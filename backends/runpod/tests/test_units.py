"""Pure pieces of the serverless backend: GPU pools, error parsing, where the API key comes from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gpuflex_runpod import RunPodConfig
from gpuflex_runpod._errors import find_api_key
from gpuflex_runpod._pricing import gpu_ids, serverless_price
from gpuflex_runpod._protocol import OUTCOME_KEY, b64encode_payload, parse_error

from gpuflex import errors
from gpuflex._envelope import encode_error
from gpuflex.client._session import get_session
from gpuflex.gpus import GPU
from gpuflex.testing._endpoints import echo


def test_gpu_ids_pin_models_inside_their_pool():
    assert gpu_ids(GPU("A5000")) == "AMPERE_24,-NVIDIA L4,-NVIDIA GeForce RTX 3090,-NVIDIA A10"
    assert gpu_ids(GPU(["H100", "A100-80GB"])).split(",")[:2] == ["ADA_80_PRO", "AMPERE_80"]
    assert gpu_ids(GPU("ADA_24")) == "ADA_24"
    assert "HOPPER_141" in gpu_ids(GPU("any")).split(",")


def test_price_takes_the_dearest_acceptable_pool_times_the_count():
    import attrs

    from gpuflex import Resources

    spec = attrs.evolve(echo.spec, resources=Resources(gpu=GPU(["L4", "H100"], 2)))
    price = serverless_price(spec)
    assert price.usd_per_hour == pytest.approx(0.00116 * 3600 * 2) and price.billing == "per-second"
    assert serverless_price(echo.spec).billing == "free"  # a CPU endpoint: no price in the table


def test_parse_error_tells_the_users_exception_from_an_infrastructure_failure():
    outcome = encode_error(ValueError("boom"))
    payload, _ = parse_error(json.dumps({OUTCOME_KEY: b64encode_payload(outcome), "message": "m"}))
    assert payload is not None and payload.data == outcome.data
    sdk_error = json.dumps({"error_type": "<class 'RuntimeError'>", "error_message": "oom"})
    assert parse_error(sdk_error) == (None, "<class 'RuntimeError'>: oom")
    assert parse_error("worker exited (code -9)") == (None, "worker exited (code -9)")


def test_api_key_comes_from_config_then_env_then_file(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    with pytest.raises(errors.AuthenticationError, match="config.toml"):
        find_api_key(RunPodConfig())
    (tmp_path / ".runpod").mkdir()
    (tmp_path / ".runpod" / "config.toml").write_text('[default]\napi_key = "from-file"\n')
    assert find_api_key(RunPodConfig()) == "from-file"
    monkeypatch.setenv("RUNPOD_API_KEY", "from-env")
    assert find_api_key(RunPodConfig()) == "from-env"
    assert find_api_key(RunPodConfig(api_key="from-config")) == "from-config"
    assert "from-config" not in repr(RunPodConfig(api_key="from-config"))


def test_emulator_url_selects_both_apis(monkeypatch):
    monkeypatch.setenv("RUNPOD_API_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("RUNPOD_ENDPOINT_BASE_URL", raising=False)
    config = RunPodConfig()
    assert (config.graphql_url, config.jobs_url) == ("http://127.0.0.1:9/graphql", "http://127.0.0.1:9/v2")
    monkeypatch.delenv("RUNPOD_API_BASE_URL")
    assert RunPodConfig().jobs_url == "https://api.runpod.ai/v2"


def test_pacer_allows_a_one_second_burst_then_spaces_requests(monkeypatch):
    import types

    import anyio
    from gpuflex_runpod import _errors

    clock = {"now": 100.0}
    slept = []

    async def fake_sleep(seconds):
        slept.append(round(seconds, 6))

    monkeypatch.setattr(_errors, "anyio", types.SimpleNamespace(current_time=lambda: clock["now"], sleep=fake_sleep))
    pacer = _errors.Pacer(per_second=4)

    async def burst(count):
        for _ in range(count):
            await pacer.wait()

    anyio.run(burst, 7)
    assert slept == [0.25, 0.5, 0.75], "4 pass at once, the next ones queue a quarter second apart"
    clock["now"] += 10  # a quiet spell refills the bucket
    slept.clear()
    anyio.run(burst, 4)
    assert slept == []
    assert _errors.Pacer(per_second=0).per_second == 0  # 0 disables pacing


def test_worker_installs_dependencies_only_when_missing(monkeypatch, tmp_path):
    from gpuflex_runpod import worker

    monkeypatch.setenv("GPUFLEX_RUNPOD_CACHE", str(tmp_path))
    assert worker._satisfied(["attrs>=20", "httpx"]) and not worker._satisfied(["attrs<1"])
    assert not worker._satisfied(["surely-not-installed-gpuflex-probe"])
    ran = []
    monkeypatch.setattr(worker.subprocess, "run", lambda command, **kw: ran.append(command))
    worker.ensure_dependencies(["attrs>=20"])  # satisfied: nothing to install
    assert ran == []
    worker.ensure_dependencies(["surely-not-installed-gpuflex-probe==1.0"])
    worker.ensure_dependencies(["surely-not-installed-gpuflex-probe==1.0"])  # once per set: the marker remembers
    assert len(ran) == 1 and ran[0][-1] == "surely-not-installed-gpuflex-probe==1.0"


def test_inline_bundle_unpacks_once_and_a_bare_hash_is_reported_missing(monkeypatch, tmp_path):
    import base64

    from gpuflex_runpod import worker
    from gpuflex_runpod._protocol import zip_bundle

    monkeypatch.setenv("GPUFLEX_RUNPOD_CACHE", str(tmp_path))
    bundle = get_session().bundle_for(echo)
    with pytest.raises(worker.BundleMissing):
        worker.materialise_bundle({"hash": bundle.hash})
    ref = {"hash": bundle.hash, "zip": base64.b64encode(zip_bundle(bundle)).decode()}
    root = worker.materialise_bundle(ref)
    unpacked = sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file())
    assert unpacked == sorted(f.path for f in bundle.files)
    assert worker.materialise_bundle({"hash": bundle.hash}) == root  # cached: the hash alone is enough now
