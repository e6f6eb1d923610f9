"""The pod backend's own behaviour against real sshd hosts: placement over hosts, pushes, secrets, billing, and
the faults (sshd killed mid-job, the connection cut, a worker killed, bad keys, unknown and unreachable hosts)."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from gpuflex_pod import PodBackend, PodConfig
from gpuflex_pod._config import parse_host
from gpuflex_pod._remote import RemoteHost, TreeFile
from gpuflex_pod.sshd import LoopbackSshd

import gpuflex
from gpuflex import errors
from gpuflex.client._session import get_session
from gpuflex.testing import backend_in_use

sys.path.insert(0, str(Path(__file__).parent))
import _pod_app as app  # noqa: E402
from _pod_helpers import pod_config, remote_workers, wait_until  # noqa: E402

WAIT = 60.0


def marker_pids(path):
    return [int(line) for line in Path(path).read_text().split()] if Path(path).exists() else []


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"


# -- configuration ----------------------------------------------------------------------------------------------


def test_host_strings_parse():
    assert parse_host("root@10.0.0.5:2222").destination == "root@10.0.0.5"
    assert parse_host("root@10.0.0.5:2222").port == 2222
    assert parse_host("gpu-box").destination == "gpu-box" and parse_host("gpu-box").port is None
    assert parse_host({"host": "ubuntu@[::1]:22", "gpus": 2, "hourly_rate": 1.5}).gpus == 2
    with pytest.raises(errors.ConfigError, match="user@host"):
        parse_host("root@host:notaport")
    with pytest.raises(errors.ConfigError, match="unknown option"):
        parse_host({"host": "a@b", "colour": "red"})


def test_no_hosts_is_a_clear_error_at_the_first_call():
    with backend_in_use(PodBackend):  # constructing it is cheap and never fails: `gpuflex backends` lists it
        with pytest.raises(errors.ConfigError, match="at least one host"):
            app.where()


def test_remote_python_of_another_minor_version_is_refused_naming_both(tmp_path):
    host = RemoteHost(parse_host("a@b"), PodConfig(hosts=["a@b"]), str(tmp_path))
    host.facts = {"python": "3.10.12", "executable": "/usr/bin/python3"}
    with pytest.raises(errors.VersionMismatch) as caught:
        host.check_python("3.11.7")
    assert "3.11.7" in str(caught.value) and "3.10.12" in str(caught.value) and "python=" in str(caught.value)


# -- placement, pushes, environment ------------------------------------------------------------------------------


def test_workers_spread_over_hosts_and_run_from_the_pushed_bundle(sshd_pair, remote_dir):
    config = pod_config(sshd_pair, remote_dir, workers_per_host=1)
    with backend_in_use(lambda: PodBackend(config)) as backend:
        results = app.spread.map([0.5] * 4)
        assert len(set(results)) == 2, "two hosts with one slot each must run two workers"
        hosts = {w.host for w in get_session().run(backend.workers())}
        assert hosts == {s.host for s in sshd_pair}
        out = app.where()
        assert out["cwd"].startswith(str(remote_dir)) and "/bundles/" in out["cwd"]
        assert out["pid"] in remote_workers(remote_dir)


def test_incremental_push_sends_only_changed_files(sshd, remote_dir, tmp_path):
    config = pod_config([sshd], remote_dir)
    for i in range(20):
        path = tmp_path / f"m{i}.py"
        path.write_text(f"X = {i}\n" * 100)
    def tree():
        out = []
        for path in sorted(tmp_path.glob("*.py")):
            out.append(TreeFile(path.name, hashlib.sha256(path.read_bytes()).hexdigest(), path))
        return tuple(out)

    with backend_in_use(lambda: PodBackend(config)) as backend:
        session = get_session()
        host = backend.hosts[0]
        session.run(host.probe())
        first = session.run(host.push("bundles/one", tree()))
        assert first.sent_files == 20
        (tmp_path / "m3.py").write_text("X = 'changed'\n")
        second = session.run(host.push("bundles/two", tree()))
        assert second.sent_files == 1, f"an incremental push sent {second.sent_files} files"
        assert (Path(second.tree) / "m3.py").read_text() == "X = 'changed'\n"
        assert (Path(second.tree) / "m4.py").read_text() == (tmp_path / "m4.py").read_text()
        assert os.stat(Path(second.tree) / "m4.py").st_ino == os.stat(Path(first.tree) / "m4.py").st_ino
        again = session.run(host.push("bundles/two", tree()))
        assert again.sent_files == 0


def test_secrets_and_env_reach_the_worker_without_a_command_line(sshd, remote_dir, monkeypatch):
    monkeypatch.setenv("POD_TEST_SECRET", "s3cr3t-value")
    with backend_in_use(lambda: PodBackend(pod_config([sshd], remote_dir))):
        assert app.secret() == {"secret": "s3cr3t-value", "env": "from-env"}
        for pid in remote_workers(remote_dir):
            assert b"s3cr3t-value" not in Path(f"/proc/{pid}/cmdline").read_bytes()


def test_missing_secret_is_refused_before_any_host_is_touched(sshd, remote_dir, monkeypatch):
    monkeypatch.delenv("POD_TEST_SECRET", raising=False)
    with backend_in_use(lambda: PodBackend(pod_config([sshd], remote_dir))):
        with pytest.raises(errors.ConfigError, match="POD_TEST_SECRET"):
            app.secret()


def test_billing_is_host_rate_times_uptime(sshd, remote_dir):
    config = pod_config([sshd], remote_dir)
    config = PodConfig(**{**{a: getattr(config, a) for a in ("known_hosts", "remote_dir", "python")},
                          "hosts": [{"host": sshd.host, "identity_file": sshd.identity_file, "hourly_rate": 3.6}]})
    with backend_in_use(lambda: PodBackend(config)) as backend:
        job = app.where.spawn(0.2)
        job.result(timeout=WAIT)
        price = backend.price(app.where.spec)
        assert price.billing == "uptime" and price.usd_per_hour > 0
        assert job.cost.usd == pytest.approx(job.cost.billed_seconds * price.usd_per_hour / 3600)
        [usage] = backend.usage()
        assert usage.uptime_seconds > 0.2 and usage.usd == pytest.approx(usage.uptime_seconds * 3.6 / 3600)


# -- faults ----------------------------------------------------------------------------------------------------


def test_sshd_killed_mid_job_reconnects_and_retries(sshd, remote_dir, tmp_path):
    marker = tmp_path / "attempts"
    with backend_in_use(lambda: PodBackend(pod_config([sshd], remote_dir))):
        job = app.slow_retry.spawn(2.0, str(marker))
        wait_until(lambda: len(marker_pids(marker)) == 1, "the first attempt to start")
        first_pid = marker_pids(marker)[0]
        sshd.kill()  # the pod "dies": every connection drops
        time.sleep(0.3)
        sshd.start()  # and comes back on the same address
        assert job.result(timeout=WAIT)["pid"] != first_pid
        assert job.attempts == 2
        wait_until(lambda: not pid_alive(first_pid), "the orphaned first worker to take itself down", 10)


def test_sshd_gone_fails_the_job_with_a_reason_and_the_next_call_says_unreachable(sshd, remote_dir, tmp_path):
    marker = tmp_path / "attempts"
    config = pod_config([sshd], remote_dir, reconnect_attempts=2, connect_timeout=2)
    with backend_in_use(lambda: PodBackend(config)):
        job = app.slow.spawn(5.0, str(marker))
        wait_until(lambda: len(marker_pids(marker)) == 1, "the job to start")
        sshd.kill()
        with pytest.raises(errors.WorkerLost) as caught:
            job.result(timeout=WAIT)
        assert "died" in str(caught.value)
        assert job.status is gpuflex.JobStatus.FAILED and job.reason
        wait_until(lambda: not pid_alive(marker_pids(marker)[0]), "the orphaned worker to take itself down", 10)


def test_connection_cut_on_the_client_side_is_re_established(sshd, remote_dir, tmp_path):
    marker = tmp_path / "attempts"
    with backend_in_use(lambda: PodBackend(pod_config([sshd], remote_dir))) as backend:
        job = app.slow_retry.spawn(2.0, str(marker))
        wait_until(lambda: len(marker_pids(marker)) == 1, "the first attempt to start")
        master = backend.hosts[0].ssh._master
        assert master is not None
        os.kill(master.pid, signal.SIGKILL)  # the client's end of the connection goes away
        job.result(timeout=WAIT)
        assert job.attempts == 2
        assert backend.hosts[0].ssh.reconnects >= 1


def test_cancel_of_a_running_sync_call_kills_the_remote_process(sshd, remote_dir, tmp_path):
    marker = tmp_path / "attempts"
    with backend_in_use(lambda: PodBackend(pod_config([sshd], remote_dir))):
        job = app.slow.spawn(30.0, str(marker))
        wait_until(lambda: len(marker_pids(marker)) == 1, "the job to start")
        job.cancel()
        assert job.status is gpuflex.JobStatus.CANCELLED
        wait_until(lambda: not pid_alive(marker_pids(marker)[0]), "the remote worker to be killed", 10)


def test_close_leaves_no_remote_processes(sshd_pair, remote_dir, tmp_path):
    marker = tmp_path / "attempts"
    with backend_in_use(lambda: PodBackend(pod_config(sshd_pair, remote_dir))):
        running = app.slow.spawn(30.0, str(marker))
        other = app.slow_retry.spawn(30.0, str(marker))
        wait_until(lambda: len(marker_pids(marker)) == 2, "both long jobs to start")
        assert len(remote_workers(remote_dir)) == 2
    assert running.status.is_terminal and other.status.is_terminal
    wait_until(lambda: not remote_workers(remote_dir), "every remote worker to be gone", 15)


# -- errors that say what to fix -----------------------------------------------------------------------------


def test_unknown_host_key_says_how_to_add_it(sshd, remote_dir):
    empty = remote_dir / "empty_known_hosts"
    empty.write_text("")
    config = PodConfig(hosts=[sshd.host], identity_file=sshd.identity_file, known_hosts=str(empty),
                       remote_dir=str(remote_dir), python=sys.executable)
    with backend_in_use(lambda: PodBackend(config)):
        with pytest.raises(errors.AuthenticationError, match="ssh-keyscan"):
            app.where()


def test_new_host_key_is_accepted_when_asked(sshd, remote_dir):
    empty = remote_dir / "empty_known_hosts"
    empty.write_text("")
    config = PodConfig(hosts=[sshd.host], identity_file=sshd.identity_file, known_hosts=str(empty),
                       accept_new_host_keys=True, remote_dir=str(remote_dir), python=sys.executable)
    with backend_in_use(lambda: PodBackend(config)):
        assert app.where()["pid"] > 0
    host_key = Path(sshd.known_hosts).read_text().split()[2]
    assert host_key in empty.read_text(), "accept-new must record the host's key"


def test_wrong_key_says_login_refused(sshd, remote_dir, tmp_path):
    other = LoopbackSshd()  # its client key is not authorised on `sshd`
    try:
        config = PodConfig(hosts=[sshd.host], identity_file=other.identity_file, known_hosts=sshd.known_hosts,
                           remote_dir=str(remote_dir), python=sys.executable)
        with backend_in_use(lambda: PodBackend(config)):
            with pytest.raises(errors.AuthenticationError, match="login refused") as caught:
                app.where()
        assert "authorized_keys" in str(caught.value)
    finally:
        other.cleanup()


def test_unreachable_host_says_so(ssh_client, remote_dir):
    down = LoopbackSshd()  # keys and a port, but never started
    try:
        config = PodConfig(hosts=[down.host], identity_file=down.identity_file, known_hosts=down.known_hosts,
                           remote_dir=str(remote_dir), python=sys.executable, reconnect_attempts=2,
                           connect_timeout=2)
        with backend_in_use(lambda: PodBackend(config)):
            with pytest.raises(errors.BackendUnavailable, match="unreachable") as caught:
                app.where()
        assert "tried 2 times" in str(caught.value)
    finally:
        down.cleanup()


@pytest.mark.slow
def test_dependencies_get_an_environment_on_the_host_built_once(sshd, remote_dir):
    """The host has no uv: gpuflex installs it under remote_dir, makes a venv for the dependency set, reuses it."""
    forwarded = {k: v for k, v in os.environ.items()
                 if k in ("SSL_CERT_FILE", "SSL_CERT_DIR", "PIP_CERT", "PIP_FIND_LINKS", "PIP_INDEX_URL",
                          "UV_INDEX_URL", "HTTPS_PROXY", "HTTP_PROXY")}
    forwarded["PATH"] = "/usr/bin:/bin"  # a bare host: no uv on its PATH
    config = pod_config([sshd], remote_dir, host_env=forwarded)
    with backend_in_use(lambda: PodBackend(config)) as backend:
        assert not backend.hosts[0].facts or not backend.hosts[0].facts["uv"]
        out = app.with_dependency()
        assert backend.hosts[0].facts["uv"] == "", "the probe must not have found uv"
    assert out["six"] == "1.16.0"
    assert out["python"].startswith(str(remote_dir / "envs")), out
    assert (remote_dir / "tools" / "uv" / "bin" / "uv").is_file(), "uv was installed under remote_dir"
    ready = Path(out["python"]).parents[1] / ".ready"
    built = ready.stat().st_mtime_ns
    gpuflex.shutdown()
    with backend_in_use(lambda: PodBackend(config)):
        assert app.with_dependency()["python"] == out["python"]
    assert ready.stat().st_mtime_ns == built, "the second session rebuilt an environment that was there"


def test_push_recovers_when_the_host_lost_its_files(sshd, remote_dir, tmp_path):
    for i in range(5):
        (tmp_path / f"m{i}.py").write_text(f"X = {i}\n")

    def tree():
        return tuple(TreeFile(p.name, hashlib.sha256(p.read_bytes()).hexdigest(), p)
                     for p in sorted(tmp_path.glob("*.py")))

    with backend_in_use(lambda: PodBackend(pod_config([sshd], remote_dir))) as backend:
        session, host = get_session(), backend.hosts[0]
        session.run(host.probe())
        session.run(host.push("bundles/one", tree()))
        shutil.rmtree(remote_dir / "objects")  # someone cleaned the host's cache behind our back
        (tmp_path / "m0.py").write_text("X = 'new'\n")
        second = session.run(host.push("bundles/two", tree()))
        assert second.sent_files == 1 + 4, "the changed file, then the four unchanged ones the host had lost"
        assert sorted(p.name for p in Path(second.tree).iterdir()) == [f"m{i}.py" for i in range(5)]


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "killed"])
def test_client_interrupted_or_killed_mid_job_leaves_no_remote_processes(sshd, remote_dir, tmp_path, how):
    marker = tmp_path / "attempts"
    script = tmp_path / "client.py"
    config = pod_config([sshd], remote_dir)
    script.write_text(textwrap.dedent(f"""
        import faulthandler, sys
        faulthandler.dump_traceback_later(45)  # still running then: every thread's stack, for the failure report
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import gpuflex
        import _pod_app as app
        hosts = [{{"host": {sshd.host!r}, "identity_file": {sshd.identity_file!r}}}]
        with gpuflex.use("pod", hosts=hosts, known_hosts={config.known_hosts!r}, remote_dir={str(remote_dir)!r},
                         python={sys.executable!r}):
            app.slow(60.0, {str(marker)!r})
    """))
    client = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: len(marker_pids(marker)) == 1, "the job to start on the host")
        worker = marker_pids(marker)[0]
        client.send_signal(how)
        try:
            client.wait(timeout=90)  # seen over 30 s once in a loaded CI run
        except subprocess.TimeoutExpired:
            client.kill()
            stacks = client.communicate()[1].decode()[-6000:]
            raise AssertionError(f"the client outlived {how.name} by 90 s:\n{stacks}") from None
    finally:
        client.kill()
        client.communicate()
    wait_until(lambda: not pid_alive(worker), "the remote worker to be gone", 15)
    wait_until(lambda: not remote_workers(remote_dir), "no worker left on the host", 15)


def test_an_unreachable_host_is_left_out_and_the_others_serve(sshd, remote_dir):
    down = LoopbackSshd()  # never started
    try:
        config = pod_config([sshd], remote_dir, reconnect_attempts=1, connect_timeout=2)
        config = PodConfig(hosts=[*config.hosts, {"host": down.host, "identity_file": down.identity_file}],
                           known_hosts=config.known_hosts, remote_dir=config.remote_dir, python=config.python,
                           reconnect_attempts=1, connect_timeout=2)
        with backend_in_use(lambda: PodBackend(config)) as backend:
            with pytest.warns(errors.GpuflexWarning, match=f"{down.port}.*left out"):
                assert app.where()["pid"] > 0
            assert {w.host for w in get_session().run(backend.workers())} == {sshd.host}
    finally:
        down.cleanup()


@pytest.fixture
def two_h100_host(tmp_path):
    """A host whose nvidia-smi reports two H100s (a stand-in for hardware these machines lack: the script prints
    what nvidia-smi's CSV query prints on such a host)."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '0, NVIDIA H100 80GB HBM3, 81559'\necho '1, NVIDIA H100 80GB HBM3, 81559'\n")
    smi.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin"}


def test_gpus_are_discovered_pinned_one_per_worker_and_priced(sshd, remote_dir, two_h100_host):
    config = pod_config([sshd], remote_dir, host_env=two_h100_host)
    with backend_in_use(lambda: PodBackend(config)) as backend:
        jobs = [app.on_gpu.spawn(1.0) for _ in range(3)]
        devices = [job.result(timeout=WAIT) for job in jobs]
        assert sorted(set(devices)) == ["0", "1"], f"two GPUs, one per worker: {devices}"
        workers = get_session().run(backend.workers())
        assert len(workers) <= 2, "a third worker started with no GPU free"
        price = backend.price(app.on_gpu.spec)
        assert price.usd_per_hour == pytest.approx(2.69), "one of two H100s at the known per-GPU price"
        assert "5.38" in price.source
        with pytest.raises(errors.BackendUnavailable, match="H100"):
            app.on_wrong_gpu()
