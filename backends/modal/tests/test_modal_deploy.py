"""``gpuflex deploy`` on Modal, against the fake (the unmodified ``modal`` client, gpuflex's CLI): the code lives in
the deployed app, every endpoint is a web endpoint any HTTP client calls with plain JSON (served by a container
running Modal's own entrypoint), a second deploy sends no mutating RPC, drift made with ``update_autoscaler`` is
reported and fixed, versions roll back through Modal's history, and teardown leaves nothing.

The tests of this module share one fake and one deployed app (environment ``staging``) and run in order: each
starts from what the previous one left."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _fake_modal import FakeModalServer

import gpuflex

HERE = Path(__file__).parent
ROOT = HERE.parents[2]
ENV = "staging"
APP_NAME = "gpuflex-shop-staging"
TOKEN = ("wk-plain-client", "ws-plain-secret")
APP = '''
from collections.abc import Iterator
from typing import Annotated

from pydantic import Field

import gpuflex

GREETING = "hello"


@gpuflex.endpoint(name="greet", max_workers=2, timeout=60, idle_timeout=30)
def greet(name: str, times: Annotated[int, Field(ge=1, le=3)] = 1) -> str:
    """Greet someone, ``times`` times."""
    return " ".join([f"{GREETING} {name}"] * times)


@gpuflex.endpoint(name="count", max_workers=1, timeout=60, idle_timeout=30)
def count(n: Annotated[int, Field(ge=0, le=5)]) -> Iterator[int]:
    yield from range(n)


@gpuflex.endpoint(name="tools", max_workers=1, timeout=60, idle_timeout=30)
class Tools:
    def setup(self) -> None:
        self.prefix = b"<"

    def flip(self, data: bytes) -> bytes:
        return self.prefix + data[::-1]

    def add(self, a: int, b: int) -> int:
        return a + b
'''
PLAIN_CLIENT = '''
import json, sys
import httpx
greet, count, tools, key, secret = sys.argv[1:6]
auth = {"Modal-Key": key, "Modal-Secret": secret}
seen = {}
with httpx.Client(timeout=120) as http:
    def post(url, body, **headers):
        answer = http.post(url, json=body, headers={**auth, **headers})
        return [answer.status_code, answer.json() if "json" in answer.headers.get("content-type", "") else
                answer.text]
    seen["greet"] = post(greet, {"name": "ada", "times": 2})
    seen["by_name"] = post(greet + "/greet", {"name": "bob"})
    seen["wrong_type"] = post(greet, {"name": "ada", "times": "two"})
    seen["missing"] = post(greet, {"times": 2})
    seen["count"] = post(count, {"n": 3})
    seen["sse"] = post(count, {"n": 2}, accept="text/event-stream")
    seen["no_token"] = http.post(greet, json={"name": "eve"}).status_code
    if tools != "-":
        seen["flip"] = post(tools, {"method": "flip", "data": {"base64": "AQID", "media_type": "x/y"}})
        seen["add"] = post(tools, {"method": "add", "a": 2, "b": 3})
        seen["bad_method"] = post(tools, {"method": "nope"})
        seen["describe"] = http.get(tools, headers=auth).json()
seen["gpuflex_imported"] = any(n == "gpuflex" or n.startswith("gpuflex.") for n in sys.modules)
print(json.dumps(seen))
'''


@pytest.fixture(scope="module")
def fake():
    server = FakeModalServer()
    server.servicer.proxy_tokens.add(TOKEN)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MODAL_TOKEN_ID", "ak-test")
        patch.setenv("MODAL_TOKEN_SECRET", "as-test-secret-value")
        patch.setenv("MODAL_CONFIG_PATH", str(server.root / "no-modal.toml"))
        for name in ("MODAL_PROFILE", "MODAL_SERVER_URL", "MODAL_ENVIRONMENT", "GPUFLEX_BACKEND"):
            patch.delenv(name, raising=False)
        yield server
        gpuflex.shutdown()
    server.close()


@pytest.fixture(scope="module")
def project(tmp_path_factory, fake):
    root = tmp_path_factory.mktemp("modal-deploy")
    (root / "pyproject.toml").write_text("[project]\nname = 'shop'\n")
    (root / "gpuflex.toml").write_text(f'[backends.modal]\nserver_url = "{fake.url}"\nstream_output = false\n')
    (root / "app.py").write_text(APP)
    return root


def cli(project: Path, *args: str) -> str:
    from typer.testing import CliRunner

    from gpuflex._config import reload_project_config
    from gpuflex.cli import app as command

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        patch.setenv("COLUMNS", "250")
        reload_project_config()
        try:
            result = CliRunner().invoke(command, list(args))
        finally:
            patch.chdir(ROOT)
            reload_project_config()
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def deploy(project: Path) -> dict[str, dict]:
    output = cli(project, "deploy", str(project / "app.py"), "--backend", "modal", "--env", ENV, "--json")
    document = json.loads(output[output.index("{"):])
    return {e["name"]: e for e in document["endpoints"]}


def plan(project: Path) -> str:
    return cli(project, "plan", str(project / "app.py"), "--backend", "modal", "--env", ENV)


def actions(output: str) -> dict[str, str]:
    return dict(re.findall(r"^│ (\w+)\s+│ modal\s+│ (\w+)", output, re.MULTILINE))


def plain_http(greet: str, count: str, tools: str = "-") -> dict:
    done = subprocess.run([sys.executable, "-c", PLAIN_CLIENT, greet, count, tools, *TOKEN], capture_output=True,
                          text=True, timeout=300, cwd="/")
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


def test_deploy_stores_the_code_in_the_app_and_serves_plain_json(fake, project):
    first = actions(plan(project))
    assert first == {"greet": "create", "count": "create", "tools": "create"}
    deployed = deploy(project)
    servicer = fake.servicer
    assert servicer.live_apps() == [APP_NAME]
    assert {name: e["action"] for name, e in deployed.items()} == {"greet": "create", "count": "create",
                                                                   "tools": "create"}
    greet, count = deployed["greet"]["url"], deployed["count"]["url"]
    assert greet.startswith("http://127.0.0.1:") and greet != count
    assert deployed["greet"]["version"] == 1
    files = servicer.mounted_files()
    assert any(f.endswith("/gpuflex-bundle/app.py") for f in files), "the bundle is in the deployed app"
    seen = plain_http(greet, count, deployed["tools"]["url"])
    assert seen["gpuflex_imported"] is False, seen
    assert seen["greet"] == [200, "hello ada hello ada"], seen["greet"][1]
    assert seen["by_name"] == [200, "hello bob"]
    status, error = seen["wrong_type"]
    assert status == 422 and error["error"] == "ValidationError" and "times" in error["message"]
    status, error = seen["missing"]
    assert status == 422 and "name" in error["message"]
    assert seen["count"] == [200, [0, 1, 2]]
    assert seen["sse"][0] == 200 and 'data: 0' in seen["sse"][1] and "event: end" in seen["sse"][1]
    assert seen["no_token"] == 401, "web endpoints require a proxy-auth token by default"
    assert seen["flip"] == [200, {"base64": "PAMCAQ==", "media_type": "application/octet-stream"}]
    assert seen["add"] == [200, 5]
    assert seen["bad_method"][0] == 422 and "'nope' is not one of add, flip" in seen["bad_method"][1]["message"]
    assert seen["describe"]["name"] == "tools" and seen["describe"]["methods"] == ["add", "flip"]
    assert servicer.of("FunctionGetOutputs") == [], "the web calls went through HTTP only"


def test_schemathesis_finds_nothing_in_the_deployed_web_endpoints(project):
    """Every check, positive and negative data, against the OpenAPI document the deploy wrote (each endpoint's web
    URL as its path's server): documented statuses and bodies, results that fit the declared schema, bad input
    refused with a documented error."""
    document = project / f"app.{ENV}.openapi.gpuflex.json"
    paths = json.loads(document.read_text())["paths"]
    assert sorted(paths) == ["/count", "/greet", "/tools"]
    for path, item in sorted(paths.items()):  # each endpoint at its own URL (its path's server)
        done = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", str(document), "--url", item["servers"][0]["url"],
             "--include-path", path, "--checks", "all", "--max-response-time", "300",  # no timing thresholds
             "--header", f"Modal-Key: {TOKEN[0]}", "--header", f"Modal-Secret: {TOKEN[1]}",
             "--max-examples", "10", "--seed", "1", "--workers", "1", "--generation-database", "none",
             "--no-color", "--request-timeout", "120"],
            capture_output=True, text=True, timeout=400, cwd=project.parent, env={**os.environ, "NO_COLOR": "1"})
        assert done.returncode == 0, done.stdout[-12000:] + done.stderr[-3000:]
        summary = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
        assert summary and summary[1] == summary[2], done.stdout


def test_a_second_deploy_makes_no_mutating_call(fake, project):
    output = plan(project)
    assert actions(output) == {"greet": "unchanged", "count": "unchanged", "tools": "unchanged"}, output
    before = len(fake.servicer.mutations())
    deployed = deploy(project)
    assert fake.servicer.mutations()[before:] == []
    assert {e["action"] for e in deployed.values()} == {"unchanged"}
    assert deployed["greet"]["url"] and deployed["greet"]["version"] == 1
    output = cli(project, "openapi", str(project / "app.py"), "--backend", "modal", "--env", ENV)
    document = json.loads(output[output.index("{"):])
    assert document["paths"]["/greet"]["servers"] == [{"url": deployed["greet"]["url"]}], "read from Modal"
    assert fake.servicer.mutations()[before:] == [], "reading what is deployed changes nothing"
    assert actions(plan(project)) == {"greet": "unchanged", "count": "unchanged", "tools": "unchanged"}


def test_drift_is_reported_and_fixed(fake, project):
    import modal

    servicer = fake.servicer
    app_id = servicer.deployments[("main", APP_NAME)]
    function_id = servicer.layout(app_id).function_ids["gpuflex_greet.*"]

    async def plant() -> None:  # what `update_autoscaler` does in Modal's console or SDK
        client = modal.Client(fake.url, 1, ("ak-test", "as-test-secret-value"))
        async with client:
            await modal.Function.from_id(function_id, client=client).autoscaler.update.aio(max_containers=5)

    import asyncio

    asyncio.run(plant())
    output = plan(project)
    assert actions(output) == {"greet": "change", "count": "unchanged", "tools": "unchanged"}
    assert "max_containers: 5 -> 2" in output and "drift" in output
    before = len(servicer.mutations())
    deployed = deploy(project)
    assert servicer.mutations()[before:], "the drift was fixed with a deploy"
    assert deployed["greet"]["version"] == 2
    function_id = servicer.layout(app_id).function_ids["gpuflex_greet.*"]
    assert servicer.functions[function_id].autoscaler_settings.max_containers == 2
    assert actions(plan(project)) == {"greet": "unchanged", "count": "unchanged", "tools": "unchanged"}


def test_rollback_restores_the_previous_code_and_settings(fake, project):
    (project / "app.py").write_text(APP.replace('GREETING = "hello"', 'GREETING = "bye"')
                                    .replace("max_workers=2", "max_workers=3"))
    deployed = deploy(project)
    assert {e["action"] for e in deployed.values()} == {"change"}, "one bundle: every endpoint's code changed"
    assert deployed["greet"]["version"] == 3
    seen = plain_http(deployed["greet"]["url"], deployed["count"]["url"])
    assert seen["greet"] == [200, "bye ada bye ada"]
    with pytest.MonkeyPatch.context() as patch:  # `gpuflex call` from the shell, with the proxy-auth token
        patch.setenv("MODAL_PROXY_TOKEN_ID", TOKEN[0])
        patch.setenv("MODAL_PROXY_TOKEN_SECRET", TOKEN[1])
        called = cli(project, "call", "greet", "--json", '{"name": "cy"}', "--backend", "modal", "--env", ENV)
    assert json.loads(called) == "bye cy"
    versions = json.loads(cli(project, "versions", "greet", "--backend", "modal", "--env", ENV, "--json"))
    assert [v["version"] for v in versions] == [1, 2, 3] and versions[-1]["current"]
    assert versions[0]["bundle"] == versions[1]["bundle"] != versions[2]["bundle"]
    output = cli(project, "rollback", "greet", "--backend", "modal", "--env", ENV)
    assert "rolled back to version 2" in output and "now version 4" in output
    seen = plain_http(deployed["greet"]["url"], deployed["count"]["url"])
    assert seen["greet"] == [200, "hello ada hello ada"], "the previous code answers again"
    servicer = fake.servicer
    app_id = servicer.deployments[("main", APP_NAME)]
    function_id = servicer.layout(app_id).function_ids["gpuflex_greet.*"]
    assert servicer.functions[function_id].autoscaler_settings.max_containers == 2, "and its settings"
    versions = json.loads(cli(project, "versions", "greet", "--backend", "modal", "--env", ENV, "--json"))
    assert versions[-1]["version"] == 4 and versions[-1]["current"] and versions[-1]["bundle"] == versions[1]["bundle"]
    assert versions[-1]["note"] == "rollback to version 2"
    assert [r.version for r in servicer.of("AppRollback")] == [2], "Modal's own rollback RPC"
    assert actions(plan(project)) == {"greet": "change", "count": "change", "tools": "change"}, \
        "the app file still says 'bye'"


def test_an_endpoint_gone_from_the_app_is_removed(fake, project):
    (project / "app.py").write_text(APP.split("@gpuflex.endpoint(name=\"tools\"")[0])
    assert actions(plan(project)) == {"greet": "change", "count": "change", "tools": "remove"}
    deployed = deploy(project)
    assert deployed["tools"]["action"] == "remove" and deployed["tools"]["url"] is None
    servicer = fake.servicer
    layout = servicer.layout(servicer.deployments[("main", APP_NAME)])
    assert sorted(layout.function_ids) == ["gpuflex_count.*", "gpuflex_greet.*"]
    assert actions(plan(project)) == {"greet": "unchanged", "count": "unchanged"}


def test_teardown_leaves_nothing(fake, project):
    output = cli(project, "teardown", "--backend", "modal", "--env", ENV)
    assert "greet" in output and "count" in output
    servicer = fake.servicer
    assert servicer.live_apps() == []
    assert servicer.live_dicts() == []

    import time

    deadline = time.monotonic() + 30
    while servicer.live_containers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert servicer.live_containers() == []
    assert actions(plan(project)) == {"greet": "create", "count": "create"}
