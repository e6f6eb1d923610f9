"""The emulator's job API and control plane, driven over HTTP the way RunPod's own clients call the cloud, with
an unmodified runpod worker (a plain handler, no gpuflex) behind it."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import pytest

HANDLER = Path(__file__).with_name("_plain_handler.py")
SAVE = "mutation saveEndpoint($input: EndpointInput!) { saveEndpoint(input: $input) { id } }"
LIST = "query { myself { endpoints { id name workersStandby } } }"
DELETE = "mutation deleteEndpoint($id: String!) { deleteEndpoint(id: $id) }"
SCALE = "mutation($input: EndpointInput!) { saveEndpoint(input: $input) { id } }"


@pytest.fixture
def api(emulator_url, emulator_key):
    with httpx.Client(base_url=emulator_url, headers={"Authorization": f"Bearer {emulator_key}"},
                      timeout=30) as client:
        yield client


def _endpoint(api, name, **settings):
    data = {"name": name, "gpuIds": "AMPERE_16", "workersMin": 0, "workersMax": 1, "idleTimeout": 5,
            "template": {"name": f"{name}-{time.monotonic_ns()}", "imageName": "x", "containerDiskInGb": 5,
                         "dockerArgs": f"{sys.executable} {HANDLER}", "env": []},
            **settings}
    body = api.post("/graphql", json={"query": SAVE, "variables": {"input": data}}).json()
    return body["data"]["saveEndpoint"]["id"]


def _delete(api, endpoint_id):
    """Scale to zero, then delete (RunPod refuses to delete an endpoint that may have workers)."""
    listed = api.post("/graphql", json={"query": "{ myself { endpoints { id name templateId gpuIds } } }"}).json()
    endpoint = next(e for e in listed["data"]["myself"]["endpoints"] if e["id"] == endpoint_id)
    scaled = {**endpoint, "workersMin": 0, "workersMax": 0}
    assert "errors" not in api.post("/graphql", json={"query": SCALE, "variables": {"input": scaled}}).json()
    assert "errors" not in api.post("/graphql", json={"query": DELETE, "variables": {"id": endpoint_id}}).json()


def _wait(api, endpoint_id, job_id, *, until=("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT")):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = api.get(f"/v2/{endpoint_id}/status/{job_id}").json()
        if body["status"] in until:
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {until}")


def test_job_api_shapes_and_statuses(api):
    endpoint_id = _endpoint(api, "plain-api")
    job = api.post(f"/v2/{endpoint_id}/run", json={"input": {"x": 1}}).json()
    assert job["status"] == "IN_QUEUE" and job["id"]
    done = _wait(api, endpoint_id, job["id"])
    assert done["status"] == "COMPLETED" and done["output"] == {"echo": {"x": 1}}
    assert done["delayTime"] >= 0 and done["executionTime"] >= 0 and done["workerId"]

    failed = _wait(api, endpoint_id, api.post(f"/v2/{endpoint_id}/run", json={"input": {"fail": 1}}).json()["id"])
    assert failed["status"] == "FAILED" and "plain failure" in failed["error"]
    retried = api.post(f"/v2/{endpoint_id}/retry/{failed['id']}").json()
    assert retried == {"id": failed["id"], "status": "IN_QUEUE"}

    sync = api.post(f"/v2/{endpoint_id}/runsync", json={"input": {"y": 2}}).json()
    assert sync["status"] == "COMPLETED" and sync["output"] == {"echo": {"y": 2}} and sync["id"].startswith("sync-")

    assert api.post(f"/v2/{endpoint_id}/run", json={"input": {}}).status_code == 400, "an empty input is refused"
    health = api.get(f"/v2/{endpoint_id}/health").json()
    assert set(health["jobs"]) == {"completed", "failed", "inProgress", "inQueue", "retried"}
    assert set(health["workers"]) == {"idle", "initializing", "ready", "running", "throttled", "unhealthy"}
    assert health["jobs"]["retried"] == 1 and health["jobs"]["completed"] >= 2
    _delete(api, endpoint_id)


def test_cancel_purge_and_timeout_kill_the_work(api):
    endpoint_id = _endpoint(api, "plain-timeout", executionTimeoutMs=1500)
    running = api.post(f"/v2/{endpoint_id}/run", json={"input": {"sleep": 60}}).json()["id"]
    queued = api.post(f"/v2/{endpoint_id}/run", json={"input": {"sleep": 60}}).json()["id"]
    _wait(api, endpoint_id, running, until=("IN_PROGRESS",))
    assert api.post(f"/v2/{endpoint_id}/purge-queue").json() == {"removed": 1, "status": "completed"}
    assert api.get(f"/v2/{endpoint_id}/status/{queued}").json()["status"] == "CANCELLED"
    timed_out = _wait(api, endpoint_id, running)
    assert timed_out["status"] == "TIMED_OUT", timed_out
    # the stuck worker (a sync sleep cannot be stopped in-process) is killed after the stop grace period
    deadline = time.monotonic() + 30
    while [w for w in api.get("/_emulator/workers").json()["workers"] if w["endpoint"] == endpoint_id]:
        assert time.monotonic() < deadline, "the worker running the timed-out job was never stopped"
        time.sleep(0.1)
    _delete(api, endpoint_id)


def test_an_endpoint_without_work_has_no_workers_and_deletes_only_at_zero(api):
    """workersStandby is RunPod's own bookkeeping (reported, never a billed floor); only workersMin keeps workers
    up. RunPod refuses to delete an endpoint whose min or max workers are not zero."""
    endpoint_id = _endpoint(api, "plain-idle")
    listed = api.post("/graphql", json={"query": LIST}).json()["data"]["myself"]["endpoints"]
    assert next(e for e in listed if e["id"] == endpoint_id)["workersStandby"] == 0
    time.sleep(0.5)  # several scaler ticks
    assert api.get(f"/v2/{endpoint_id}/health").json()["workers"]["initializing"] == 0
    refused = api.post("/graphql", json={"query": DELETE, "variables": {"id": endpoint_id}}).json()
    assert "must both be zero" in refused["errors"][0]["message"] and refused["data"] == {"deleteEndpoint": None}
    _delete(api, endpoint_id)
    listed = api.post("/graphql", json={"query": LIST}).json()["data"]["myself"]["endpoints"]
    assert endpoint_id not in [e["id"] for e in listed]


def test_wrong_key_is_refused(emulator_url):
    response = httpx.get(f"{emulator_url}/v2/anything/health", headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401
    assert httpx.post(f"{emulator_url}/graphql", json={"query": LIST}).status_code == 401
