"""``gpuflex deploy`` on RunPod, against the emulator and a local S3 server (moto, checking signatures): the code
goes to the object store by hash, the endpoints take plain JSON from any HTTP client, a second deploy changes
nothing, drift is reported and fixed, versions roll back, and teardown leaves nothing.

The tests of this module share one deployed app (environment ``staging``) and run in order: each starts from
what the previous one left."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

HERE = Path(__file__).parent
ENV = "staging"
PREFIX = f"gpuflex-{ENV}-"
APP = '''
from collections.abc import Iterator
from typing import Annotated

from pydantic import Field

import gpuflex

GREETING = "hello"


@gpuflex.endpoint(name="greet", max_workers=1, timeout=60, concurrency=4)
def greet(name: str, times: Annotated[int, Field(ge=1, le=3)] = 1) -> str:
    """Greet someone, ``times`` times."""
    return " ".join([f"{GREETING} {name}"] * times)


@gpuflex.endpoint(name="count", max_workers=1, timeout=60, concurrency=4)
def count(n: Annotated[int, Field(ge=0, le=5)]) -> Iterator[int]:
    yield from range(n)


@gpuflex.endpoint(name="tools", max_workers=1, timeout=60, concurrency=4)
class Tools:
    def setup(self) -> None:
        self.prefix = b"<"

    def flip(self, data: bytes) -> bytes:
        return self.prefix + data[::-1]

    def add(self, a: int, b: int) -> int:
        return a + b
'''


def actions(plan_output: str) -> dict[str, str]:
    """Endpoint -> action, from the diff table of ``gpuflex plan``."""
    return dict(re.findall(r"^│ (\w+)\s+│ serverless │ (\w+)", plan_output, re.MULTILINE))


class Project:
    def __init__(self, root: Path, url: str, key: str, s3) -> None:
        self.root, self.url, self.key, self.s3 = root, url, key, s3

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "RUNPOD_API_KEY": self.key, "RUNPOD_S3_ACCESS_KEY": self.s3.access_key,
               "RUNPOD_S3_SECRET_KEY": self.s3.secret_key, "GPUFLEX_HOME": str(self.root.parent / "home"),
               "COLUMNS": "250", "PYTHONUNBUFFERED": "1"}
        env.pop("GPUFLEX_BACKEND", None)
        done = subprocess.run([sys.executable, "-m", "gpuflex.cli", *args], cwd=self.root, env=env,
                              capture_output=True, text=True, timeout=600)
        if check:
            assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-6000:]
        return done

    def deploy(self) -> dict[str, dict]:
        done = self.cli("deploy", "app.py", "--env", ENV, "--json")
        return {e["name"]: e for e in json.loads(done.stdout)["endpoints"]}

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=120)

    def endpoints(self) -> dict[str, dict]:
        query = ("query { myself { endpoints { id name workersMin workersMax workersStandby templateId "
                 "template { id name env { key value } } } podTemplates { id name } } }")
        with self.admin() as admin:
            data = admin.post("/graphql", json={"query": query}).json()["data"]["myself"]
        return {e["name"].removeprefix(PREFIX): e for e in data["endpoints"] if e["name"].startswith(PREFIX)}

    def mutations(self) -> int:
        with self.admin() as admin:
            return int(admin.get("/_emulator/stats").json()["total_mutations"])

    def runsync(self, endpoint_id: str, data: dict) -> dict:
        with self.admin() as admin:
            return admin.post(f"/v2/{endpoint_id}/runsync", json={"input": data}).json()


@pytest.fixture(scope="module")
def project(tmp_path_factory, emulator_url, emulator_key, s3):
    root = tmp_path_factory.mktemp("deploy-project")
    (root / "pyproject.toml").write_text(textwrap.dedent(f"""
        [tool.gpuflex]
        backend = "serverless"

        [tool.gpuflex.backends.serverless]
        api_url = "{emulator_url}"
        network_volume_id = "emuvol0001"
        store_endpoint_url = "{s3.url}"
        store_region = "us-east-1"
    """))
    (root / "app.py").write_text(APP)
    return Project(root, emulator_url, emulator_key, s3)


@pytest.fixture(scope="module")
def deployed(project):
    return project.deploy()


def test_deploy_prints_where_each_endpoint_is_called(project, deployed):
    assert set(deployed) == {"greet", "count", "tools"}
    for entry in deployed.values():
        assert entry["backend"] == "serverless" and entry["env"] == ENV and entry["action"] == "create"
        assert entry["url"] == f"{project.url}/v2/{entry['id']}/runsync" and entry["version"] == 1
    live = project.endpoints()
    assert {name: e["id"] for name, e in live.items()} == {name: e["id"] for name, e in deployed.items()}
    keys = project.s3.keys("emuvol0001")
    variables = {i["key"]: i["value"] for i in live["greet"]["template"]["env"]}
    assert f"gpuflex/releases/{variables['GPUFLEX_RELEASE']}.json" in keys, "the template names its release by hash"
    assert f"gpuflex/bundles/{variables['GPUFLEX_BUNDLE']}.zip" in keys
    assert f"gpuflex/runtime/{variables['GPUFLEX_RUNTIME']}.zip" in keys
    assert f"gpuflex/state/{ENV}/greet.json" in keys
    document = json.loads((project.root / f"app.{ENV}.openapi.gpuflex.json").read_text())
    assert f"/{deployed['greet']['id']}/runsync" in document["paths"]


def test_a_plain_http_client_calls_the_deployed_endpoints(project, deployed):
    """requests, with no gpuflex in the calling process: JSON in, the function's result out; a wrong type fails
    the job with an error naming the field; a generator streams through /stream; binary data travels as base64
    with its media type, both ways."""
    ids = [deployed[name]["id"] for name in ("greet", "count", "tools")]
    done = subprocess.run([sys.executable, str(HERE / "_plain_client.py"), f"{project.url}/v2", project.key, *ids],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    seen = json.loads(done.stdout)
    assert seen["gpuflex_imported"] is False
    assert seen["greet"]["status"] == "COMPLETED" and seen["greet"]["output"] == "hello ada hello ada"
    for case, field in (("wrong_type", "times"), ("missing", "name"), ("bad_method", "method")):
        assert seen[case]["status"] == "FAILED", seen[case]
        error = json.loads(seen[case]["error"])
        assert error["error"] == "ValidationError" and field in error["message"], error
    assert "valid integer" in json.loads(seen["wrong_type"]["error"])["message"]
    flipped = seen["flip"]["output"]
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(8))
    assert base64.b64decode(flipped["base64"]) == b"<" + png[::-1]
    assert flipped["media_type"] == "application/octet-stream"  # reversed, it is no PNG any more
    assert seen["add"]["output"] == 5
    assert seen["count_sync"]["output"] == [0, 1, 2]
    assert seen["streamed"] == {"status": "COMPLETED", "chunks": [0, 1, 2, 3]}


def test_curl_calls_a_deployed_endpoint(project, deployed):
    done = subprocess.run(["curl", "-sS", "-X", "POST", f"{project.url}/v2/{deployed['greet']['id']}/runsync",
                           "-H", f"Authorization: Bearer {project.key}", "-H", "Content-Type: application/json",
                           "-d", '{"input": {"name": "curl"}}'], capture_output=True, text=True, timeout=120)
    assert json.loads(done.stdout)["output"] == "hello curl", done.stdout + done.stderr


def test_gpuflex_call_and_the_pickled_path_reach_the_same_endpoint(project, deployed):
    done = project.cli("call", "greet", "--env", ENV, "--json", '{"name": "cli", "times": 2}')
    assert json.loads(done.stdout) == "hello cli hello cli"
    failed = project.cli("call", "greet", "--env", ENV, "--json", '{"name": 5}', check=False)
    assert failed.returncode == 1 and "ValidationError" in failed.stderr and "name" in failed.stderr
    script = textwrap.dedent("""
        import gpuflex
        from gpuflex._apps import load_app

        app = load_app("app.py")
        with gpuflex.use("serverless", env="staging"):
            print(app.endpoints["greet"]("pickle", times=1), list(app.endpoints["count"](3)))
    """)
    env = {**os.environ, "RUNPOD_API_KEY": project.key, "RUNPOD_S3_ACCESS_KEY": project.s3.access_key,
           "RUNPOD_S3_SECRET_KEY": project.s3.secret_key, "GPUFLEX_HOME": str(project.root.parent / "home")}
    before = project.mutations()
    done = subprocess.run([sys.executable, "-c", script], cwd=project.root, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.split() == ["hello", "pickle", "[0,", "1,", "2]"]
    assert project.mutations() == before, "calling a deployed endpoint must not change it"
    assert set(project.endpoints()) == {"greet", "count", "tools"}, "and must not create development endpoints"


def test_a_second_deploy_of_the_same_code_makes_no_mutating_call(project, deployed):
    before = project.mutations()
    project.s3.start_recording()
    again = project.deploy()
    writes = [(r["method"], r["url"]) for r in project.s3.recorded() if r["method"] not in ("GET", "HEAD")]
    assert project.mutations() == before, "a GraphQL mutation was sent"
    assert writes == [], f"the object store was written: {writes}"
    assert {e["action"] for e in again.values()} == {"unchanged"}
    assert {name: (e["id"], e["version"]) for name, e in again.items()} == \
        {name: (e["id"], 1) for name, e in deployed.items()}


@pytest.mark.timeout(400)
def test_schemathesis_finds_nothing_in_the_deployed_json_api(project, deployed):
    """Every check, against the OpenAPI document the deploy wrote, on the emulator: documented statuses and
    bodies, results that fit the function's declared schema, auth enforced, the /run -> /status links. Positive
    data only: RunPod answers every well-formed request 200 and fails the job (HTTP cannot refuse bad input), which
    test_a_plain_http_client_calls_the_deployed_endpoints checks."""
    document = project.root / f"app.{ENV}.openapi.gpuflex.json"
    done = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", str(document), "--url", f"{project.url}/v2",
         "--checks", "all", "--max-response-time", "300",  # no timing thresholds in tests: a cold start took
         "--mode", "positive", "--header", f"Authorization: Bearer {project.key}",  # 10 s under load
         "--max-examples", "5", "--seed", "1", "--workers", "1", "--generation-database", "none", "--no-color",
         "--request-timeout", "120"],
        capture_output=True, text=True, timeout=380, cwd=project.root.parent, env={**os.environ, "NO_COLOR": "1"})
    assert done.returncode == 0, done.stdout[-12000:] + done.stderr[-3000:]
    summary = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
    assert summary and summary[1] == summary[2] and "failed" not in done.stdout.split("SUMMARY")[-1], done.stdout


def test_drift_is_reported_by_plan_and_fixed_by_deploy(project, deployed):
    """RunPod lowers workersMax on an endpoint idle for days, and sets workersStandby itself."""
    live = project.endpoints()["greet"]
    save = "mutation($input: EndpointInput!) { saveEndpoint(input: $input) { id } }"
    query = ("query { myself { endpoints { id name templateId workersMin workersMax idleTimeout scalerType "
             "scalerValue gpuIds gpuCount instanceIds executionTimeoutMs flashBootType type locations "
             "networkVolumeId } } }")
    with project.admin() as admin:
        full = next(e for e in admin.post("/graphql", json={"query": query}).json()["data"]["myself"]["endpoints"]
                    if e["id"] == live["id"])
        data = {k: v for k, v in full.items() if v is not None} | {"workersMax": 0}
        data.pop("gpuCount", None) if data.get("instanceIds") else None
        assert "errors" not in admin.post("/graphql", json={"query": save, "variables": {"input": data}}).json()
        admin.post(f"/_emulator/endpoints/{live['id']}/vendor", json={"workersStandby": 1})
    text = project.cli("plan", "app.py", "--env", ENV).stdout
    assert "workersMax: 0 -> 1 (drift: changed outside gpuflex)" in text, text
    assert "workersStandby=1" in text
    assert actions(text) == {"greet": "change", "count": "unchanged", "tools": "unchanged"}
    before = project.mutations()
    fixed = project.deploy()
    assert fixed["greet"]["action"] == "change" and fixed["greet"]["version"] == 2
    assert fixed["count"]["action"] == fixed["tools"]["action"] == "unchanged"
    assert project.mutations() > before
    assert project.endpoints()["greet"]["workersMax"] == 1
    assert actions(project.cli("plan", "app.py", "--env", ENV).stdout)["greet"] == "unchanged"


def test_rollback_restores_the_previous_code_and_settings(project, deployed):
    app = project.root / "app.py"
    app.write_text(APP.replace('GREETING = "hello"', 'GREETING = "hi"').replace(
        'name="greet", max_workers=1,', 'name="greet", max_workers=2,'))
    plan = project.cli("plan", "app.py", "--env", ENV).stdout
    assert "workersMax: 1 -> 2" in plan and "env.GPUFLEX_BUNDLE" in plan
    changed = project.deploy()
    assert changed["greet"]["action"] == "change" and changed["greet"]["version"] == 3
    greet_id = changed["greet"]["id"]
    assert project.runsync(greet_id, {"name": "ada"})["output"] == "hi ada"
    versions = json.loads(project.cli("versions", "greet", "--env", ENV, "--json").stdout)
    assert [v["version"] for v in versions] == [1, 2, 3] and versions[-1]["current"]
    assert versions[0]["bundle"] == versions[1]["bundle"] != versions[2]["bundle"]

    done = project.cli("rollback", "greet", "--env", ENV)
    assert "rollback to version 2, now version 4" in done.stdout
    assert project.runsync(greet_id, {"name": "ada"})["output"] == "hello ada"
    live = project.endpoints()["greet"]
    assert live["id"] == greet_id and live["workersMax"] == 1
    versions = json.loads(project.cli("versions", "greet", "--env", ENV, "--json").stdout)
    assert versions[-1]["bundle"] == versions[1]["bundle"] and versions[-1]["note"] == "rollback to version 2"
    assert "greet" in project.cli("versions", "greet", "--env", ENV).stdout
    app.write_text(APP)


def test_environments_keep_separate_endpoints(project, deployed):
    before = project.mutations()
    text = project.cli("plan", "app.py", "--env", "prod").stdout
    assert actions(text) == {"greet": "create", "count": "create", "tools": "create"}, text
    assert project.mutations() == before and set(project.endpoints()) == {"greet", "count", "tools"}


def test_an_endpoint_gone_from_the_app_is_planned_for_removal(project, deployed):
    app = project.root / "app.py"
    app.write_text(APP.split("@gpuflex.endpoint(name=\"tools\"")[0])
    text = project.cli("plan", "app.py", "--env", ENV).stdout
    # the others' code changed too: the same file lost a class
    assert actions(text) == {"greet": "change", "count": "change", "tools": "remove"}, text
    app.write_text(APP)


def test_teardown_leaves_nothing(project, deployed):
    """The app's endpoints go with their records; an endpoint whose record was lost goes with the environment's
    teardown (every app's); then nothing is left: endpoints, templates, objects."""
    assert project.s3.request("DELETE", f"/emuvol0001/gpuflex/state/{ENV}/greet.json").status_code == 204
    done = project.cli("teardown", "app.py", "--env", ENV)
    assert "count" in done.stdout and "tools" in done.stdout and "greet" not in done.stdout
    assert set(project.endpoints()) == {"greet"}
    done = project.cli("teardown", "--env", ENV)
    assert "tore down greet" in done.stdout
    assert project.endpoints() == {}
    query = "query { myself { podTemplates { id name } } }"
    with project.admin() as admin:
        templates = admin.post("/graphql", json={"query": query}).json()["data"]["myself"]["podTemplates"]
    assert not [t for t in templates if t["name"].startswith(PREFIX)]
    assert [k for k in project.s3.keys("emuvol0001") if k.startswith("gpuflex/")] == []
