"""``gpuflex deploy --backend pod`` against a real OpenSSH server on 127.0.0.1 (the "host" is this machine): a
service that outlives the deploying process serves the endpoint as JSON to a plain HTTP client through an SSH
forward; a second deploy changes nothing; drift (the service killed) is reported and fixed; rollback restores the
previous code; teardown leaves no process.

The CLI runs as a subprocess (the deploying process exits before anything is called), with an ``ssh`` on its PATH
that logs each command it is given before running OpenSSH's: what crossed SSH is counted, not assumed.
The tests share one deployed app (environment ``staging``) and run in order."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from gpuflex.testing import wait_until

sys.path.insert(0, str(Path(__file__).parent))
from _pod_helpers import known_hosts_of  # noqa: E402

pytestmark = pytest.mark.timeout(300)

ENV = "staging"
APP = '''
from collections.abc import Iterator

import gpuflex

VERSION = {version}


@gpuflex.endpoint(name="greet", max_workers=1)
def greet(name: str, times: int = 1) -> dict:
    return {{"text": " ".join(["hello " + name] * times), "version": VERSION}}


@gpuflex.endpoint(name="count", max_workers=1)
def count(n: int) -> Iterator[int]:
    yield from range(n)
'''
MUTATING = {"put", "env", "python", "svc-start", "svc-stop"}  # the host agent's actions that change the host
PLAIN_CLIENT = '''
import json, sys
import httpx
base = sys.argv[1]
seen = {}
with httpx.Client(base_url=base, timeout=60) as client:
    for key, path, body in [("greet", "/greet", {"name": "ann", "times": 2}), ("wrong", "/greet", {"name": 3}),
                            ("count", "/count", {"n": 3})]:
        answer = client.post(path, json=body)
        seen[key] = {"status": answer.status_code, "body": answer.json()}
seen["gpuflex_imported"] = any(m == "gpuflex" or m.startswith("gpuflex.") for m in sys.modules)
print(json.dumps(seen))
'''

KILLED_DEPLOY = f'''
import os, signal, sys
from gpuflex.cli import main
sys.argv = ["gpuflex", "deploy", "app.py", "--backend", "pod", "--env", "{ENV}", "--json"]
try:
    main()
except SystemExit:
    pass
sys.stdout.flush()
os.kill(os.getpid(), signal.SIGKILL)
'''


class Project:
    def __init__(self, root: Path, server, remote: Path) -> None:
        self.root, self.server, self.remote = root, server, remote
        self.ssh_log = root.parent / "ssh-commands.log"
        self.bin = root.parent / "bin"
        self.bin.mkdir()
        wrapper = self.bin / "ssh"
        wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {self.ssh_log}\nexec {shutil.which("ssh")} "$@"\n')
        wrapper.chmod(0o755)

    def write(self, version: int) -> None:
        (self.root / "app.py").write_text(APP.format(version=version))

    def cli(self, *args: str, check: bool = True, module: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "250",
               "GPUFLEX_HOME": str(self.root.parent / "home")}
        env.pop("GPUFLEX_BACKEND", None)
        argv = [sys.executable, *(["-m", "gpuflex.cli"] if module else []), *args]
        done = subprocess.run(argv, cwd=self.root, env=env, capture_output=True, text=True, timeout=240)
        if check:
            assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-6000:]
        return done

    def deploy(self) -> dict[str, dict]:
        done = self.cli("deploy", "app.py", "--backend", "pod", "--env", ENV, "--json")
        return {e["name"]: e for e in json.loads(done.stdout)["endpoints"]}

    def commands(self) -> list[str]:
        """The host agent's actions run over SSH since the last look (each ssh command line names one)."""
        lines = self.ssh_log.read_text().splitlines() if self.ssh_log.exists() else []
        self.ssh_log.write_text("")
        return [m[1] for line in lines if (m := re.search(r"gpuflex-pod-agent.*?\)\)\S*\s+([a-z-]+)", line))]

    def service(self, name: str) -> dict:
        return json.loads((self.remote / "services" / ENV / name / "service.json").read_text())

    def host_processes(self) -> list[str]:
        """``ps`` on the host: every process whose command line or directory is under the remote dir."""
        out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
        found = [line for line in out.splitlines() if str(self.remote) in line]
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and os.readlink(entry / "cwd").startswith(str(self.remote)):
                    found.append(f"{entry.name} (cwd {os.readlink(entry / 'cwd')})")
            except OSError:
                continue
        return found


@pytest.fixture(scope="module")
def project(tmp_path_factory, sshd_pair):
    server = sshd_pair[0]
    base = tmp_path_factory.mktemp("pod-deploy")
    remote = base / "remote"
    root = base / "project"
    root.mkdir()
    (root / "pyproject.toml").write_text(textwrap.dedent(f"""
        [tool.gpuflex.backends.pod]
        hosts = ["{server.host}"]
        identity_file = "{server.identity_file}"
        known_hosts = "{known_hosts_of([server], base)}"
        remote_dir = "{remote}"
        python = "{sys.executable}"
    """))
    project = Project(root, server, remote)
    project.write(1)
    yield project
    for directory in (remote / "services" / ENV).glob("*"):  # a failed test must not leave services running
        try:
            pid = json.loads((directory / "service.json").read_text())["pid"]
            os.killpg(pid, signal.SIGKILL)
        except (OSError, ValueError, KeyError):
            pass


@pytest.fixture(scope="module")
def deployed(project):
    project.commands()
    return project.deploy()


def _forward(project, port: int) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        local = s.getsockname()[1]
    server = project.server
    ssh = subprocess.Popen([shutil.which("ssh"), "-N", "-L", f"{local}:127.0.0.1:{port}", "-p", str(server.port),
                            "-i", server.identity_file, "-o", f"UserKnownHostsFile={server.known_hosts}",
                            "-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes", f"{server.user}@127.0.0.1"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ready() -> bool:
        try:
            socket.create_connection(("127.0.0.1", local), timeout=1).close()
            return True
        except OSError:
            return False

    wait_until(ready, "the SSH forward to listen", 30)
    return ssh, local


def _plain_call(project, port: int) -> dict:
    ssh, local = _forward(project, port)
    try:
        done = subprocess.run([sys.executable, "-c", PLAIN_CLIENT, f"http://127.0.0.1:{local}"],
                              capture_output=True, text=True, timeout=120, check=True)
    finally:
        ssh.terminate()
        ssh.wait()
    return json.loads(done.stdout)


def test_deploy_leaves_a_service_that_outlives_the_deploying_process(project, deployed):
    greet = deployed["greet"]
    assert greet["action"] == "create" and greet["version"] == 1 and greet["backend"] == "pod"
    [access] = greet["access"]
    port = access["port"]
    assert access["url"] == f"http://127.0.0.1:{port}/greet" and access["token_file"] is None
    assert access["forward"].startswith(f"ssh -N -L {port}:127.0.0.1:{port} -p {project.server.port} ")
    assert project.commands().count("svc-start") == 2
    service = project.service("greet")
    assert os.getsid(service["pid"]) == service["pid"]  # its own session: not the SSH session's, not ours
    assert (project.remote / "services" / ENV / "greet" / "versions.json").stat().st_mode & 0o777 == 0o600
    seen = _plain_call(project, port)
    assert not seen["gpuflex_imported"]
    assert seen["greet"] == {"status": 200, "body": {"text": "hello ann hello ann", "version": 1}}
    assert seen["wrong"]["status"] == 422
    assert seen["wrong"]["body"]["error"] == "ValidationError" and "name" in seen["wrong"]["body"]["message"]
    counted = _plain_call(project, deployed["count"]["access"][0]["port"])["count"]
    assert counted == {"status": 200, "body": [0, 1, 2]}
    document = json.loads(next(project.root.glob(f"app.{ENV}.openapi*")).read_text())
    assert document["paths"]["/greet"]["servers"][0]["url"] == f"http://127.0.0.1:{port}"
    assert set(document["paths"]) == {"/greet", "/count"}


def test_gpuflex_call_and_a_clear_error(project, deployed):
    done = project.cli("call", "greet", "--backend", "pod", "--env", ENV, "--json", '{"name": "bo"}')
    assert json.loads(done.stdout) == {"text": "hello bo", "version": 1}
    failed = project.cli("call", "greet", "--backend", "pod", "--env", ENV, "--json", '{"times": "x"}', check=False)
    assert failed.returncode != 0
    assert "ValidationError" in failed.stderr and "name" in failed.stderr and "times" in failed.stderr


def test_a_second_deploy_makes_no_mutating_call(project, deployed):
    before = project.service("greet")["pid"]
    project.commands()
    again = project.deploy()
    assert {e["action"] for e in again.values()} == {"unchanged"}
    sent = project.commands()
    assert "svc-state" in sent and not MUTATING & set(sent), sent
    assert project.service("greet")["pid"] == before


def test_drift_is_reported_by_plan_and_fixed_by_deploy(project, deployed):
    os.killpg(project.service("greet")["pid"], signal.SIGKILL)
    plan = project.cli("plan", "app.py", "--backend", "pod", "--env", ENV)
    assert "drift" in plan.stdout and "not running" in plan.stdout, plan.stdout
    # the deploy that fixes it ends with SIGKILL (no clean-up of its SSH connection): the service stays up
    killed = project.cli("-c", KILLED_DEPLOY, check=False, module=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    fixed = {e["name"]: e for e in json.loads(killed.stdout)["endpoints"]}
    assert fixed["greet"]["action"] == "change" and fixed["greet"]["version"] == 1  # the same version, running
    assert fixed["count"]["action"] == "unchanged"
    assert _plain_call(project, fixed["greet"]["access"][0]["port"])["greet"]["status"] == 200
    assert "drift" not in project.cli("plan", "app.py", "--backend", "pod", "--env", ENV).stdout


def test_new_code_is_a_version_and_rollback_restores_the_previous(project, deployed):
    project.write(2)
    assert project.deploy()["greet"]["version"] == 2
    call = ("call", "greet", "--backend", "pod", "--env", ENV, "--json", '{"name": "cy"}')
    assert json.loads(project.cli(*call).stdout)["version"] == 2
    versions = json.loads(project.cli("versions", "greet", "--backend", "pod", "--env", ENV, "--json").stdout)
    assert [v["version"] for v in versions] == [1, 2] and versions[1]["current"]
    assert versions[0]["bundle"] != versions[1]["bundle"]
    project.cli("rollback", "greet", "--backend", "pod", "--env", ENV)
    assert json.loads(project.cli(*call).stdout)["version"] == 1
    versions = json.loads(project.cli("versions", "greet", "--backend", "pod", "--env", ENV, "--json").stdout)
    assert versions[-1]["note"] == "rollback to version 1" and versions[-1]["bundle"] == versions[0]["bundle"]


def test_teardown_leaves_no_process_on_the_host(project, deployed):
    assert project.host_processes()
    project.cli("teardown", "app.py", "--backend", "pod", "--env", ENV)
    wait_until(lambda: not project.host_processes(), "every process of the deployed services to end", 30)
    assert not (project.remote / "services" / ENV / "greet").exists()


PUBLIC_APP = '''
import gpuflex


@gpuflex.endpoint(name="echo")
def echo(text: str) -> str:
    return text
'''


def test_a_service_on_another_address_requires_its_token(tmp_path, sshd_pair):
    """Bound to anything but loopback, the service takes only calls with the token generated on the host (mode
    0600), which appears in no output and no log."""
    server = sshd_pair[0]
    remote, root = tmp_path / "remote", tmp_path / "project"
    root.mkdir()
    (root / "pyproject.toml").write_text(textwrap.dedent(f"""
        [tool.gpuflex.backends.pod]
        hosts = ["{server.host}"]
        identity_file = "{server.identity_file}"
        known_hosts = "{known_hosts_of([server], tmp_path)}"
        remote_dir = "{remote}"
        python = "{sys.executable}"
        deploy_bind = "0.0.0.0"
    """))
    (root / "app.py").write_text(PUBLIC_APP)
    project = Project(root, server, remote)
    done = project.cli("deploy", "app.py", "--backend", "pod", "--env", "public", "--json")
    try:
        [access] = json.loads(done.stdout)["endpoints"][0]["access"]
        assert access["bind"] == "0.0.0.0" and access["forward"] is None
        token_file = Path(access["token_file"])
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        called = project.cli("call", "echo", "--backend", "pod", "--env", "public", "--json", '{"text": "hi"}')
        assert json.loads(called.stdout) == "hi"
        log = (remote / "services" / "public" / "echo" / "service.log").read_text()
        for text in (done.stdout, done.stderr, called.stdout, called.stderr, log):
            assert token not in text
        script = textwrap.dedent('''
            import sys, httpx
            url, token = sys.argv[1], sys.argv[2]
            print(httpx.post(url, json={"text": "x"}).status_code,
                  httpx.post(url, json={"text": "x"}, headers={"Authorization": "Bearer " + token}).status_code)
        ''')
        url = f"http://127.0.0.1:{access['port']}/echo"
        answers = subprocess.run([sys.executable, "-c", script, url, token], capture_output=True, text=True,
                                 check=True, timeout=60).stdout.split()
        assert answers == ["401", "200"]
    finally:
        project.cli("teardown", "app.py", "--backend", "pod", "--env", "public")
    assert not project.host_processes()


def test_plan_reports_a_host_that_holds_another_version_as_drift():
    """Two hosts, one a version behind (a deploy that reached only one): the plan restarts only that one."""
    from gpuflex_pod import PodBackend, PodConfig

    from gpuflex.backend import PlanAction

    backend = PodBackend(PodConfig(hosts=["a@10.0.0.1", "b@10.0.0.2"]))  # no I/O until a deploy
    record = {"bundle": "1" * 64, "runtime": "r", "service": "s", "secrets_digest": None,
              "settings": {"max_workers": 1, "bind": "127.0.0.1", "port": None}, "created_at": 1.0, "number": 1}
    newer = {**record, "bundle": "2" * 64, "number": 2, "created_at": 2.0}
    states = {"a@10.0.0.1": {"greet": {"versions": {"app": "app", "versions": [record, newer]}, "running": True,
                                       "bundle": newer["bundle"], "port": 4000}},
              "b@10.0.0.2": {"greet": {"versions": {"app": "app", "versions": [record]}, "running": True,
                                       "bundle": record["bundle"], "port": 4000}}}
    releases = backend.releases
    reference = releases._reference(states, "greet")
    assert reference is states["a@10.0.0.1"]["greet"]
    plan, restart = releases._compare("greet", backend.hosts, states, reference, dict(newer))
    assert plan.action is PlanAction.CHANGE and restart == ["b@10.0.0.2"]
    [change] = plan.changes
    assert change.drift and change.field == "host b@10.0.0.2: version"
    assert change.deployed.startswith("1 (code 111111111111") and change.wanted.startswith("2 (code 222222222222")
    plan, restart = releases._compare("greet", backend.hosts, states, reference, {**newer, "bundle": "3" * 64})
    assert restart == ["a@10.0.0.1", "b@10.0.0.2"] and plan.changes[0].field == "code" and not plan.changes[0].drift
    anyio.run(backend.aclose)
