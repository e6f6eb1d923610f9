"""What real GPU hosts do that a clean sshd does not, each against a real OpenSSH server changed to act like them:
login shells that print, sessions that never run the command, cloud GPU names and half-working nvidia-smi, stock
Python without venv or of another version, bastions and ssh configs, client platforms, changed host keys."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from gpuflex_pod import PodBackend, PodConfig
from gpuflex_pod.sshd import LoopbackSshd

import gpuflex
from gpuflex import errors
from gpuflex.client._session import get_session
from gpuflex.testing import backend_in_use

sys.path.insert(0, str(Path(__file__).parent))
import _pod_app as app  # noqa: E402
from _pod_helpers import (  # noqa: E402
    host_path,
    known_hosts_of,
    network_env,
    pod_config,
    python_downloads,
    remote_workers,
    stage_debian_python,
    wait_until,
)

WAIT = 60.0


@pytest.fixture
def server_with():
    """``server_with(*sshd_config lines, **LoopbackSshd options)``: a started server of this test's own."""
    servers = []

    def make(*lines, **options):
        server = LoopbackSshd(extra_config=lines, **options)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.cleanup()


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"


# -- 1. login shells that print ---------------------------------------------------------------------------------


def test_a_login_shell_that_prints_breaks_neither_pushes_nor_workers(server_with, remote_dir):
    """Every session prints first, as a ~/.bashrc with a banner does (Debian's bash reads it for `ssh host cmd`;
    RunPod and vast images append banners to root's): here sshd's ForceCommand prints, then runs the command."""
    banner = "echo 'Welcome to your pod! GPU: 8x H100'; printf '\\0\\1\\2 binary noise\\n'"
    server = server_with(f'ForceCommand {banner}; eval "$SSH_ORIGINAL_COMMAND"')
    probe = subprocess.run(["ssh", "-i", server.identity_file, "-o", f"UserKnownHostsFile={server.known_hosts}",
                            "-p", str(server.port), "-o", "BatchMode=yes", f"{server.user}@127.0.0.1", "echo hi"],
                           capture_output=True, check=True)
    assert probe.stdout.startswith(b"Welcome to your pod") and probe.stdout.endswith(b"hi\n"), probe.stdout
    with backend_in_use(lambda: PodBackend(pod_config([server], remote_dir))):
        assert app.where()["cwd"].startswith(str(remote_dir))
        assert len(list(app.spread.map([0.3] * 4))) == 4  # more workers over the same noisy sessions


def test_a_worker_whose_command_never_starts_fails_with_a_reason(server_with, remote_dir, tmp_path):
    """A host where worker sessions hang before running anything: the start gives up after start_timeout."""
    hung = tmp_path / "hung"
    server = server_with(f"ForceCommand case \"$SSH_ORIGINAL_COMMAND\" in *'-m gpuflex.runtime'*) echo $$ >> {hung}; "
                         "exec sleep 600;; *) eval \"$SSH_ORIGINAL_COMMAND\";; esac")
    config = pod_config([server], remote_dir, start_timeout=2)
    try:
        with backend_in_use(lambda: PodBackend(config)):
            job = app.where.spawn()
            with pytest.raises(errors.JobFailed, match="never began its output.*did not start within 2 s"):
                job.result(timeout=WAIT)
    finally:  # the hung sessions outlive their connection, as on a real host: end them
        for pid in _lines(hung):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# -- 2. hosts that log in but never run the command ---------------------------------------------------------------


def test_a_host_that_runs_no_command_says_what_to_do(server_with, remote_dir):
    """vast.ai's automatic tmux and shell-only proxies take over the session: `no sessions` and nothing ran."""
    server = server_with("ForceCommand echo 'no sessions' >&2; exit 1")
    with backend_in_use(lambda: PodBackend(pod_config([server], remote_dir))):
        with pytest.raises(errors.BackendUnavailable, match="did not run gpuflex's command") as caught:
            app.where()
    assert "no sessions" in str(caught.value) and "no_auto_tmux" in str(caught.value)


@pytest.mark.parametrize("how", ["string", "alias"])
def test_runpod_basic_ssh_proxy_is_refused_naming_what_works(remote_dir, tmp_path, how):
    config_file = tmp_path / "ssh_config"
    config_file.write_text("Host my-pod\n  HostName ssh.runpod.io\n  User k8s2x1c0-64410b2e\n")
    host = "k8s2x1c0-64410b2e@ssh.runpod.io" if how == "string" else "my-pod"
    config = PodConfig(hosts=[host], ssh_config=str(config_file), remote_dir=str(remote_dir),
                       reconnect_attempts=1, connect_timeout=2)
    with backend_in_use(lambda: PodBackend(config)):
        with pytest.raises(errors.ConfigError, match="SSH over exposed TCP"):
            app.where()


# -- 3. GPU names and discovery ------------------------------------------------------------------------------------


def fake_smi(tmp_path, output, code=0):
    """A stand-in for nvidia-smi on a GPU host (this machine has none): ``output`` is what the real one printed there
    for ``--query-gpu=index,name,memory.total,uuid``; like the real one, it prints the fields a query asks for, in
    its order (lines that are not GPU rows, such as errors, come as they are)."""
    bin_dir = tmp_path / "smi-bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "rows").write_text(output + "\n")
    smi = bin_dir / "nvidia-smi"
    smi.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys
        fields = ["index", "name", "memory.total", "uuid"]
        query = next(a for a in sys.argv if a.startswith("--query-gpu=")).split("=", 1)[1].split(",")
        for line in open({str(bin_dir / "rows")!r}).read().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == len(fields) and parts[0].isdigit():
                line = ", ".join(parts[fields.index(q)] for q in query)
            print(line)
        sys.exit({code})
        """))
    smi.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin"}


def test_a100_80gb_hosts_serve_a100_80gb_endpoints(sshd, remote_dir, tmp_path):
    env = fake_smi(tmp_path, "0, NVIDIA A100-SXM4-80GB, 81920, GPU-6e1c2a36-7d4c-4a3c-9a59-1f0e6b0d1c11")
    with backend_in_use(lambda: PodBackend(pod_config([sshd], remote_dir, host_env=env))):
        assert app.on_a100_80() == ("0", "PCI_BUS_ID"), "CUDA numbers GPUs in nvidia-smi's (PCI bus) order"


def test_a_model_the_catalog_lacks_serves_no_named_model(sshd, remote_dir, tmp_path):
    env = fake_smi(tmp_path, "0, NVIDIA GH200 480GB, 97871, GPU-c0")
    with backend_in_use(lambda: PodBackend(pod_config([sshd], remote_dir, host_env=env))):
        with pytest.raises(errors.BackendUnavailable, match="GH200 480GB .not in gpuflex's catalog"):
            app.on_gpu(0.0)  # asks for an H100


def test_a_mixed_host_gives_each_endpoint_only_its_model(sshd, remote_dir, tmp_path):
    env = fake_smi(tmp_path, "0, NVIDIA GeForce RTX 3090, 24576, GPU-aa\n1, NVIDIA GeForce RTX 4090, 24564, GPU-bb")
    with backend_in_use(lambda: PodBackend(pod_config([sshd], remote_dir, host_env=env))):
        assert {app.on_4090() for _ in range(3)} == {"1"}
        assert app.environ()["env"]["CUDA_VISIBLE_DEVICES"] == "", "a CPU endpoint sees no GPU"


def test_one_failed_gpu_or_an_unknown_field_hides_no_other(sshd, remote_dir, tmp_path):
    """nvidia-smi exits 15 after a GPU it cannot read; DGX Spark's GB10 reports memory as [N/A]."""
    env = fake_smi(tmp_path, "0, NVIDIA H100 80GB HBM3, 81559, GPU-a\nUnable to determine the device handle for "
                   "gpu 0000:1B:00.0: Unknown Error\n2, NVIDIA H100 80GB HBM3, [N/A], GPU-c", code=15)
    with backend_in_use(lambda: PodBackend(pod_config([sshd], remote_dir, host_env=env))) as backend:
        devices = {app.on_gpu(0.0) for _ in range(2)}
        host = backend.hosts[0]
        assert sorted(host.gpu_holders) == ["0", "2"] and devices <= {"0", "2"}
        assert "Unknown Error" in host.facts["gpu_problem"] and "code 15" in host.facts["gpu_problem"]


def test_no_usable_gpu_warns_with_the_reason(sshd, remote_dir, tmp_path):
    env = fake_smi(tmp_path, "Failed to initialize NVML: Driver/library version mismatch", code=18)
    with backend_in_use(lambda: PodBackend(pod_config([sshd], remote_dir, host_env=env))):
        with pytest.warns(errors.GpuflexWarning, match="Driver/library version mismatch"):
            app.on_gpu(0.0)


# -- 4 and issue 11 section 4: Python on the host -------------------------------------------------------------------


@pytest.mark.slow
def test_stock_debian_python_without_venv_still_gets_an_environment(sshd, remote_dir, tmp_path):
    """The host's only Python has no ensurepip (no python3-venv) and no pip: uv comes as a wheel from the index."""
    python = stage_debian_python(tmp_path / "stock", without=("ensurepip",))
    if python is None:
        pytest.skip("needs Debian's /usr/bin/python3.11 to stage a stock host Python")
    stock = str(python / "bin" / "python3.11")
    venv = subprocess.run([stock, "-m", "venv", str(tmp_path / "v")], capture_output=True, text=True)
    assert venv.returncode != 0, "the stand-in must lack what python3-venv provides"
    env = {**network_env(), "PATH": host_path(tmp_path, python=stock)}
    config = pod_config([sshd], remote_dir, host_env=env, python=None)
    with backend_in_use(lambda: PodBackend(config)):
        out = app.environ()
    assert out["executable"].startswith(str(remote_dir / "envs")), out
    assert (remote_dir / "tools" / "uv" / "bin" / "uv").is_file(), "uv was fetched under remote_dir"


@pytest.fixture(scope="session")
def python_mirror():
    directory = tempfile.mkdtemp(prefix="gpuflex-python-mirror-")
    made = python_downloads(directory)
    yield made
    subprocess.run(["rm", "-rf", directory], check=False)


@pytest.mark.slow
def test_a_host_with_another_python_gets_the_callers_version_installed_once(sshd, remote_dir, tmp_path,
                                                                            python_mirror):
    """The host's only Python is 3.10; the caller runs 3.11: gpuflex installs 3.11 with uv under remote_dir.

    uv downloads Pythons from GitHub, which this machine cannot reach: the host is given uv's documented
    UV_PYTHON_DOWNLOADS_JSON_URL pointing at a local archive of this machine's CPython 3.11 (see
    ``python_downloads``), the way an air-gapped host is set up."""
    other = Path.home() / ".pyenv" / "versions" / "3.10.13" / "bin" / "python3.10"
    if python_mirror is None or not other.exists() or sys.version_info[:2] != (3, 11):
        pytest.skip("needs a Python 3.10 (pyenv), Debian's python3.11 and a 3.11 caller")
    listing, version = python_mirror
    uv = Path(sys.executable).with_name("uv")
    env = {**network_env(), "PATH": host_path(tmp_path, python=str(other), tools=("env", "cat", "uname")),
           "UV_PYTHON_DOWNLOADS_JSON_URL": listing}
    (Path(env["PATH"]) / "uv").symlink_to(uv)
    config = pod_config([sshd], remote_dir, host_env=env, python=None)
    with backend_in_use(lambda: PodBackend(config)) as backend:
        out = app.environ()
        assert backend.hosts[0].facts["python"].startswith("3.10"), "the host's own Python is 3.10"
    assert out["python"] == version and out["executable"].startswith(str(remote_dir / "envs"))
    installed = sorted((remote_dir / "pythons").iterdir())
    assert installed, "the Python went under remote_dir/pythons"
    gpuflex.shutdown()
    with backend_in_use(lambda: PodBackend(config)) as backend:
        assert app.environ()["python"] == version
        assert backend.hosts[0].facts["match"]["executable"].startswith(str(remote_dir / "pythons")), \
            "the second session finds the installed Python without uv"
    assert sorted((remote_dir / "pythons").iterdir()) == installed


def test_an_explicit_python_of_another_version_is_refused_naming_both(sshd, remote_dir, tmp_path):
    other = Path.home() / ".pyenv" / "versions" / "3.10.13" / "bin" / "python3.10"
    if not other.exists() or sys.version_info[:2] == (3, 10):
        pytest.skip("needs a Python 3.10 (pyenv) and a caller of another version")
    with backend_in_use(lambda: PodBackend(pod_config([sshd], remote_dir, python=str(other)))):
        with pytest.raises(errors.VersionMismatch, match="3.10"):
            app.where()


# -- 5. bastions and ssh configs --------------------------------------------------------------------------------


def jump_config(tmp_path, jump, target, known):
    path = tmp_path / "ssh_config"
    path.write_text(textwrap.dedent(f"""\
        Host target-box
          HostName 127.0.0.1
          Port {target.port}
          User {target.user}
          ProxyJump {jump.user}@127.0.0.1:{jump.port}
        """))
    return str(path)


def test_a_host_behind_a_jump_host_works_with_the_pools_key_and_known_hosts(server_with, remote_dir, tmp_path):
    jump, target = server_with(), server_with()
    jump.authorized_keys.write_text(Path(target.identity_file + ".pub").read_text())  # one key for both hops
    known = known_hosts_of([jump, target], tmp_path)
    config = PodConfig(hosts=["target-box"], ssh_config=jump_config(tmp_path, jump, target, known),
                       identity_file=target.identity_file, known_hosts=known, remote_dir=str(remote_dir),
                       python=sys.executable)
    with backend_in_use(lambda: PodBackend(config)):
        assert app.where()["cwd"].startswith(str(remote_dir))
    assert "Accepted publickey" in jump.log, "the connection went through the jump host"


def test_an_unknown_jump_host_key_blames_the_jump_host(server_with, remote_dir, tmp_path):
    jump, target = server_with(), server_with()
    jump.authorized_keys.write_text(Path(target.identity_file + ".pub").read_text())
    known = known_hosts_of([target], tmp_path)  # the target's key only
    config = PodConfig(hosts=["target-box"], ssh_config=jump_config(tmp_path, jump, target, known),
                       identity_file=target.identity_file, known_hosts=known, remote_dir=str(remote_dir),
                       python=sys.executable, reconnect_attempts=1)
    with backend_in_use(lambda: PodBackend(config)):
        with pytest.raises(errors.AuthenticationError, match="jump host"):
            app.where()


def test_a_remote_command_in_the_ssh_config_is_overridden(sshd, remote_dir, tmp_path):
    """A common recipe for interactive use: `RemoteCommand tmux new -A -s main` with `RequestTTY yes`."""
    config_file = tmp_path / "ssh_config"
    config_file.write_text("Host *\n  RemoteCommand tmux new -A -s main\n  RequestTTY yes\n  ForwardAgent yes\n")
    agent = subprocess.run(["ssh-agent", "-s", "-a", str(tmp_path / "agent.sock")], capture_output=True, text=True,
                           check=True)
    agent_pid = int(agent.stdout.split("SSH_AGENT_PID=")[1].split(";")[0])
    try:
        os.environ["SSH_AUTH_SOCK"] = str(tmp_path / "agent.sock")
        with backend_in_use(lambda: PodBackend(pod_config([sshd], remote_dir, ssh_config=str(config_file)))):
            out = app.environ()
        assert out["env"]["SSH_AUTH_SOCK"] is None, "this machine's ssh agent must not reach the host"
    finally:
        os.environ.pop("SSH_AUTH_SOCK", None)
        os.kill(agent_pid, signal.SIGTERM)


def test_a_broken_ssh_config_is_a_config_error(sshd, remote_dir, tmp_path):
    config_file = tmp_path / "ssh_config"
    config_file.write_text("Host *\n  Frobnicate yes\n")
    with backend_in_use(lambda: PodBackend(pod_config([sshd], remote_dir, ssh_config=str(config_file)))):
        with pytest.raises(errors.ConfigError, match="ssh rejects its configuration.*line 2"):
            app.where()


# -- 6. client platforms ----------------------------------------------------------------------------------------


def test_a_long_tmpdir_does_not_overflow_control_socket_paths(sshd, remote_dir, tmp_path, monkeypatch):
    long_tmp = tmp_path / ("t" * 60) / ("u" * 20)
    long_tmp.mkdir(parents=True)
    monkeypatch.setattr(tempfile, "tempdir", str(long_tmp))  # macOS TMPDIRs are long; nix shells longer
    with backend_in_use(lambda: PodBackend(pod_config([sshd], remote_dir))):
        assert app.where()["pid"] > 0


def test_windows_is_refused_at_once_saying_what_to_use(sshd, remote_dir, monkeypatch):
    import gpuflex_pod._backend
    import gpuflex_pod._ssh_args

    for module in (gpuflex_pod._backend, gpuflex_pod._ssh_args):
        monkeypatch.setattr(module, "client_platform", lambda: "win32")
    with backend_in_use(lambda: PodBackend(pod_config([sshd], remote_dir))):  # constructing still works
        with pytest.raises(errors.ConfigError, match="WSL"):
            app.where()


def test_a_killed_client_without_pdeathsig_leaves_nothing_behind(sshd, remote_dir, tmp_path):
    """macOS has no PR_SET_PDEATHSIG: the client runs as it would there, then dies by SIGKILL mid-call."""
    marker = tmp_path / "attempts"
    config = pod_config([sshd], remote_dir)
    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import gpuflex, gpuflex_pod._ssh
        gpuflex_pod._ssh._prctl = None  # as on macOS
        import _pod_app as app
        hosts = [{{"host": {sshd.host!r}, "identity_file": {sshd.identity_file!r}}}]
        with gpuflex.use("pod", hosts=hosts, known_hosts={config.known_hosts!r}, remote_dir={str(remote_dir)!r},
                         python={sys.executable!r}):
            app.slow(120.0, {str(marker)!r})
    """))
    client = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: marker.exists() and marker.read_text().strip(), "the call to start on the host")
        worker = int(marker.read_text().split()[0])
        masters = [pid for pid in _pids_with(b"-M", f"{sshd.port}".encode())]
        assert masters, "a master connection is up"
        client.kill()
        client.wait(timeout=30)
    finally:
        client.kill()
    wait_until(lambda: not [p for p in masters if pid_alive(p)], "the master connection to end", 15)
    wait_until(lambda: not pid_alive(worker), "the remote worker to be gone", 15)
    assert not remote_workers(remote_dir)


def _pids_with(*needles):
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if all(n in cmdline.split(b"\0") or n in cmdline for n in needles) and b"-M\0-N" in cmdline:
                out.append(int(entry.name))
    return out


# -- would misbehave --------------------------------------------------------------------------------------------


def test_a_changed_host_key_says_it_changed(sshd, remote_dir, tmp_path):
    other = LoopbackSshd(sshd.port)  # another machine on the same address: its own host key
    try:
        stale = tmp_path / "known_hosts"
        stale.write_text(Path(other.known_hosts).read_text())
        config = PodConfig(hosts=[sshd.host], identity_file=sshd.identity_file, known_hosts=str(stale),
                           remote_dir=str(remote_dir), python=sys.executable, accept_new_host_keys=True)
        with backend_in_use(lambda: PodBackend(config)):
            with pytest.raises(errors.AuthenticationError, match="changed") as caught:
                app.where()
        assert "ssh-keygen" in str(caught.value) and "ssh-keyscan" not in str(caught.value)
    finally:
        other.cleanup()


def test_host_env_values_stay_off_every_command_line(sshd, remote_dir, tmp_path):
    secret = "hf_Pod_Test_Token_4c1d"
    config = pod_config([sshd], remote_dir, host_env={"POD_HOST_VAR": secret})
    with backend_in_use(lambda: PodBackend(config)):
        job = app.slow.spawn(3.0, str(tmp_path / "marker"))
        wait_until(lambda: (tmp_path / "marker").exists(), "the call to start")
        seen = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
                if secret.encode() in _cmdline(pid)]
        assert app.environ()["env"]["POD_HOST_VAR"] == secret
        job.result(timeout=WAIT)
    assert not seen, "host_env values appeared in some process's argv"


def _cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_a_container_share_of_cpus_bounds_workers_per_host(server_with, remote_dir):
    server = server_with(launcher=["taskset", "-c", "0"])  # the host's sessions may use one CPU
    with backend_in_use(lambda: PodBackend(pod_config([server], remote_dir))) as backend:
        app.where()
        assert backend.hosts[0].facts["cpus"] == 1
        assert backend.hosts[0].cpu_slots == 1


def test_cgroup_cpu_quota_caps_usable_cpus(tmp_path):
    from gpuflex_pod import _remote_agent

    affinity = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert _remote_agent.usable_cpus(str(tmp_path)) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _remote_agent.usable_cpus(str(tmp_path)) == affinity


def test_a_login_refused_at_first_is_tried_again(server_with, remote_dir):
    """A fresh instance may answer before its start-up script installed the keys (vast says: retry)."""
    server = server_with()
    key = server.authorized_keys.read_text()
    server.authorized_keys.write_text("")

    def install_after_first_refusal():
        wait_until(lambda: "authenticating user" in server.log or "Failed publickey" in server.log,
                   "the first refused login")
        server.authorized_keys.write_text(key)

    import threading

    thread = threading.Thread(target=install_after_first_refusal, daemon=True)
    thread.start()
    with backend_in_use(lambda: PodBackend(pod_config([server], remote_dir))):
        assert app.where()["pid"] > 0
    thread.join(timeout=5)


def test_executable_files_stay_executable_on_the_host(sshd, remote_dir):
    assert os.access(Path(app.__file__).with_name("_pod_tool.sh"), os.X_OK)
    with backend_in_use(lambda: PodBackend(pod_config([sshd], remote_dir))):
        assert app.run_tool() == "tool ran"


def test_remote_dir_must_be_private(sshd, remote_dir):
    os.chmod(remote_dir, 0o777)
    with backend_in_use(lambda: PodBackend(pod_config([sshd], remote_dir))):
        with pytest.raises(errors.BackendUnavailable, match="not private"):
            app.where()


@pytest.mark.slow
def test_more_workers_than_sshds_default_max_sessions(server_with, remote_dir):
    """Stock sshd allows 10 sessions per connection (every test server keeps that default); twelve workers at once
    take a second connection of gpuflex's own, not ssh's silent fallback."""
    server = server_with()
    with backend_in_use(lambda: PodBackend(pod_config([server], remote_dir, workers_per_host=12))) as backend:
        jobs = [app.many.spawn(3.0) for _ in range(12)]
        assert len({job.result(timeout=WAIT) for job in jobs}) == 12
        assert len(get_session().run(backend.workers())) == 12
        assert [len(m.workers) for m in backend.hosts[0].ssh.masters] == [9, 3]
    assert server.log.count("Accepted publickey") == 2, "two connections, each with its master's keepalive"


def test_a_silent_network_loss_kills_the_stranded_worker_before_its_replacement_starts(sshd, remote_dir, tmp_path):
    """The network goes quiet (a NAT mapping lost): the old session stays open on the host, its worker with it."""
    from _relay import FreezingRelay

    with FreezingRelay(sshd.port) as relay:
        known = tmp_path / "known_hosts_relay"
        key = Path(sshd.known_hosts).read_text().split(None, 1)[1]
        known.write_text(f"[127.0.0.1]:{relay.port} {key}")
        config = PodConfig(hosts=[{"host": f"{sshd.user}@127.0.0.1:{relay.port}", "identity_file": sshd.identity_file}],
                           known_hosts=str(known), remote_dir=str(remote_dir), python=sys.executable,
                           keepalive_interval=1, keepalive_count=2)
        marker = tmp_path / "attempts"
        with backend_in_use(lambda: PodBackend(config)):
            job = app.slow_retry.spawn(60.0, str(marker))
            wait_until(lambda: len(_lines(marker)) == 1, "the first attempt to start")
            first = _lines(marker)[0]
            relay.freeze()  # every connection open now goes silent, both ways; new ones work
            wait_until(lambda: len(_lines(marker)) == 2, "the retry to start", 40)
            assert not pid_alive(first), "the stranded worker was killed before its replacement started"
            job.cancel()


def _lines(path):
    return [int(x) for x in Path(path).read_text().split()] if Path(path).exists() else []


# -- issue 11 section 5: what workers print ---------------------------------------------------------------------


def test_what_a_pod_worker_prints_reaches_the_caller_marked_with_endpoint_and_worker(sshd, remote_dir, caplog):
    with caplog.at_level("INFO", logger="gpuflex.worker"):
        with backend_in_use(lambda: PodBackend(pod_config([sshd], remote_dir))):
            job = app.noisy.spawn()
            assert job.result(timeout=WAIT) == "done"
            worker = job.worker
            wait_until(lambda: "straight to file descriptor 2" in caplog.text, "the fd-2 line to arrive")
    lines = {r.getMessage(): r for r in caplog.records if r.name == "gpuflex.worker"}
    for text, stream in [("printed on the pod", "stdout"), ("to stderr on the pod", "stderr"),
                         ("straight to file descriptor 2", "stderr")]:
        record = lines[f"[pod_noisy {worker}] {text}"]
        assert (record.gpuflex_endpoint, record.gpuflex_worker, record.gpuflex_stream) == ("pod_noisy", worker, stream)


def test_remote_command_lines_are_one_short_line(tmp_path):
    """csh and tcsh (still the login shell on some shared machines) refuse a newline inside quotes: every command
    line gpuflex hands a login shell is one line, and the agent's source travels on stdin."""
    from gpuflex_pod._config import parse_host
    from gpuflex_pod._remote import RemoteHost
    from gpuflex_pod._ssh_args import remote_line

    host = RemoteHost(parse_host("a@b"), PodConfig(hosts=["a@b"], host_env={"HF_TOKEN": "x"}), str(tmp_path))
    line = remote_line(host._agent_line("probe", "~/.cache/gpuflex-pod", "attrs", "3.11", "HF_TOKEN"))
    assert "\n" not in line and len(line) < 1000, line
