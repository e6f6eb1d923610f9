"""The local backend's own behaviour, against real worker processes (the generic behaviour is the conformance
suite's, in test_conformance.py)."""

from __future__ import annotations

import collections
import importlib
import importlib.metadata
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
from pathlib import Path

import pytest
from gpuflex_local import LocalBackend, LocalConfig
from gpuflex_local._gpus import detect_gpus

import gpuflex
from gpuflex import errors
from gpuflex.client._session import get_session
from gpuflex.runtime._shm import shm_available
from gpuflex.testing import backend_in_use, wait_until

sys.path.insert(0, str(Path(__file__).parent))  # workers import _local_app by reference, from the bundle
import _local_app as app  # noqa: E402

WAIT = 60.0
HAS_NVIDIA_SMI = shutil.which("nvidia-smi") is not None


# -- helpers ---------------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_session():
    gpuflex.shutdown()
    yield
    gpuflex.shutdown()
    for pid in live_worker_children():  # a leak (see the xfail tests) must not outlive its test
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def no_cuda(monkeypatch):
    """This machine as one without CUDA, whatever it has (the backend reads the devices once per process)."""
    monkeypatch.setenv("GPUFLEX_LOCAL_NO_GPU", "1")
    detect_gpus.cache_clear()
    yield
    monkeypatch.delenv("GPUFLEX_LOCAL_NO_GPU")
    detect_gpus.cache_clear()


def workers_of(backend, endpoint):
    return [w for w in get_session().run(backend.workers()) if w.endpoint == endpoint]


def pid_gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def live_worker_children():
    """Pids of this process's children that run the gpuflex worker and have not exited (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, ppid = fields[0], int(fields[1])
        if ppid == os.getpid() and state != "Z" and b"gpuflex.runtime" in cmdline:
            found.append(int(entry.name))
    return found


def children_of(parent):
    """Pids of ``parent``'s children that run the gpuflex worker and have not exited (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == parent and fields[0] != "Z" and b"gpuflex.runtime" in cmdline:
            found.append(int(entry.name))
    return found


def shm_files():
    return {p.name for p in Path("/dev/shm").glob("gpuflex-*")}


def write_module(project: Path, module: str, source: str) -> Path:
    path = project / f"{module}.py"
    tmp = project / f".{module}.tmp"
    tmp.write_text(textwrap.dedent(source))
    os.replace(tmp, path)
    return path


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A throwaway project whose modules the test writes, imports, edits and reloads."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "pyproject.toml").write_text("[project]\nname = 'probe'\n")
    monkeypatch.syspath_prepend(str(root))
    before = set(sys.modules)
    yield root
    for name in set(sys.modules) - before:
        if name.startswith("gpuflex_local_probe_"):
            del sys.modules[name]


def probe_name():
    return f"gpuflex_local_probe_{uuid.uuid4().hex[:8]}"


# -- 1. GPUs ---------------------------------------------------------------------------------------------------------


def test_gpu_endpoint_without_cuda_runs_on_cpu_with_one_warning(no_cuda):
    with backend_in_use(LocalBackend) as backend:
        assert backend.live_capabilities()["gpu"], "without CUDA the gpu capability must say why it is missing"
        with pytest.warns(errors.GpuflexWarning) as record:
            first = app.gpu_env(7)
        ours = [w for w in record if issubclass(w.category, errors.GpuflexWarning)]
        assert len(ours) == 1, [str(w.message) for w in ours]
        message = str(ours[0].message)
        assert "CPU" in message and "local_gpu_env" in message
        assert first["square"] == 49
        assert first["cuda_visible_devices"] in (None, ""), "a CPU worker must not be pinned to a device"
        with warnings.catch_warnings(record=True) as again:
            warnings.simplefilter("always")
            assert app.gpu_env(8)["square"] == 64
            assert app.gpu_env.spawn(9).result(timeout=WAIT)["square"] == 81
        assert not [w for w in again if issubclass(w.category, errors.GpuflexWarning)], "warned more than once"


def test_strict_gpu_without_cuda_is_backend_unavailable(no_cuda):
    with gpuflex.use("local", strict_gpu=True), pytest.raises(errors.BackendUnavailable) as caught:
        app.gpu_env(1)
    message = str(caught.value)
    assert "no CUDA device" in message
    assert "local_gpu_env" in message
    assert "another backend" in message and "strict_gpu" in message, "the error must say what to do"


def test_cpu_endpoint_without_cuda_does_not_warn(no_cuda):
    with backend_in_use(LocalBackend), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert app.square(4) == 16
    assert not [w for w in record if issubclass(w.category, errors.GpuflexWarning)]


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_NVIDIA_SMI, reason="needs a CUDA device (nvidia-smi not found)")
def test_gpu_worker_is_pinned_with_cuda_visible_devices():
    detect_gpus.cache_clear()
    devices = {gpu.index for gpu in detect_gpus()}
    if not devices:
        pytest.skip("nvidia-smi lists no usable CUDA device")
    with backend_in_use(LocalBackend), warnings.catch_warnings():
        warnings.simplefilter("error", errors.GpuflexWarning)  # no CPU fallback warning on a CUDA machine
        result = app.gpu_env(3)
    assert result["square"] == 9
    assert result["cuda_visible_devices"] in devices, result


# -- 2. dependencies -------------------------------------------------------------------------------------------------


def test_missing_dependency_is_a_config_error_suggesting_isolate():
    with backend_in_use(LocalBackend), pytest.raises(errors.ConfigError) as caught:
        app.missing_dep()
    message = str(caught.value)
    assert "definitely-not-installed-pkg==1.0" in message and "not installed" in message
    assert "isolate=True" in message
    assert "local_missing_dep" in message


def test_satisfied_dependency_runs():
    with backend_in_use(LocalBackend):
        assert app.satisfied_dep() == "attrs"


def test_dependency_version_mismatch_reports_the_found_version():
    found = importlib.metadata.version("attrs")
    with backend_in_use(LocalBackend), pytest.raises(errors.ConfigError) as caught:
        app.wrong_version()
    message = str(caught.value)
    assert "attrs<1" in message and f"found {found}" in message


# -- 3. isolated environments ----------------------------------------------------------------------------------------


@pytest.fixture
def uv_on_path(monkeypatch):
    if shutil.which("uv") is None:
        beside = Path(sys.executable).parent
        if (beside / "uv").exists():
            monkeypatch.setenv("PATH", f"{beside}{os.pathsep}{os.environ.get('PATH', '')}")
    if shutil.which("uv") is None:
        pytest.skip("isolate=True needs uv on PATH")


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.usefixtures("uv_on_path")
def test_isolated_environment_is_built_once_and_reused(tmp_path):
    assert importlib.util.find_spec("six") is None, "the test needs six to be absent from the dev environment"
    cache = tmp_path / "cache"
    with gpuflex.use("local", isolate=True, cache_dir=str(cache)):
        first = app.isolated_six()
    prefix = Path(first["prefix"]).resolve()
    envs = (cache / "envs").resolve()
    assert first["six"] == "1.16.0"
    assert prefix.parent == envs, f"the worker ran in {prefix}, not in an environment under {envs}"
    assert Path(first["six_file"]).resolve().is_relative_to(prefix)
    assert not first["has_numpy"], "the isolated environment sees the dev environment's packages"
    marker = prefix / ".gpuflex-complete"
    assert marker.is_file()
    stamp = (marker.stat().st_mtime_ns, marker.stat().st_ino, marker.read_text())

    gpuflex.shutdown()  # a new session and a new backend: the second deploy must find the cached environment
    started = time.monotonic()
    with gpuflex.use("local", isolate=True, cache_dir=str(cache)):
        second = app.isolated_six()
    reuse_seconds = time.monotonic() - started
    assert Path(second["prefix"]).resolve() == prefix
    assert second["pid"] != first["pid"]
    assert (marker.stat().st_mtime_ns, marker.stat().st_ino, marker.read_text()) == stamp, "the env was rebuilt"
    assert [p.name for p in envs.iterdir()] == [prefix.name]
    assert reuse_seconds < 60, f"reusing the cached environment took {reuse_seconds:.1f} s"
    assert importlib.util.find_spec("six") is None, "building the environment installed six in the dev environment"


# -- 4. env and secrets ----------------------------------------------------------------------------------------------

SECRET_VALUE = "pa55-" + uuid.uuid4().hex + "-do-not-print"


def test_env_and_secrets_reach_the_worker(monkeypatch):
    monkeypatch.setenv("GPUFLEX_TEST_SECRET", SECRET_VALUE)
    with backend_in_use(LocalBackend):
        seen = app.env_and_secret()
    assert seen == {"GPUFLEX_TEST_GREETING": "hello-from-env", "GPUFLEX_TEST_SECRET": SECRET_VALUE}


def test_missing_secret_fails_the_call_naming_it_without_leaking_values(monkeypatch, capfd, caplog):
    monkeypatch.setenv("GPUFLEX_TEST_SECRET", SECRET_VALUE)
    monkeypatch.delenv("GPUFLEX_TEST_ABSENT_SECRET", raising=False)
    with backend_in_use(LocalBackend):
        job = app.missing_secret.spawn()
        try:
            with pytest.raises(errors.ConfigError) as caught:
                job.result(timeout=10)
        finally:
            out, err = capfd.readouterr()
            assert SECRET_VALUE not in out + err + caplog.text
    message = str(caught.value)
    assert "GPUFLEX_TEST_ABSENT_SECRET" in message
    assert SECRET_VALUE not in message
    assert job.status is gpuflex.JobStatus.FAILED


# -- 5. workers killed from outside ----------------------------------------------------------------------------------


def test_worker_killed_mid_job_is_retried_on_a_new_worker(tmp_path):
    pid_file = tmp_path / "pid"
    with backend_in_use(LocalBackend) as backend:
        job = app.killed_retry.spawn(str(pid_file), 60)
        wait_until(pid_file.exists, "the first attempt to start")
        reported = int(pid_file.read_text())
        assert job._handle is not None
        killed = backend.kill_worker_of(job._handle)
        assert killed == reported
        survivor = job.result(timeout=WAIT)
        assert survivor != killed, "the retry ran on the killed worker's pid"
        assert job.attempts == 2
        assert job.status is gpuflex.JobStatus.COMPLETED
        wait_until(lambda: pid_gone(killed), "the killed worker to be reaped", limit=10)


def test_worker_killed_with_no_retries_is_worker_lost_and_the_queue_moves_on(tmp_path):
    first_pid, second_pid = tmp_path / "first", tmp_path / "second"
    with backend_in_use(LocalBackend) as backend:
        doomed = app.killed_no_retry.spawn(str(first_pid), 60)
        wait_until(first_pid.exists, "the first job to start")
        behind = app.killed_no_retry.spawn(str(second_pid), 0)  # max_workers=1: it waits in the queue
        wait_until(lambda: behind._handle is not None, "the second job to be submitted")
        assert backend.jobs[behind._handle].worker is None, "the second job should be queued, not on the worker"
        victim = int(first_pid.read_text())
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(errors.WorkerLost) as caught:
            doomed.result(timeout=WAIT)
        message = str(caught.value)
        assert "SIGKILL" in message and "died" in message and str(victim) in message
        assert doomed.status is gpuflex.JobStatus.FAILED and doomed.attempts == 1 and doomed.reason
        assert behind.result(timeout=WAIT) != victim
        assert behind.status is gpuflex.JobStatus.COMPLETED


def test_prefetched_job_behind_a_killed_worker_runs_on_the_next_one(tmp_path):
    first_pid, second_pid = tmp_path / "first", tmp_path / "second"
    with backend_in_use(lambda: LocalBackend(LocalConfig(prefetch=1))) as backend:
        doomed = app.killed_no_retry.spawn(str(first_pid), 60)
        wait_until(first_pid.exists, "the first job to start")
        behind = app.killed_no_retry.spawn(str(second_pid), 0)
        wait_until(lambda: behind._handle is not None and backend.jobs[behind._handle].worker is not None,
                   "the second job to be prefetched into the busy worker's pipe")
        killed = backend.kill_worker_of(doomed._handle)
        with pytest.raises(errors.WorkerLost, match="SIGKILL"):
            doomed.result(timeout=WAIT)
        assert behind.result(timeout=WAIT) != killed
        assert behind.attempts == 1, "a call that never started needs no retry"


# -- 6. shared memory ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shared_memory", [True, False], ids=["shm", "pipe"])
def test_large_array_round_trip(shared_memory):
    np = pytest.importorskip("numpy")
    if shared_memory and not shm_available():
        pytest.skip("no memfd shared memory here")
    before = shm_files() if os.path.isdir("/dev/shm") else set()
    array = np.arange(16 * 2**20, dtype=np.float32)  # 64 MiB
    array[::7] *= -1.5
    with backend_in_use(lambda: LocalBackend(LocalConfig(shared_memory=shared_memory))):
        back = app.array_echo(array)
        assert back.dtype == np.float32 and back.shape == array.shape
        assert np.array_equal(back, array)
        info = app.array_info(array)
        assert info["shape"] == array.shape and info["dtype"] == "float32"
        assert info["sum"] == float(array.sum(dtype=np.float64))
        assert info["shm"] == ("1" if shared_memory else None)
        if os.path.isdir("/dev/shm"):  # other processes may share /dev/shm: wait for names of ours to go
            wait_until(lambda: not shm_files() - before, "shared-memory files to be unlinked", limit=10)
    if os.path.isdir("/dev/shm"):
        wait_until(lambda: not shm_files() - before, "shared-memory files to be unlinked", limit=10)


def _channel_of(backend, endpoint):
    (worker,) = backend.pools[endpoint].workers.values()
    return worker.channel


def test_shared_memory_segments_are_reused_on_both_sides():
    np = pytest.importorskip("numpy")
    if not shm_available():
        pytest.skip("no memfd shared memory here")
    array = np.arange(2**20, dtype=np.float64)  # 8 MiB
    with backend_in_use(lambda: LocalBackend(LocalConfig(shared_memory=True))) as backend:
        for i in range(5):
            back = app.array_echo(array + i)
            assert back[0] == i and back[-1] == array[-1] + i
            del back  # nothing holds the result: the worker may write the next one into the same segment
        assert backend.shm_pool.created == 1  # the caller's side: one segment, reused for every argument
        maps = _channel_of(backend, "local_array_echo").codec.maps
        assert len(maps) == 1  # the worker's side: every result came in the one segment the caller mapped once
        kept = app.array_echo(array)  # held: the next result needs another segment, and this one stays intact
        other = app.array_echo(array + 1)
        assert len(maps) == 2 and np.array_equal(kept, array) and np.array_equal(other, array + 1)


def _memfd_mappers(creator_pids):
    """Processes that map a gpuflex segment made by one of ``creator_pids`` (memfd names carry the maker's pid)."""
    names = {f"memfd:gpuflex-{pid} ".encode() for pid in creator_pids}
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                maps = (entry / "maps").read_bytes()
            except OSError:
                continue
            if any(name in maps for name in names):
                found.add(int(entry.name))
    return found


CALLER_SCRIPT = """
import sys
import numpy as np
sys.path.insert(0, {tests!r})
import _local_app as app
array = np.arange(2**20, dtype=np.float64)
assert np.array_equal(app.array_echo(array), array)
print("echoed", flush=True)
app.array_hold(array, {pid_file!r}, 600)
"""


def test_nothing_is_left_when_the_caller_is_killed(tmp_path):
    """SIGKILL a caller while its workers map its segments (and it maps theirs): the workers exit, nothing maps the
    memory any more, and nothing was ever put in /dev/shm."""
    pytest.importorskip("numpy")
    if not shm_available():
        pytest.skip("no memfd shared memory here")
    before = shm_files() if os.path.isdir("/dev/shm") else set()
    pid_file = tmp_path / "hold.pid"
    script = tmp_path / "caller.py"
    script.write_text(CALLER_SCRIPT.format(tests=str(Path(__file__).parent), pid_file=str(pid_file)))
    caller = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              cwd=str(Path(__file__).parent))
    try:
        assert caller.stdout is not None and caller.stdout.readline().strip() == "echoed"
        wait_until(pid_file.exists, "the holding call to start", limit=WAIT)
        workers = [pid for pid in children_of(caller.pid)]
        assert len(workers) == 2
        holder = int(pid_file.read_text())
        assert holder in _memfd_mappers([caller.pid])  # the running call maps the caller's segment
        assert caller.pid in _memfd_mappers(workers)  # the caller maps the echo worker's segment
    finally:
        caller.kill()
        caller.wait(timeout=WAIT)
        caller.stdout.close()
    wait_until(lambda: all(pid_gone(pid) for pid in workers), "the workers to exit with their caller", limit=WAIT)
    assert not _memfd_mappers([caller.pid, *workers])
    if os.path.isdir("/dev/shm"):
        assert not shm_files() - before


# -- 7. hot reload ---------------------------------------------------------------------------------------------------

HOT_SOURCE = """
import os
import time
from pathlib import Path

import gpuflex

VALUE = {value!r}


@gpuflex.endpoint(name={name!r}, max_workers=2)
def value(started=None, gate=None):
    if started:
        Path(started).touch()
    if gate:
        deadline = time.monotonic() + 60
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)
    return VALUE, os.getpid()
"""


@pytest.mark.parametrize("reload_in_place", [True, False], ids=["in-place", "replace"])
def test_hot_reload_running_call_keeps_old_code(project, tmp_path, reload_in_place):
    module_name = probe_name()
    name = f"hot_{module_name[-8:]}"
    write_module(project, module_name, HOT_SOURCE.format(value="old", name=name))
    module = importlib.import_module(module_name)
    started, gate = tmp_path / "started", tmp_path / "gate"
    with backend_in_use(lambda: LocalBackend(LocalConfig(reload_in_place=reload_in_place))) as backend:
        assert module.value()[0] == "old"
        long_call = module.value.spawn(str(started), str(gate))
        wait_until(started.exists, "the long call to start")
        old_hash = workers_of(backend, name)[0].bundle_hash

        write_module(project, module_name, HOT_SOURCE.format(value="new", name=name))
        get_session().invalidate_bundles()
        fresh, fresh_pid = module.value()
        assert fresh == "new", "the call after the edit ran the old code"
        assert not long_call.done(), "the long call should still be waiting for its gate"

        gate.touch()
        old, old_pid = long_call.result(timeout=WAIT)
        assert old == "old", "a call started before the edit must finish on the old code"
        assert old_pid != fresh_pid

        def all_on_new_code():
            workers = workers_of(backend, name)
            return bool(workers) and all(w.bundle_hash != old_hash and w.state.value == "IDLE" for w in workers)

        wait_until(all_on_new_code, "every worker to run the new bundle")
        assert module.value()[0] == "new"
        pids = {w.pid for w in workers_of(backend, name)}
        if reload_in_place:
            assert old_pid in pids, "reload_in_place=True must load the new code in the running process"
        else:
            wait_until(lambda: pid_gone(old_pid), "the replaced worker to exit", limit=15)


WARM_SOURCE = """
import os

import gpuflex

VALUE = {value!r}


@gpuflex.endpoint(name={name!r}, min_workers=1, max_workers=1, idle_timeout=0.3)
def value():
    return VALUE, os.getpid()
"""


@pytest.mark.parametrize("reload_in_place", [True, False], ids=["in-place", "replace"])
def test_hot_reload_of_a_min_workers_endpoint_leaves_no_stray_worker(project, reload_in_place):
    module_name = probe_name()
    name = f"warm_{module_name[-8:]}"
    write_module(project, module_name, WARM_SOURCE.format(value="old", name=name))
    module = importlib.import_module(module_name)
    with backend_in_use(lambda: LocalBackend(LocalConfig(reload_in_place=reload_in_place))) as backend:
        assert module.value()[0] == "old"
        write_module(project, module_name, WARM_SOURCE.format(value="new", name=name))
        get_session().invalidate_bundles()
        assert module.value()[0] == "new"
        time.sleep(1.5)  # several idle timeouts: any timer the old deploy left behind has fired
        tracked = {w.pid for w in get_session().run(backend.workers())}
        stray = set(live_worker_children()) - tracked
        assert not stray, f"worker processes that no pool tracks: {sorted(stray)}"


# -- 8. scaling ------------------------------------------------------------------------------------------------------


def test_min_workers_worker_is_started_and_kept():
    with backend_in_use(LocalBackend) as backend:
        pid = app.warm()
        wait_until(lambda: [w.state.value for w in workers_of(backend, "local_warm")] == ["IDLE"],
                   "the min_workers worker to be idle")
        (worker,) = workers_of(backend, "local_warm")
        assert worker.pid == pid and worker.jobs_done == 1
        assert app.warm() == pid


def test_teardown_of_a_min_workers_endpoint_starts_no_replacement():
    with backend_in_use(LocalBackend):
        pid = app.warm()
    time.sleep(1.0)  # the session still runs: a replacement started by the torn-down pool would be up by now
    wait_until(lambda: pid_gone(pid), "the min_workers worker to exit", limit=15)
    assert not live_worker_children(), "a worker was started after its endpoint was torn down"


def test_concurrency_and_max_workers_run_one_wave_and_teardown_stops_every_worker():
    with backend_in_use(LocalBackend) as backend:
        cold = [app.wave.spawn(0.5) for _ in range(6)]
        cold_pids = {job.result(timeout=WAIT)[0] for job in cold}
        assert 1 <= len(cold_pids) <= 2, f"max_workers=2 but {len(cold_pids)} workers ran the jobs"
        wait_until(lambda: [w.state.value for w in workers_of(backend, "local_wave")] == ["IDLE", "IDLE"],
                   "two idle workers")

        warm = [app.wave.spawn(0.5) for _ in range(6)]
        results = [job.result(timeout=WAIT) for job in warm]
        per_worker = collections.Counter(pid for pid, _, _ in results)
        assert sorted(per_worker.values()) == [3, 3], f"6 calls on 2 workers of concurrency 3: {per_worker}"
        starts = [start for _, start, _ in results]
        ends = [end for _, _, end in results]
        assert max(starts) < min(ends), "a call started only after another finished: they did not run in one wave"
        pids = cold_pids | set(per_worker) | {w.pid for w in workers_of(backend, "local_wave")}
    for pid in pids:
        wait_until(lambda pid=pid: pid_gone(pid), f"worker {pid} to exit after teardown", limit=15)
    assert not live_worker_children()


# -- 9. an endpoint module that fails to import in the worker --------------------------------------------------------

BROKEN_SOURCE = """
import os

import gpuflex
from {errors_module} import BrokenInWorker

if {broken} and os.environ.get("GPUFLEX_IN_WORKER"):
    raise BrokenInWorker("this module refuses to load in a worker")


@gpuflex.endpoint(name={name!r})
def answer():
    return {answer!r}
"""


def test_import_failure_in_the_worker_raises_its_type_and_a_fix_recovers(project):
    module_name, errors_module = probe_name(), probe_name()
    name = f"broken_{module_name[-8:]}"
    write_module(project, errors_module, "class BrokenInWorker(Exception):\n    pass\n")
    broken_in_worker = importlib.import_module(errors_module).BrokenInWorker

    def write(broken, answer):
        source = BROKEN_SOURCE.format(errors_module=errors_module, broken=broken, name=name, answer=answer)
        write_module(project, module_name, source)

    write(broken=True, answer=1)
    module = importlib.import_module(module_name)  # fine here: only a worker process refuses it
    with backend_in_use(LocalBackend):
        with pytest.raises(broken_in_worker, match="refuses to load"):
            module.answer()
        with pytest.raises(broken_in_worker):
            module.answer.spawn().result(timeout=WAIT)  # still broken: every attempt to start reports it

        write(broken=False, answer=2)
        get_session().invalidate_bundles()
        assert module.answer() == 2

        # broken again while a worker runs: the reload fails in the worker, and the call says why
        write(broken=True, answer=3)
        get_session().invalidate_bundles()
        with pytest.raises(broken_in_worker):
            module.answer()

        write(broken=False, answer=4)
        get_session().invalidate_bundles()
        assert module.answer() == 4


# -- 10. prefetch ----------------------------------------------------------------------------------------------------


def test_prefetch_map_keeps_order():
    with gpuflex.use("local", prefetch=1):
        assert list(app.square.map(range(20))) == [x * x for x in range(20)]
        assert sorted(app.square.map(range(20), order=False)) == [x * x for x in range(20)]


def test_cancelling_a_prefetched_job_leaves_the_running_one_alone(tmp_path):
    started, gate, ran = tmp_path / "started", tmp_path / "gate", tmp_path / "ran"
    with backend_in_use(lambda: LocalBackend(LocalConfig(prefetch=1))) as backend:
        running = app.gated.spawn(str(started), str(gate))
        wait_until(started.exists, "the first job to start")
        prefetched = app.gated.spawn(None, None, str(ran))
        wait_until(lambda: prefetched._handle is not None and backend.jobs[prefetched._handle].worker is not None,
                   "the second job to be prefetched into the busy worker's pipe")
        assert prefetched.status is not gpuflex.JobStatus.RUNNING
        prefetched.cancel()
        with pytest.raises(errors.JobCancelled):
            prefetched.result(timeout=WAIT)
        assert prefetched.status is gpuflex.JobStatus.CANCELLED
        assert not running.done(), "cancelling the prefetched job stopped the running one"
        gate.touch()
        pid = running.result(timeout=WAIT)
        assert running.status is gpuflex.JobStatus.COMPLETED
        assert app.gated(None, None) == pid, "the worker was replaced: the cancel killed it"
        assert not ran.exists(), "the cancelled job ran anyway"


# -- 11. classes and cost --------------------------------------------------------------------------------------------


def test_class_endpoint_with_constructor_arguments_is_a_config_error():
    with backend_in_use(LocalBackend):
        with pytest.raises(errors.ConfigError, match="no arguments"):
            app.Model(1)
        with pytest.raises(errors.ConfigError, match="no arguments"):
            app.Model(threshold=0.5)
        assert app.Model().predict(1) == 2


def test_cost_at_an_hourly_rate_of_one_dollar_per_second():
    with gpuflex.use("local", hourly_rate=3600):
        job = app.priced.spawn(0.3)
        assert job.result(timeout=WAIT) == 0.3
    assert job.run_time is not None and job.run_time >= 0.3
    assert job.cost.billed_seconds == pytest.approx(job.run_time, abs=1e-3)
    assert job.cost.usd == pytest.approx(job.cost.billed_seconds, rel=1e-9)
    summary = gpuflex.costs()["local_priced"]
    assert summary.calls == 1 and summary.cost.usd == pytest.approx(job.cost.usd)
    assert summary.gpu_seconds == 0, "a CPU endpoint uses no GPU-seconds"
    assert gpuflex.total_cost().usd == pytest.approx(job.cost.usd)


def test_cost_rule_of_a_paid_local_job_is_uptime():
    with gpuflex.use("local", hourly_rate=3600):
        job = app.priced.spawn(0.01)
        job.result(timeout=WAIT)
    assert job.cost.rule == "uptime"
    assert gpuflex.costs()["local_priced"].cost.rule == "uptime"
