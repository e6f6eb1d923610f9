"""The serverless backend's control plane against the emulator's GraphQL API: what it creates, adopts, updates
and deletes, and what it does when RunPod changed an endpoint behind its back or lost an answer."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import attrs
import httpx
import pytest

from gpuflex import Resources, errors
from gpuflex.client import get_session
from gpuflex.gpus import GPU

sys.path.insert(0, str(Path(__file__).parent))
import _runpod_app as app  # noqa: E402

MYSELF = ("query { myself { endpoints { id name templateId version workersMin workersMax idleTimeout scalerType "
          "scalerValue gpuIds gpuCount instanceIds executionTimeoutMs flashBootType type locations networkVolumeId "
          "template { id name containerDiskInGb env { key value } } } podTemplates { id name } } }")
SAVE = "mutation($input: EndpointInput!) { saveEndpoint(input: $input) { id } }"
#: what the console (or RunPod itself) sends back when it changes one setting: the whole endpoint
CONSOLE_FIELDS = ("id", "name", "templateId", "workersMin", "workersMax", "idleTimeout", "scalerType", "scalerValue",
                  "gpuIds", "gpuCount", "instanceIds", "executionTimeoutMs", "flashBootType", "type", "locations",
                  "networkVolumeId")


@pytest.fixture
def admin(emulator_url, emulator_key):
    with httpx.Client(base_url=emulator_url, headers={"Authorization": f"Bearer {emulator_key}"}, timeout=30) as c:
        yield c
        c.delete("/_emulator/faults")


def _myself(admin):
    return admin.post("/graphql", json={"query": MYSELF}).json()["data"]["myself"]


def _named(admin, name):
    return [e for e in _myself(admin)["endpoints"] if e["name"] == name]


def _console_save(admin, endpoint, **changes):
    data = {k: endpoint[k] for k in CONSOLE_FIELDS if endpoint.get(k) is not None} | changes
    if data.get("instanceIds"):
        data.pop("gpuCount", None)
    body = admin.post("/graphql", json={"query": SAVE, "variables": {"input": data}}).json()
    assert "errors" not in body, body


def _spec(name, gpu="RTX4090", **changes):
    return attrs.evolve(app.on_h100.spec, name=name, resources=Resources(gpu=GPU(gpu) if gpu else None), **changes)


def _deploy(backend, *specs):
    """Deploy each spec on ``backend`` in turn, then close it; return the RunPod endpoint ids."""
    bundle = get_session().bundle_for(app.on_h100)

    async def main():
        try:
            ids = []
            for spec in specs:
                await backend.deploy(spec, bundle)
                ids.append(backend.deployed[spec.name].remote["id"])
            return ids
        finally:
            await backend.aclose()

    return anyio.run(main)


def _teardown(make_backend, name):
    async def main():
        backend = make_backend()
        try:
            await backend.teardown(name)
        finally:
            await backend.aclose()

    anyio.run(main)


def test_cpu_endpoints_send_no_gpu_fields_and_fit_their_flavours_disk(make_backend, admin):
    """RunPod refuses GPU fields on a CPU endpoint, and a container disk over vCPUs x 10 GB (cpu3 flavours)."""
    _deploy(make_backend(cpu_instance="cpu3c-1-2"), _spec("rp_cpu_small", gpu=None))
    (remote,) = _named(admin, "gpuflex-dev-rp_cpu_small")
    assert remote["instanceIds"] == ["cpu3c-1-2"] and remote["template"]["containerDiskInGb"] == 10
    with pytest.raises(errors.ConfigError, match=r"container_disk_gb=20 .* cpu3c-1-2 .* \(10 GB\)"):
        _deploy(make_backend(cpu_instance="cpu3c-1-2", container_disk_gb=20), _spec("rp_cpu_small", gpu=None))
    _teardown(make_backend, "rp_cpu_small")


def test_gpu_pools_come_from_runpod(make_backend, admin):
    """gpuIds excludes pool members gpuflex's catalog does not know (RunPod lists them); GPUs RunPod does not
    offer fail before anything is created."""
    _deploy(make_backend(), _spec("rp_a4000", gpu="A4000"))
    (remote,) = _named(admin, "gpuflex-dev-rp_a4000")
    assert remote["gpuIds"].startswith("AMPERE_16,") and "-NVIDIA RTX 2000 Ada Generation" in remote["gpuIds"]
    with pytest.raises(errors.ConfigError, match="offers no T4"):
        _deploy(make_backend(), _spec("rp_t4", gpu="T4"))
    assert _named(admin, "gpuflex-dev-rp_t4") == []
    _teardown(make_backend, "rp_a4000")


def test_a_leftover_is_adopted_only_while_its_live_settings_match(make_backend, admin):
    spec = _spec("rp_adopt")
    (endpoint_id,) = _deploy(make_backend(), spec)
    (before,) = _named(admin, "gpuflex-dev-rp_adopt")
    assert _deploy(make_backend(), spec) == [endpoint_id]
    assert _named(admin, "gpuflex-dev-rp_adopt")[0]["version"] == before["version"], "nothing to change: no save"

    _console_save(admin, before, workersMax=0)  # what RunPod does to an endpoint idle for 7 days
    assert _deploy(make_backend(), spec) == [endpoint_id]
    (after,) = _named(admin, "gpuflex-dev-rp_adopt")
    assert after["workersMax"] == spec.max_workers, "a leftover scaled down by RunPod must be restored"
    _teardown(make_backend, "rp_adopt")


def test_updates_keep_what_the_console_attached(make_backend, admin):
    """saveEndpoint replaces the whole endpoint: an update sends back a volume and data centres set elsewhere."""
    spec = _spec("rp_console")
    (endpoint_id,) = _deploy(make_backend(), spec)
    _console_save(admin, _named(admin, "gpuflex-dev-rp_console")[0], networkVolumeId="emuvol0001",
                  locations="EU-RO-1")
    changed = attrs.evolve(spec, env={"MODE": "changed"})
    backend = make_backend()
    bundle = get_session().bundle_for(app.on_h100)
    seen = {}

    async def update_then_scale():
        try:
            await backend.deploy(changed, bundle)
            seen["updated"] = _named(admin, "gpuflex-dev-rp_console")[0]
            await backend.scale("rp_console", min_workers=0, max_workers=2)
        finally:
            await backend.aclose()

    anyio.run(update_then_scale)
    updated = seen["updated"]
    assert updated["id"] == endpoint_id and {"key": "MODE", "value": "changed"} in updated["template"]["env"]
    assert (updated["networkVolumeId"], updated["locations"]) == ("emuvol0001", "EU-RO-1")
    (remote,) = _named(admin, "gpuflex-dev-rp_console")
    assert (remote["workersMax"], remote["networkVolumeId"], remote["locations"]) == (2, "emuvol0001", "EU-RO-1")
    _teardown(make_backend, "rp_console")


def test_a_create_whose_answer_was_lost_is_not_made_twice(make_backend, admin):
    """RunPod created the endpoint but the answer was lost (a gateway timeout): no second endpoint."""
    admin.post("/_emulator/faults", json={"status": 504, "operation": "saveEndpoint", "after": True})
    (endpoint_id,) = _deploy(make_backend(), _spec("rp_lost"))
    assert [e["id"] for e in _named(admin, "gpuflex-dev-rp_lost")] == [endpoint_id]
    assert all(f["count"] == 0 for f in admin.get("/_emulator/faults").json()["faults"]), "the fault was not hit"
    _teardown(make_backend, "rp_lost")


def test_a_failed_read_back_leaves_nothing_behind(make_backend, admin):
    """Listing endpoints fails once the endpoint exists: the deploy needs no second listing (the mutation's
    answer is the stored endpoint), and a dev run deletes what it made."""
    admin.post("/_emulator/faults", json={"status": 500, "operation": "myself", "skip": 1, "count": 50})
    _deploy(make_backend(delete_on_close=True), _spec("rp_readback"))
    admin.delete("/_emulator/faults")
    assert _named(admin, "gpuflex-dev-rp_readback") == []


def test_teardown_removes_templates_and_a_redeploy_works(make_backend, admin):
    """RunPod keeps a template when its endpoint is deleted, and template names are unique: gpuflex deletes the
    templates it made, and a later deploy of the same settings does not meet a leftover."""
    spec = _spec("rp_again")
    for _ in range(2):
        _deploy(make_backend(delete_on_close=True), spec)
        assert _named(admin, "gpuflex-dev-rp_again") == []
        assert not [t for t in _myself(admin)["podTemplates"] if t["name"].startswith("gpuflex-dev-rp_again-")]


def test_teardown_of_everything_sweeps_leftover_templates(make_backend, admin):
    """A template left by a run killed between deleting an endpoint and its template goes with the prefix's
    teardown, along with the endpoints."""
    _deploy(make_backend(name_prefix="gpuflex-sweep-"), _spec("rp_kept"))
    leftover = {"name": "gpuflex-sweep-rp_gone-0123456789abcdef-beef", "imageName": "x", "dockerArgs": "",
                "containerDiskInGb": 5, "volumeInGb": 0, "env": [], "isServerless": True}
    body = admin.post("/graphql", json={"query": "mutation($t: SaveTemplateInput) { saveTemplate(input: $t) { id } }",
                                        "variables": {"t": leftover}}).json()
    assert "errors" not in body

    async def teardown_all():
        backend = make_backend(name_prefix="gpuflex-sweep-")
        try:
            await backend.teardown(None)
        finally:
            await backend.aclose()

    anyio.run(teardown_all)
    assert not [t for t in _myself(admin)["podTemplates"] if t["name"].startswith("gpuflex-sweep-")]
    assert _named(admin, "gpuflex-sweep-rp_kept") == []
