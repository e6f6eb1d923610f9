"""The dev server (``gpuflex serve``), run for real: uvicorn in a subprocess on 127.0.0.1, talked to with httpx."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gpuflex.testing import load_module

if TYPE_CHECKING:
    import httpx

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "tests" / "apps" / "serve_app.py"
Server = load_module(Path(__file__).with_name("_observe.py")).Server  # gpuflex serve, for real


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    srv = Server(APP, tmp / "server.log", env={"GPUFLEX_HOME": str(tmp / "home")})
    yield srv
    srv.stop()


def _wait_job(client: httpx.Client, job_id: str, *, until=lambda job: job["status"] not in ("QUEUED", "RUNNING")):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if until(job):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never got there: {job}")


def _events(response: httpx.Response) -> list[tuple[str, object]]:
    events, name = [], "message"
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((name, json.loads(line.removeprefix("data: "))))
            name = "message"
    return events


def test_health(server):
    body = server.client.get("/health").json()
    assert body["status"] == "ok"
    assert {"greet", "count", "Counter"} <= set(body["endpoints"])


def test_typed_json_call(server):
    response = server.client.post("/greet", json={"name": "ada", "times": 2})
    assert response.status_code == 200
    assert response.json() == "hello ada hello ada"
    assert server.client.post("/greet", json={"name": "bob"}).json() == "hello bob"  # the default applies


def test_async_function_and_class_endpoints(server):
    assert server.client.post("/add", json={"a": 1, "b": 2.5}).json() == {"sum": 3.5}
    assert server.client.post("/Counter", json={"x": 1}).json() == 101  # __call__, after setup()
    assert server.client.post("/Counter/scaled", json={"x": 3, "factor": 5}).json() == 15


def test_bytes_travel_as_base64_with_a_media_type(server):
    """One JSON form of binary data both ways: {"base64", "media_type"}; a caller may send the base64 alone."""
    data = b"hello\x00\xff"
    for sent in (base64.b64encode(data).decode(), {"base64": base64.b64encode(data).decode()}):
        response = server.client.post("/reverse_bytes", json={"data": sent})
        assert response.status_code == 200
        body = response.json()
        assert body["media_type"] == "application/octet-stream"
        assert base64.b64decode(body["base64"]) == data[::-1]
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 8
    back = server.client.post("/reverse_bytes", json={"data": base64.b64encode(png[::-1]).decode()}).json()
    assert back["media_type"] == "image/png"
    response = server.client.post("/reverse_bytes", json={"data": {"base64": "aGk=", "mime": "x"}})
    assert response.status_code == 422 and "mime" in response.json()["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "ada", "times": "many"}, "times"),
        ({"times": 2}, "name"),
        ({"name": "ada", "colour": "red"}, "colour"),
        ({"name": ["not", "a", "string"]}, "name"),
    ],
)
def test_wrong_types_get_422_naming_the_field(server, body, field):
    response = server.client.post("/greet", json=body)
    assert response.status_code == 422
    payload = response.json()
    assert field in payload["message"]
    assert any(field in map(str, error["loc"]) for error in payload["detail"])


def test_bad_base64_gets_422(server):
    response = server.client.post("/reverse_bytes", json={"data": "not base64!"})
    assert response.status_code == 422
    assert "data" in response.json()["message"]


@pytest.mark.parametrize(("raw", "status"), [(b'{"name": ', 400), (b"\xff\xfe", 400), (b'{"name": NaN}', 400),
                                             (b"[1, 2]", 422), (b'"ada"', 422), (b"null", 422)])
def test_malformed_bodies_get_400_and_bodies_that_do_not_fit_422(server, raw, status):
    response = server.client.post("/greet", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["error"] == ("MalformedJSON" if status == 400 else "ValidationError")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/add", {"a": 0, "b": False}, "b"),  # a JSON boolean is not a number
        ("/greet", {"name": "ada", "times": True}, "times"),
        ("/greet", {"name": 5}, "name"),  # a number is not a string
        ("/mean", {"values": [False]}, "values.0"),  # [false] is not [0.0]
        ("/greet", {"name": "ada", "times": 1.5}, "times"),
        ("/reverse_bytes", {"data": 5}, "data"),
    ],
)
def test_validation_is_strict(server, path, body, field):
    response = server.client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert field in response.json()["message"]


def test_json_numbers_are_one_type(server):
    assert server.client.post("/greet", json={"name": "ada", "times": 2.0}).json() == "hello ada hello ada"
    assert server.client.post("/mean", json={"values": [1, 2.5]}).json() == 1.75


def test_a_nan_result_has_no_json_form(server):
    response = server.client.post("/ratio", json={"a": 1, "b": 0})
    assert response.status_code == 500, response.text
    assert response.json()["error"] == "NotJsonable" and "nan" in response.json()["message"]
    job_id = server.client.post("/ratio/jobs", json={"a": 1, "b": 0}).json()["id"]
    assert _wait_job(server.client, job_id)["error"]["error"] == "NotJsonable"


def test_a_result_that_cannot_be_sent_back_is_500_not_503(server):
    response = server.client.post("/make_lock")
    assert response.status_code == 500, response.text
    assert response.json()["error"] == "SerializationError"
    assert "lock" in response.json()["message"]


def test_setup_that_raises_says_so_and_is_logged(server):
    response = server.client.post("/Broken", json={"x": 1})
    assert response.status_code == 502, response.text
    body = response.json()
    assert body["error"] == "ZeroDivisionError"
    assert "Broken.setup() raised ZeroDivisionError: division by zero" in body["message"]
    log = _poll(lambda: "self.scale = 1 / 0" in server.output() and server.output(), "the traceback in the log")
    assert "POST /Broken" in log and "answered 502" in log and ", in setup" in log


def test_the_endpoints_exception_is_logged_with_its_remote_traceback(server):
    server.client.post("/fail", json={"message": "logged-boom"})
    log = _poll(lambda: "logged-boom" in server.output() and server.output(), "the failure in the log")
    assert "raise ValueError(message)" in log
    job_id = server.client.post("/fail/jobs", json={"message": "job-boom"}).json()["id"]
    _wait_job(server.client, job_id)
    _poll(lambda: "job-boom" in server.output(), "the job's failure in the log")


def test_form_encoded_json_is_read_as_json(server):
    response = server.client.post("/greet", content=b'{"name": "curl"}',
                                  headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.json() == "hello curl"


def test_exception_in_endpoint_code_is_502(server):
    response = server.client.post("/fail", json={"message": "boom"})
    assert response.status_code == 502
    assert response.json() == {"error": "ValueError", "message": "boom"}


def test_generator_call_returns_all_chunks(server):
    assert server.client.post("/count", json={"n": 3}).json() == [0, 1, 2]


def test_generator_call_streams_when_asked(server):
    with server.client.stream("POST", "/count", json={"n": 2}, headers={"accept": "text/event-stream"}) as response:
        assert _events(response) == [("message", 0), ("message", 1), ("end", {"status": "COMPLETED"})]


def test_jobs_api(server):
    response = server.client.post("/greet/jobs", json={"name": "job"})
    assert response.status_code == 202
    job = _wait_job(server.client, response.json()["id"])
    assert job["status"] == "COMPLETED"
    assert job["result"] == "hello job"
    assert job["endpoint"] == "greet" and job["backend"] == "local" and job["attempts"] == 1
    assert job["run_time"] is not None and job["queue_time"] is not None
    assert set(job["cost"]) == {"usd", "billed_seconds", "rule"}


def test_failed_job_reports_the_error(server):
    job_id = server.client.post("/fail/jobs", json={"message": "nope"}).json()["id"]
    job = _wait_job(server.client, job_id)
    assert job["status"] == "FAILED"
    assert job["error"] == {"error": "ValueError", "message": "nope"}


def test_server_sent_events_stream_a_generator_job(server):
    job_id = server.client.post("/count/jobs", json={"n": 4, "delay": 0.05}).json()["id"]
    with server.client.stream("GET", f"/jobs/{job_id}/stream") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response)
    assert events == [("message", 0), ("message", 1), ("message", 2), ("message", 3),
                      ("end", {"status": "COMPLETED"})]
    again = server.client.get(f"/jobs/{job_id}/stream")
    assert again.status_code == 409  # chunks are delivered once


def test_stream_of_a_plain_job_is_409(server):
    job_id = server.client.post("/greet/jobs", json={"name": "x"}).json()["id"]
    assert server.client.get(f"/jobs/{job_id}/stream").status_code == 409


def test_cancel(server):
    job_id = server.client.post("/nap/jobs", json={"seconds": 60}).json()["id"]
    _wait_job(server.client, job_id, until=lambda job: job["status"] == "RUNNING")
    response = server.client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 200
    job = _wait_job(server.client, job_id)
    assert job["status"] == "CANCELLED"
    assert job["error"]["error"] == "JobCancelled"


@pytest.mark.parametrize(("method", "path"), [("GET", "/jobs/nope"), ("GET", "/jobs/nope/stream"),
                                              ("POST", "/jobs/nope/cancel")])
def test_unknown_job_is_404(server, method, path):
    response = server.client.request(method, path)
    assert response.status_code == 404
    assert response.json()["error"] == "NotFound"


def test_unknown_route_answers_the_error_shape(server):
    response = server.client.post("/no_such_endpoint", json={})
    assert response.status_code == 404
    assert response.json()["error"] == "NotFound"
    response = server.client.get("/greet")
    assert response.status_code == 405 and "POST" in response.headers["allow"]
    assert response.json()["error"] == "MethodNotAllowed"


def test_openapi_lists_every_status_with_its_body(server):
    spec = server.client.get("/openapi.json").json()
    paths = spec["paths"]
    call = paths["/greet"]["post"]["responses"]
    assert set(call) == {"200", "400", "402", "409", "413", "422", "500", "502", "503", "504"}
    assert set(paths["/greet/jobs"]["post"]["responses"]) == {"202", "400", "402", "413", "422", "503"}
    assert set(paths["/jobs/{job_id}"]["get"]["responses"]) == {"200", "404"}
    assert set(paths["/jobs/{job_id}/stream"]["get"]["responses"]) == {"200", "404", "409"}
    assert set(paths["/jobs/{job_id}/cancel"]["post"]["responses"]) == {"200", "404"}
    for item in paths.values():
        for operation in item.values():
            for status, response in operation["responses"].items():
                assert response["content"], (status, operation["operationId"])
                if status >= "400":
                    assert response["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/ErrorBody"}
    assert set(paths["/count"]["post"]["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}


def test_openapi_lists_every_route(server):
    spec = server.client.get("/openapi.json").json()
    paths = set(spec["paths"])
    for name in ("greet", "reverse_bytes", "add", "count", "nap", "fail", "Counter", "Counter/scaled"):
        assert f"/{name}" in paths and f"/{name}/jobs" in paths
    assert {"/health", "/jobs/{job_id}", "/jobs/{job_id}/stream", "/jobs/{job_id}/cancel"} <= paths
    schemas = spec["components"]["schemas"]
    assert schemas["GreetInput"]["required"] == ["name"]
    assert schemas["ReverseBytesInput"]["properties"]["data"]["anyOf"][0]["contentEncoding"] == "base64"
    assert server.client.get("/docs").status_code == 200


def test_refuses_a_public_interface_without_a_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "GPUFLEX_TOKEN"}
    result = subprocess.run(
        [sys.executable, "-m", "gpuflex.cli", "serve", str(APP), "--host", "0.0.0.0", "--port", str(_free_port())],
        capture_output=True, text=True, env=env, timeout=60, cwd=ROOT,
    )
    assert result.returncode == 2
    assert "token" in result.stderr


def test_token_required_on_every_route_but_health(tmp_path):
    srv = Server(APP, tmp_path / "server.log", "--token", "s3cret",
                 env={"GPUFLEX_HOME": str(tmp_path / "home")})
    try:
        client = srv.client
        assert client.get("/health").status_code == 200
        assert client.post("/greet", json={"name": "x"}).status_code == 401
        assert client.get("/openapi.json").status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert client.post("/greet", json={"name": "x"}, headers=wrong).status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        response = client.post("/greet", json={"name": "x"}, headers=good)
        assert response.status_code == 200 and response.json() == "hello x"
        spec = client.get("/openapi.json", headers=good).json()
        assert "401" in spec["paths"]["/greet"]["post"]["responses"]
        assert spec["paths"]["/greet"]["post"]["security"] == [{"bearer": []}]
        assert "security" not in spec["paths"]["/health"]["get"]
    finally:
        srv.stop()


VERSION_APP = '''
import time

import gpuflex


@gpuflex.endpoint
def version(delay: float = 0.0) -> str:
    time.sleep(delay)
    return {value!r}
'''

EXTRA = '''

@gpuflex.endpoint
def extra(x: int) -> int:
    return x + 1
'''


def _poll(fn, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _save(path: Path, text: str) -> None:
    """Save as editors do: write a sibling file, then rename it over the original."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_hot_reload(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    app = project / "app.py"
    app.write_text(VERSION_APP.format(value="v1"))
    srv = Server(app, tmp_path / "server.log", reload=True, env={"GPUFLEX_HOME": str(tmp_path / "home")})
    try:
        client = srv.client
        assert client.post("/version").json() == "v1"
        _poll(lambda: "watching" in srv.output(), "the watcher to start")
        running = client.post("/version/jobs", json={"delay": 1.0}).json()["id"]
        _wait_job(client, running, until=lambda job: job["status"] == "RUNNING")

        _save(app, VERSION_APP.format(value="v2") + EXTRA)  # new code, and a new endpoint
        _poll(lambda: client.post("/version").json() == "v2", "the new code to answer")
        assert _wait_job(client, running)["result"] == "v1"  # the call already running finished on the old code
        assert client.post("/extra", json={"x": 1}).json() == 2
        assert "/extra" in client.get("/openapi.json").json()["paths"]
        assert "reloaded in" in srv.output() and "app.py" in srv.output()

        _save(app, VERSION_APP.format(value="v3") + "\ndef broken(:\n")
        _poll(lambda: "SyntaxError" in srv.output(), "the syntax error to be reported")
        assert "reload failed" in srv.output()
        assert client.post("/version").json() == "v2"  # the old code keeps serving

        _save(app, "import gpuflex\n")  # no endpoints at all: most likely a save caught half-way
        _poll(lambda: "no endpoints left" in srv.output(), "the empty app to be refused")
        assert client.post("/version").json() == "v2"

        _save(app, VERSION_APP.format(value="v4"))
        _poll(lambda: client.post("/version").json() == "v4", "recovery after the fix")
    finally:
        srv.stop()


def test_max_cost_refuses_calls_past_the_budget(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text("[tool.gpuflex.backends.local]\nhourly_rate = 36.0\n")
    (project / "app.py").write_text(VERSION_APP.format(value="paid"))
    srv = Server(project / "app.py", tmp_path / "server.log", "--max-cost", "0.01",
                 env={"GPUFLEX_HOME": str(tmp_path / "home")}, cwd=project)
    try:
        first = srv.client.post("/version", json={"delay": 0.6})
        assert first.json() == "paid", (first.text, srv.output())  # under budget: $0.006 at $0.01 a second
        response = srv.client.post("/version", json={"delay": 0.6})  # as much again would pass $0.01
        assert response.status_code == 402, (response.text, srv.output())
        assert response.json()["error"] == "QuotaExceeded"
    finally:
        srv.stop()


def test_the_watcher_reacts_to_sources_and_project_files_only(tmp_path):
    from watchfiles import Change

    from gpuflex.server._reload import WatchFilter

    keep = WatchFilter()
    assert keep(Change.modified, str(tmp_path / "app.py"))
    assert keep(Change.added, str(tmp_path / "pkg" / "models.py"))
    assert keep(Change.modified, str(tmp_path / "gpuflex.toml"))
    assert keep(Change.modified, str(tmp_path / "pyproject.toml"))
    # the server's own output redirected into the project, data the app writes: reacting would loop forever
    for name in ("serve.out", "server.log", "results.json", "out/index.html", "image.png"):
        assert not keep(Change.modified, str(tmp_path / name)), name
    assert not keep(Change.modified, str(tmp_path / ".venv" / "lib" / "site.py"))


CONTRACT_APP = ROOT / "tests" / "apps" / "contract_app.py"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_schemathesis_finds_nothing(tmp_path):
    """Fuzz a server with every kind of endpoint from its own OpenAPI document, every check on (strict
    validation, documented statuses and bodies, auth enforced), with a fixed seed and bounded examples."""
    srv = Server(CONTRACT_APP, tmp_path / "server.log", "--token", "s3cret",
                 env={"GPUFLEX_HOME": str(tmp_path / "home")})
    try:
        result = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", f"{srv.url}/openapi.json", "--checks", "all",
             "--header", "Authorization: Bearer s3cret", "--max-examples", "10", "--seed", "1", "--workers", "1",
             "--generation-database", "none", "--no-color", "--request-timeout", "60"],
            capture_output=True, text=True, timeout=280, cwd=tmp_path, env={**os.environ, "NO_COLOR": "1"},
        )
    finally:
        srv.stop()
    assert result.returncode == 0, result.stdout[-12000:] + result.stderr[-3000:] + srv.output()[-3000:]
    assert "No issues found" in result.stdout
