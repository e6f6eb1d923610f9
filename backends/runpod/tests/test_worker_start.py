"""How workers start and what they may send back, as on RunPod: from RunPod's public image with nothing of gpuflex
in it (the emulator's workers get a fresh container), the packages bootstrapped once per worker or per network
volume, the caller's Python or a clear mismatch, and RunPod's caps on what a job streams and returns."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from gpuflex_runpod import _bootstrap, _control

from gpuflex import errors
from gpuflex.client._session import get_session
from gpuflex.testing import backend_in_use, wait_until

sys.path.insert(0, str(Path(__file__).parent))  # workers import _runpod_app by reference, from the bundle
import _runpod_app as app  # noqa: E402


def _workers(url, key, name):
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as admin:
        return [w for w in admin.get("/_emulator/workers").json()["workers"] if w["name"] == name]


def _logs(emulator_logs, endpoint_id):
    return "\n".join(path.read_text(errors="replace") for path in sorted(emulator_logs.glob(f"{endpoint_id}-*.log")))


def test_a_worker_without_a_volume_bootstraps_on_its_own_disk(make_backend, emulator_logs):
    with backend_in_use(lambda: make_backend(network_volume_id=None, name_prefix="gpuflex-novol-")) as backend:
        assert app.cold() > 0
        endpoint_id = backend.deployed["rp_cold"].remote["id"]
    log = _logs(emulator_logs, endpoint_id)
    assert "install the worker runtime" in log and "runpod==1.12.0" in log
    assert f"{os.sep}containers{os.sep}" in log.split("worker environment ready: ")[1].splitlines()[0]


def test_a_broken_environment_on_the_volume_is_built_again(make_backend, emulator_url, emulator_key,
                                                            emulator_logs):
    """The marker that says an environment is complete lives inside it: packages gone from under it (a volume
    cleaned by hand, a half-copied directory) make the next worker build it again instead of failing."""
    with backend_in_use(lambda: make_backend(network_volume_id="emuvol0002", name_prefix="gpuflex-heal-")):
        first = app.cold()
        envs = emulator_logs / "volumes" / "emuvol0002" / ".cache" / "gpuflex" / "runpod" / "envs"
        (env,) = [p for p in envs.iterdir() if not p.name.startswith(".")]
        assert (env / "gpuflex-env.json").is_file()
        (package,) = env.glob("lib/python*/site-packages/runpod")
        import shutil

        shutil.rmtree(package)
        (worker,) = _workers(emulator_url, emulator_key, "gpuflex-heal-rp_cold")
        os.kill(worker["pid"], signal.SIGKILL)
        wait_until(lambda: not _workers(emulator_url, emulator_key, "gpuflex-heal-rp_cold"), "the worker is gone")
        assert app.cold() != first
    assert "the worker environment is broken" in "\n".join(p.read_text() for p in emulator_logs.glob("*.log"))


def test_dependencies_install_before_the_worker_takes_jobs_not_inside_the_call(make_backend):
    """Installing a dependency takes longer than the endpoint's 4 s timeout; it happens while the worker starts
    (RunPod's init time), so the call itself is quick."""
    package = Path(app.SLOW_PACKAGE)
    (package / "gpuflex_slowdep").mkdir(exist_ok=True)
    (package / "gpuflex_slowdep" / "__init__.py").write_text("VALUE = 42\n")
    (package / "setup.py").write_text(textwrap.dedent("""\
        import time
        from setuptools import setup
        time.sleep(6)
        setup(name="gpuflex-slowdep", version="1.0", packages=["gpuflex_slowdep"])
    """))
    with backend_in_use(lambda: make_backend(queue_timeout=120)):
        assert app.uses_slow_dependency() == "42"


def test_a_missing_python_fails_the_first_call_naming_both_versions(make_backend, monkeypatch):
    for module in (_bootstrap, _control):
        monkeypatch.setattr(module, "python_version", lambda: "3.99")
    with backend_in_use(lambda: make_backend(name_prefix="gpuflex-py399-")):
        with pytest.raises(errors.VersionMismatch) as caught:
            app.cold()
    message = str(caught.value)
    assert "3.99" in message and f"{sys.version_info.major}.{sys.version_info.minor}" in message


def test_a_small_cpu_flavour_passes_the_sdks_free_memory_check(make_backend):
    """RunPod's SDK exits at start when under 4 GB are free (RUNPOD_MIN_MEMORY_GB), which a 2 GB flavour never
    has: the emulator applies that check to the flavour, and the template asks for what the flavour can give."""
    with backend_in_use(lambda: make_backend(cpu_instance="cpu3c-1-2", name_prefix="gpuflex-small-",
                                             queue_timeout=30)):
        assert app.cold() > 0


def test_a_cold_start_longer_than_queue_timeout_is_not_stuck(make_backend):
    """queue_timeout counts time without progress: a worker starting (bootstrapping) is progress."""
    with backend_in_use(lambda: make_backend(queue_timeout=0.2, name_prefix="gpuflex-slowstart-",
                                             network_volume_id=None)):
        assert app.cold() > 0


def test_a_queue_with_no_worker_at_all_is_reported_stuck(make_backend):
    with backend_in_use(lambda: make_backend(queue_timeout=1, name_prefix="gpuflex-noworkers-")) as backend:
        app.cold()
        remote = backend.deployed["rp_cold"].remote  # as RunPod leaves an endpoint idle for 7 days
        keep = ("id", "name", "templateId", "instanceIds", "idleTimeout", "scalerType", "scalerValue",
                "executionTimeoutMs", "flashBootType", "type", "networkVolumeId")
        data = {key: remote[key] for key in keep if remote.get(key) is not None}
        get_session().run(backend.control.save({**data, "workersMin": 0, "workersMax": 0}))
        with pytest.raises(errors.JobFailed, match="stuck IN_QUEUE") as caught:
            app.cold()
    assert "workersMax of 0" in str(caught.value) and '"workers"' in str(caught.value)


def test_results_and_chunks_over_the_stream_cap_arrive_whole(make_backend):
    """RunPod drops a streamed item over 1 MB: large results and chunks travel in parts."""
    with backend_in_use(make_backend):
        assert app.blob(3_000_000) == b"x" * 3_000_000
        got = list(app.chunks([10, 2_000_000, 5]))
        assert [len(chunk) for chunk in got] == [10, 2_000_000, 5]
        assert got[1] == bytes([2_000_000 % 251]) * 2_000_000


def test_a_result_over_runpods_job_cap_fails_at_once_with_payload_too_large(make_backend):
    """Past ~10 MB RunPod refuses the job's result and the job would hang until its execution timeout."""
    with backend_in_use(make_backend):
        with pytest.raises(errors.PayloadTooLarge, match="10 MB"):
            app.blob(9_000_000)
        with pytest.raises(errors.PayloadTooLarge, match="10 MB"):
            list(app.chunks([3_000_000] * 4))
        assert app.blob(10) == b"x" * 10, "the worker serves the next call"


def test_worker_output_reaches_the_callers_log_marked_with_endpoint_and_worker(make_backend, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="gpuflex.worker")
    with backend_in_use(make_backend):
        assert get_session().run(app.talk(["first line", "second line"])) == 2
    texts = [record.getMessage() for record in caplog.records if record.name == "gpuflex.worker"]
    assert any("rp_talk" in t and "emu-" in t and t.endswith("first line") for t in texts), texts
    assert [t for t in texts if t.endswith(" line")][-2:][1].endswith("second line")
