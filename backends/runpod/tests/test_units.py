"""Pure pieces of the serverless backend: GPU pools, error parsing, where the API key comes from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gpuflex_runpod import RunPodConfig
from gpuflex_runpod._control import differences, endpoint_input, hiding
from gpuflex_runpod._errors import find_api_key
from gpuflex_runpod._hardware import gpu_ids
from gpuflex_runpod._lanes import AGGREGATE_BUDGET, PACK_BYTES, CallState, Lane, take_pack
from gpuflex_runpod._protocol import OUTCOME_KEY, b64encode_payload, parse_error
from gpuflex_runpod._schema import INTROSPECTION, from_introspection, keep_known
from gpuflex_runpod.emulator._catalog import SERVERLESS_POOLS
from gpuflex_runpod.emulator._graphql import schema as runpod_schema

from gpuflex import JobStatus, errors
from gpuflex.backend import JobUpdate, Payload
from gpuflex.client._session import get_session
from gpuflex.gpus import GPU
from gpuflex.testing._endpoints import echo
from gpuflex.worker import encode_error


def test_gpu_ids_pin_models_by_runpods_own_pool_membership():
    """``SERVERLESS_POOLS`` stands in for what RunPod's ``serverlessGpuPools`` answers."""
    assert gpu_ids(GPU("A5000"), SERVERLESS_POOLS) == "AMPERE_24,-NVIDIA L4,-NVIDIA GeForce RTX 3090"
    # members gpuflex's catalog does not know are excluded too, so the request pins what it names
    assert "-NVIDIA RTX 2000 Ada Generation" in gpu_ids(GPU("A4000"), SERVERLESS_POOLS).split(",")
    assert gpu_ids(GPU("H100"), SERVERLESS_POOLS) == "ADA_80_PRO,-NVIDIA H100 PCIe,-NVIDIA H100 NVL"
    assert gpu_ids(GPU("A100-80GB"), SERVERLESS_POOLS) == "AMPERE_80"  # PCIe and SXM4 are both 80 GB A100s
    assert gpu_ids(GPU(["H100", "A100-80GB"]), SERVERLESS_POOLS).split(",")[:2] == ["ADA_80_PRO", "AMPERE_80"]
    assert gpu_ids(GPU("ADA_24"), SERVERLESS_POOLS) == "ADA_24"
    assert set(gpu_ids(GPU("any"), SERVERLESS_POOLS).split(",")) == set(SERVERLESS_POOLS)
    assert gpu_ids(GPU(["T4", "L4"]), SERVERLESS_POOLS) == "AMPERE_24,-NVIDIA RTX A5000,-NVIDIA GeForce RTX 3090"


@pytest.mark.parametrize("name", ["T4", "A10", "A100"])
def test_gpus_runpod_does_not_offer_are_refused_naming_what_it_does(name):
    with pytest.raises(errors.ConfigError, match="RunPod Serverless offers no") as caught:
        gpu_ids(GPU(name), SERVERLESS_POOLS)
    assert "H100" in str(caught.value)
    if name == "A100":
        assert "A100-80GB" in str(caught.value)


def _coerce(type_name, value):
    """Errors graphql-core finds in ``value`` as a variable of RunPod's input type ``type_name`` (the emulator's
    schema mirrors RunPod's published SDL)."""
    from graphql import parse
    from graphql.execution.values import get_variable_values

    operation = parse(f"mutation($input: {type_name}!) {{ __typename }}").definitions[0]
    result = get_variable_values(runpod_schema(), operation.variable_definitions, {"input": value})
    return [e.message for e in result] if isinstance(result, list) else []


def test_every_payload_fits_runpods_published_input_types():
    import attrs

    from gpuflex import Resources

    config = RunPodConfig(api_key="k")
    for gpu in ("H100", "A5000", ["L4", "A4000"], "any"):
        spec = attrs.evolve(echo.spec, resources=Resources(gpu=GPU(gpu)), timeout=30.0)
        hardware = {"gpuIds": gpu_ids(spec.gpu, SERVERLESS_POOLS), "gpuCount": spec.gpu.count}
        data = endpoint_input(spec, config, name="gpuflex-dev-x", digest="0" * 16, hardware=hardware, disk_gb=20)
        assert "workersStandby" not in data and _coerce("EndpointInput", data) == []
    cpu = endpoint_input(echo.spec, config, name="gpuflex-dev-x", digest="0" * 16,
                         hardware={"instanceIds": ["cpu3g-2-8"]}, disk_gb=20)
    assert not {"gpuIds", "gpuCount"} & set(cpu) and _coerce("EndpointInput", cpu) == []
    assert "workersStandby" in _coerce("EndpointInput", {**cpu, "workersStandby": 0})[0]


def test_fields_the_live_schema_lacks_are_left_out():
    """The backend's introspection query, run by graphql-core against a schema that lacks a field gpuflex would
    send (as an older or newer RunPod API might): that field is left out, and the payload is valid there."""
    from graphql import build_schema, graphql_sync, print_schema

    full = print_schema(runpod_schema())
    head, block = full.split("input EndpointInput {", 1)
    block, tail = block.split("}", 1)
    sdl = head + "input EndpointInput {" + block.replace("  flashBootType: FlashBootType\n", "") + "}" + tail
    assert len(sdl) < len(full)
    answer = graphql_sync(build_schema(sdl), INTROSPECTION)
    assert answer.errors is None
    schema = from_introspection(answer.data)
    assert "flashBootType" not in schema.endpoint_input and "flashBootType" in schema.endpoint
    assert {"saveEndpoint", "deleteEndpoint"} <= schema.mutations and "serverlessGpuPools" in schema.queries
    data = endpoint_input(echo.spec, RunPodConfig(api_key="k"), name="n", digest="d",
                          hardware={"instanceIds": ["cpu3g-2-8"]}, disk_gb=20)
    kept = keep_known(data, schema.endpoint_input, "EndpointInput")
    assert set(data) - set(kept) == {"flashBootType"}


def test_an_endpoint_is_adopted_only_when_its_live_settings_match():
    hardware = {"gpuIds": "AMPERE_24,-NVIDIA L4", "gpuCount": 1}
    wanted = endpoint_input(echo.spec, RunPodConfig(api_key="k"), name="n", digest="d", hardware=hardware,
                            disk_gb=20)
    live = {**{k: v for k, v in wanted.items() if k != "template"}, "id": "e1", "templateId": "t1",
            "gpuIds": "-NVIDIA L4,AMPERE_24", "locations": None, "template": {**wanted["template"], "id": "t1"}}
    assert differences(live, wanted) == []  # token order and empty strings are no difference
    assert differences({**live, "workersMax": 0}, wanted) == [f"workersMax: 0, wanted {echo.spec.max_workers}"]
    assert differences({**live, "template": None}, wanted) == ["template: not readable"]


def test_secrets_quoted_back_by_an_error_are_hidden():
    with pytest.raises(errors.BackendError) as caught, hiding(["s3cr3t-value"]):
        raise errors.BackendError('refused: Found: {env: [{key: "T", value: "s3cr3t-value"}]}')
    assert "s3cr3t-value" not in str(caught.value) and "***" in str(caught.value)


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


def test_boot_knows_what_the_interpreter_already_has():
    from gpuflex_runpod import _boot

    assert _boot.satisfied("attrs>=20") and _boot.satisfied("httpx") and not _boot.satisfied("attrs<1")
    assert not _boot.satisfied("surely-not-installed-gpuflex-probe")
    assert not _boot.satisfied("gpuflex-probe @ file:///nowhere")


def test_template_starts_from_a_public_image_with_a_quote_free_start_command():
    import json

    from gpuflex_runpod import _bootstrap
    from gpuflex_runpod._control import endpoint_input

    config = RunPodConfig(api_key="k", cpu_instance="cpu3c-2-4")
    data = endpoint_input(echo.spec, config, name="n", digest="d", hardware={"instanceIds": ["cpu3c-2-4"]}, disk_gb=20)
    template = data["template"]
    assert template["imageName"] == _bootstrap.DEFAULT_CPU_IMAGE and template["imageName"].startswith("runpod/")
    args = template["dockerArgs"]
    assert args.startswith("sh -c '") and args.endswith("'") and "'" not in args[7:-1]
    env = {item["key"]: item["value"] for item in template["env"]}
    assert json.loads(env["GPUFLEX_REQUIREMENTS"])[0] == "runpod==1.12.0"
    assert env["RUNPOD_MIN_MEMORY_GB"] == "2"  # cpu3c-2-4: the SDK's 4 GB check would never pass
    eight = endpoint_input(echo.spec, RunPodConfig(api_key="k"), name="n", digest="d",
                           hardware={"instanceIds": ["cpu3g-2-8"]}, disk_gb=20)
    assert "RUNPOD_MIN_MEMORY_GB" not in {item["key"] for item in eight["template"]["env"]}
    import base64
    import gzip

    assert gzip.decompress(base64.b64decode(env["GPUFLEX_BOOT"])) == Path(_bootstrap.__file__).with_name(
        "_boot.py").read_bytes()


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


def _lane_with(count, *, size=100, streams=()):
    lane = Lane("ep")
    for i in range(count):
        payload = Payload(b"x" * (size * 3 // 4))  # ``size`` bytes in base64
        lane.pending.append(CallState(f"c{i}", lane, payload, blocking=True, streams=i in streams))
    return lane


def test_calls_go_alone_while_the_queue_is_short_and_packed_while_it_is_long():
    lane = _lane_with(2)
    assert [len(take_pack(lane, 2)) for _ in range(3)] == [1, 1, 0]
    lane = _lane_with(100)
    assert len(take_pack(lane, 4)) == 25  # ceil(waiting / free slots)
    lane = _lane_with(1000)
    assert len(take_pack(lane, 1)) == lane.limit == 32  # the first packs are small, and grow as packs end
    lane.grow(slots=1)
    assert len(take_pack(lane, 1)) == 64
    lane = _lane_with(10, streams={0, 3})
    assert [len(take_pack(lane, 1)) for _ in range(4)] == [1, 2, 1, 6]  # generator calls travel alone
    lane = _lane_with(100, size=PACK_BYTES // 10 - 4)
    assert len(take_pack(lane, 1)) == 10
    lane = _lane_with(10)
    for call in list(lane.pending)[:3]:
        call.update = JobUpdate(status=JobStatus.CANCELLED)
    assert [c.handle for c in take_pack(lane, 1)] == [f"c{i}" for i in range(3, 10)]  # cancelled calls are dropped


def test_packs_are_capped_by_what_calls_showed():
    lane = Lane("ep")
    lane.learn(0.5, 100, slots=2)  # 2 slots x 2 s of pack / 0.5 s a call
    assert lane.limit == 8
    lane = Lane("ep")
    lane.learn(0.0001, AGGREGATE_BUDGET // 8, slots=1)  # big results: four to a pack
    assert lane.limit == 4
    lane.grow(slots=1)
    assert lane.limit == 4
    assert Lane("ep", max_pack=1).limit == 1


def test_a_lone_call_seen_running_keeps_its_payload_until_it_ends():
    """A lone call's job seen IN_PROGRESS, then FAILED because the worker lacked the code, is sent again: with its
    payload (it was dropped at RUNNING once, and the resent job carried no call: found under load)."""
    from gpuflex_runpod._answers import Answers

    payload = Payload(b"call")
    call = CallState("c0", Lane("e"), payload, blocking=True, streams=False)
    answers = Answers()
    answers._end(call, JobUpdate(status=JobStatus.RUNNING))
    assert call.payload is payload and not call.done
    answers._end(call, JobUpdate(status=JobStatus.COMPLETED))
    assert call.payload is None and call.done
