"""What only RunPod's live control plane can settle (``--run-live`` with ``RUNPOD_API_KEY``; skipped otherwise).

Each check names the issue item it settles. None of them runs a job: endpoints are created with no active workers
and nothing is queued, so nothing is billed. Everything is named ``gpuflex-live-ctl-*`` and deleted at the end,
also when the run is interrupted (Ctrl-C, SIGTERM); a run killed outright leaves its endpoints to the next run,
which sweeps the prefix first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path

import anyio
import attrs
import httpx
import pytest
from gpuflex_runpod import RunPodBackend, RunPodConfig
from gpuflex_runpod._errors import RunPodApi, find_api_key
from gpuflex_runpod._hardware import runpod_gpu_ids
from gpuflex_runpod._pricing import FLEX_USD_PER_SECOND
from gpuflex_runpod._schema import api_schema

from gpuflex import Resources, errors
from gpuflex.client import get_session
from gpuflex.gpus import CATALOG, GPU

sys.path.insert(0, str(Path(__file__).parent))
import _runpod_app as app  # noqa: E402

pytestmark = [pytest.mark.live,
              pytest.mark.skipif(not os.environ.get("RUNPOD_API_KEY"), reason="needs RUNPOD_API_KEY")]

PREFIX = "gpuflex-live-ctl-"
SAVE = "mutation($input: EndpointInput!) { saveEndpoint(input: $input) { id idleTimeout locations workersMax } }"


def _sweep(config):
    async def main():
        backend = RunPodBackend(config)
        try:
            await backend.teardown(None)  # every endpoint with the prefix, then the prefix's unused templates
        finally:
            await backend.aclose()

    anyio.run(main)


@pytest.fixture(scope="module")
def config():
    config = RunPodConfig(name_prefix=PREFIX, delete_on_close=True, queue_timeout=None)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM unwinds like Ctrl-C
    try:
        _sweep(config)  # leftovers of a run that was killed outright
        yield config
    finally:
        with contextlib.suppress(BaseException):
            _sweep(config)
        signal.signal(signal.SIGTERM, previous)


def _api_call(config, func):
    async def main():
        api = RunPodApi(config, find_api_key(config))
        try:
            return await func(api)
        finally:
            await api.aclose()

    return anyio.run(main)


def _spec(name, gpu="A4000"):
    return attrs.evolve(app.on_h100.spec, name=name, resources=Resources(gpu=GPU(gpu) if gpu else None),
                        max_workers=1)


def _deploy(config, spec):
    async def main():
        backend = RunPodBackend(attrs.evolve(config, delete_on_close=False))
        try:
            await backend.deploy(spec, get_session().bundle_for(app.on_h100))
            return backend.deployed[spec.name].remote
        finally:
            await backend.aclose()

    return anyio.run(main)


def _listed(config, name):
    from gpuflex_runpod._control import ControlPlane

    return _api_call(config, lambda api: ControlPlane(api, config).find(f"{PREFIX}{name}"))


def test_schema_has_every_field_gpuflex_sends_and_no_standby_input(config):
    """Issue 17 RunPod 1: is workersStandby an input field? Which of gpuflex's fields does the live API lack?"""
    schema = _api_call(config, api_schema)
    assert schema.introspected, "RunPod refused introspection: gpuflex falls back to the published schema"
    assert "workersStandby" not in schema.endpoint_input and "workersStandby" in schema.endpoint
    sent = {"name", "type", "workersMin", "workersMax", "idleTimeout", "scalerType", "scalerValue",
            "executionTimeoutMs", "flashBootType", "template", "gpuIds", "gpuCount", "instanceIds", "templateId",
            "networkVolumeId", "locations", "id"}
    assert sent <= schema.endpoint_input, f"the live EndpointInput lacks {sorted(sent - schema.endpoint_input)}"
    assert {"saveEndpoint", "deleteEndpoint", "saveTemplate", "deleteTemplate"} <= schema.mutations
    assert "template" in schema.endpoint, "Endpoint.template is not selectable: adoption cannot compare templates"


def test_gpu_pools_are_listed_and_t4_a10_a100_40gb_are_not_in_them(config):
    """Issue 17 RunPod 5: RunPod's pools, and which catalog GPUs it offers."""
    from gpuflex_runpod._hardware import POOLS_QUERY

    data = _api_call(config, lambda api: api.graphql(POOLS_QUERY, {}))
    pools = {p["id"]: set(p["gpuTypeIds"] or ()) for p in data["serverlessGpuPools"]}
    members = set().union(*pools.values())
    for name in ("T4", "A10", "A100-40GB"):
        assert CATALOG[name].runpod_id not in members
    offered = {m.name for m in CATALOG.values() if set(runpod_gpu_ids(m)) & members}
    assert offered == set(CATALOG) - {"T4", "A10", "A100-40GB"}, f"RunPod offers {sorted(offered)}"
    assert set(pools) - set(FLEX_USD_PER_SECOND) <= {"ADA_32_PRO"}, f"unpriced pools: {set(pools)}"


def test_cpu_flavours_allow_ten_or_fifteen_gb_per_vcpu(config):
    """Issue 17 RunPod 4: container disk limits of CPU flavours."""
    from gpuflex_runpod._hardware import FLAVORS_QUERY

    data = _api_call(config, lambda api: api.graphql(FLAVORS_QUERY, {}))
    limits = {f["id"]: f["diskLimitPerVcpu"] for f in data["cpuFlavors"]}
    assert (limits.get("cpu3c"), limits.get("cpu3g"), limits.get("cpu5c")) == (10, 10, 15), limits


def test_a_cpu_endpoint_deploys_without_gpu_fields_and_leaves_nothing(config):
    """Issue 17 RunPod 4 and 7: a CPU endpoint on the smallest flavour (auto-sized disk, no gpuCount) is
    accepted; its teardown deletes the endpoint and the template (does RunPod keep templates? either way)."""
    remote = _deploy(attrs.evolve(config, cpu_instance="cpu3c-1-2"), _spec("cpu", gpu=None))
    assert remote["instanceIds"] == ["cpu3c-1-2"]
    _sweep(config)
    assert _listed(config, "cpu") is None
    data = _api_call(config, lambda api: api.graphql("query { myself { podTemplates { name } } }", {}))
    assert not [t for t in data["myself"]["podTemplates"] or [] if str(t["name"]).startswith(PREFIX)]


def test_adoption_restores_settings_changed_behind_gpuflexs_back(config):
    """Issue 17 RunPod 3 and 7: an endpoint whose workersMax RunPod lowered is restored on adoption; a partial
    saveEndpoint shows whether RunPod resets what was left out (a full replace); data centres set outside gpuflex
    survive its next update either way."""
    spec = _spec("adopt")
    remote = _deploy(config, spec)
    partial = {"id": remote["id"], "name": remote["name"], "templateId": remote["templateId"],
               "gpuIds": remote["gpuIds"], "workersMax": 0, "locations": "EU-RO-1"}
    saved = _api_call(config, lambda api: api.graphql(SAVE, {"input": partial}, mutation=True))["saveEndpoint"]
    full_replace = saved["idleTimeout"] != remote["idleTimeout"]
    print(f"saveEndpoint without idleTimeout: {remote['idleTimeout']} -> {saved['idleTimeout']} "
          f"({'a full replace' if full_replace else 'a partial update'})")
    adopted = _deploy(config, attrs.evolve(spec, env={"MODE": "changed"}))
    assert adopted["id"] == remote["id"] and adopted["workersMax"] == spec.max_workers
    assert adopted["idleTimeout"] == remote["idleTimeout"] and adopted["locations"] == "EU-RO-1"
    _sweep(config)


def test_graphql_refusals_reach_the_user_whatever_the_http_status(config):
    """How RunPod answers an input field it does not have: the status is recorded, gpuflex raises either way."""
    query = "mutation { saveEndpoint(input: {name: \"gpuflex-live-ctl-x\", workersStandby: 0}) { id } }"
    response = httpx.post(config.graphql_url, json={"query": query}, timeout=30,
                          headers={"Authorization": f"Bearer {find_api_key(config)}"})
    print(f"an unknown input field: HTTP {response.status_code}: {response.text[:300]}")
    assert response.json().get("errors")
    with pytest.raises(errors.BackendError, match="refused"):
        _api_call(config, lambda api: api.graphql(query, {}, mutation=True))
