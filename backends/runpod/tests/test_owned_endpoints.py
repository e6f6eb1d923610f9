"""Endpoints we own (issue 16 §4), with two real processes against the emulator: a dev server serving an endpoint
on the serverless backend, and a script using the same endpoint (same name prefix) that exits meanwhile. The
script must not delete what the server still uses; an endpoint that does vanish is created again by the next call;
the server closes cleanly, and removes the endpoint as the last process using it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import anyio
import httpx

APP = textwrap.dedent('''
    import gpuflex


    @gpuflex.endpoint(name="rp_owned", max_workers=1)
    def owned(x: int) -> int:
        return x + 1


    if __name__ == "__main__":
        print("script got", owned(1), flush=True)
''')
REMOTE_NAME = "gpuflex-owned-rp_owned"
TEST_VOLUME = "emuvol0001"  # as in conftest: workers build their environment on it once per session
LIST = "query { myself { endpoints { id name } } }"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _remote_ids(admin: httpx.Client) -> list[str]:
    endpoints = admin.post("/graphql", json={"query": LIST}).json()["data"]["myself"]["endpoints"]
    return [e["id"] for e in endpoints if e["name"] == REMOTE_NAME]


def test_a_script_never_deletes_what_a_dev_server_uses_and_a_vanished_endpoint_comes_back(
        tmp_path, make_backend, emulator_url, emulator_key):
    (tmp_path / "pyproject.toml").write_text(
        "[project]\nname = 'owned'\n\n[tool.gpuflex.backends.serverless]\n"
        f"name_prefix = 'gpuflex-owned-'\nnetwork_volume_id = '{TEST_VOLUME}'\n")
    (tmp_path / "owned_app.py").write_text(APP)
    env = {**os.environ, "RUNPOD_API_BASE_URL": emulator_url, "RUNPOD_API_KEY": emulator_key,
           "GPUFLEX_HOME": str(tmp_path / "home"), "GPUFLEX_BACKEND": "serverless", "PYTHONUNBUFFERED": "1"}
    env.pop("RUNPOD_ENDPOINT_BASE_URL", None)
    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "gpuflex.cli", "serve", "owned_app.py", "--backend",
                               "serverless", "--port", str(port), "--no-reload"],
                              cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    admin = httpx.Client(base_url=emulator_url, headers={"Authorization": f"Bearer {emulator_key}"}, timeout=60)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
    with admin, client:
        _serve_and_share(tmp_path, server, log, admin, client, env, make_backend)
    output = (tmp_path / "server.log").read_text()
    assert server.returncode in (0, 130), output  # 130: uvicorn's exit after Ctrl-C
    assert "Traceback" not in output and "did not close cleanly" not in output, output
    with httpx.Client(base_url=emulator_url, headers={"Authorization": f"Bearer {emulator_key}"}) as admin:
        assert _remote_ids(admin) == [], "the server, the last process using the endpoint, removes it on close"


def _serve_and_share(tmp_path, server, log, admin, client, env, make_backend) -> None:
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if client.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the dev server did not start"
            time.sleep(0.1)
        assert client.post("/rp_owned", json={"x": 1}).json() == 2
        (first,) = _remote_ids(admin)

        script = subprocess.run([sys.executable, "owned_app.py"], cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=120)
        assert "script got 2" in script.stdout, script.stdout + script.stderr
        assert _remote_ids(admin) == [first], "the script deleted (or replaced) the endpoint the server uses"
        answer = client.post("/rp_owned", json={"x": 2})
        assert answer.status_code == 200 and answer.json() == 3, answer.text

        backend = make_backend(name_prefix="gpuflex-owned-")  # it vanishes for real, as if deleted in the console

        async def delete_it() -> None:
            try:
                remote = await backend.control.find(REMOTE_NAME)
                assert remote is not None
                await backend.control.delete(remote)
            finally:
                await backend.aclose()

        anyio.run(delete_it)
        answer = client.post("/rp_owned", json={"x": 3})
        assert answer.status_code == 200 and answer.json() == 4, answer.text
        (second,) = _remote_ids(admin)
        assert second != first
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
