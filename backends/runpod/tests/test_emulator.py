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


def _gql(api, query, variables=None):
    response = api.post("/graphql", json={"query": query, "variables": variables or {}})
    return response.status_code, response.json()


def test_graphql_is_served_as_graphql_says(api):
    """Inline arguments, variables, aliases, fragments and introspection work; what RunPod's schema does not have
    (an unknown field, an input field such as workersStandby, which is output-only) is refused in GraphQL's shape
    before anything runs; an error while running names its path."""
    template = {"name": f"gql-{time.monotonic_ns()}", "imageName": "x", "containerDiskInGb": 5, "dockerArgs": "",
                "env": [{"key": "A", "value": "1"}]}
    status, body = _gql(api, "mutation($t: EndpointTemplateInput) { made: saveEndpoint(input: {name: \"gql\", "
                             "gpuIds: \"ADA_24\", workersMax: 0, template: $t}) { ...Ids workersMin idleTimeout } }"
                             " fragment Ids on Endpoint { id name gpuIds }", {"t": template})
    assert status == 200 and "errors" not in body, body
    made = body["data"]["made"]
    # only what was selected, under the alias; the schema's defaults for what was left out
    assert set(made) == {"id", "name", "gpuIds", "workersMin", "idleTimeout"} and made["idleTimeout"] == 10

    for query, variables in (
        ("{ myself { endpoints { id notAField } } }", None),
        ('mutation { saveEndpoint(input: {name: "x", gpuIds: "ADA_24", workersStandby: 0}) { id } }', None),
        ("mutation($i: EndpointInput!) { saveEndpoint(input: $i) { id } }",
         {"i": {"name": "x", "gpuIds": "ADA_24", "workersStandby": 0}}),
        ("{ myself { endpoints { id } }", None),
    ):
        status, body = _gql(api, query, variables)
        assert status == 400 and "data" not in body, body
        assert body["errors"] and all(isinstance(e["message"], str) for e in body["errors"])
    assert "workersStandby" in _gql(api, *(
        "mutation($i: EndpointInput!) { saveEndpoint(input: $i) { id } }",
        {"i": {"name": "x", "gpuIds": "ADA_24", "workersStandby": 0}}))[1]["errors"][0]["message"]

    status, body = _gql(api, 'mutation { deleteEndpoint(id: "no-such-endpoint") }')
    assert status == 200 and body["data"] == {"deleteEndpoint": None}
    assert body["errors"][0]["path"] == ["deleteEndpoint"] and "not found" in body["errors"][0]["message"]

    status, body = _gql(api, '{ input: __type(name: "EndpointInput") { inputFields { name } } '
                             'output: __type(name: "Endpoint") { fields { name } } }')
    assert "workersStandby" not in {f["name"] for f in body["data"]["input"]["inputFields"]}
    assert "workersStandby" in {f["name"] for f in body["data"]["output"]["fields"]}
    _delete(api, made["id"])


def test_gpu_and_cpu_hardware_is_checked_as_runpod_checks_it(api):
    template = {"name": "hw", "imageName": "x", "containerDiskInGb": 20, "dockerArgs": "", "env": []}
    refused = {
        "unknown pool": {"gpuIds": "TURING_16"},
        "unknown GPU type": {"gpuIds": "AMPERE_24,-NVIDIA A10"},
        "excludes every GPU": {"gpuIds": "ADA_24,-NVIDIA GeForce RTX 4090"},
        "takes no gpuCount": {"instanceIds": ["cpu3g-2-8"], "gpuCount": 0},
        "exceeds the 10 GB": {"instanceIds": ["cpu3c-1-2"]},
        "unknown CPU instance": {"instanceIds": ["cpu3c-2-8"]},
    }
    for message, settings in refused.items():
        data = {"name": "hw", "workersMax": 0, "template": template, **settings}
        status, body = _gql(api, "mutation($i: EndpointInput!) { saveEndpoint(input: $i) { id } }", {"i": data})
        assert status == 200 and message in body["errors"][0]["message"], (message, body)
    templates = _gql(api, "{ myself { podTemplates { name } } }")[1]["data"]["myself"]["podTemplates"]
    assert "hw" not in [t["name"] for t in templates], "a refused endpoint leaves no template behind"


def test_runpods_own_sdk_helpers_work_unmodified(api, emulator_url, emulator_key, monkeypatch):
    """runpod 1.12's control-plane helpers write their arguments inline; its job client then runs a job on the
    endpoint they made."""
    import runpod

    monkeypatch.setenv("RUNPOD_API_BASE_URL", emulator_url)  # read by runpod.api.graphql at each call
    monkeypatch.setattr(runpod, "api_key", emulator_key)
    monkeypatch.setattr(runpod, "endpoint_url_base", f"{emulator_url}/v2")  # read at import from the env
    gpus = runpod.get_gpus()
    assert {"id", "displayName", "memoryInGb"} <= set(gpus[0]) and len(gpus) > 10
    l4 = runpod.get_gpu("NVIDIA L4")
    assert l4["memoryInGb"] == 24 and l4["securePrice"] > 0 and l4["lowestPrice"]["uninterruptablePrice"] > 0
    assert runpod.get_user()["networkVolumes"][0]["dataCenterId"]

    suffix = time.monotonic_ns()
    template = runpod.create_template(f"sdk-{suffix}", "python:3.11-slim", is_serverless=True, env={"A": "b"},
                                      docker_start_cmd=f"{sys.executable} {HANDLER}")
    assert template["isServerless"] and template["env"] == [{"key": "A", "value": "b"}]
    endpoint = runpod.create_endpoint(f"sdk-{suffix}", template["id"], gpu_ids="AMPERE_24", workers_max=1,
                                      flashboot=True, idle_timeout=5)
    assert endpoint["flashBootType"] == "FLASHBOOT" and endpoint["templateId"] == template["id"]
    listed = {e["id"]: e for e in runpod.get_endpoints()}
    assert listed[endpoint["id"]]["workersStandby"] == 0 and listed[endpoint["id"]]["userId"]

    output = runpod.Endpoint(endpoint["id"]).run_sync({"x": 1}, timeout=60)
    assert output == {"echo": {"x": 1}}

    other = runpod.create_template(f"sdk-{suffix}-b", "python:3.12-slim", is_serverless=True,
                                   docker_start_cmd=f"{sys.executable} {HANDLER}")
    assert runpod.update_endpoint_template(endpoint["id"], other["id"]) == {"id": endpoint["id"],
                                                                             "templateId": other["id"]}
    _delete(api, endpoint["id"])
    for made in (template, other):
        status, body = _gql(api, "mutation($n: String) { deleteTemplate(templateName: $n) }", {"n": made["name"]})
        assert status == 200 and "errors" not in body
