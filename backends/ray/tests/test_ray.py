"""The Ray backend on a real two-node cluster: node loss, what actors run, output order, GPUs, reload, costs."""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

import pytest
from gpuflex_ray import RayBackend

import gpuflex
from gpuflex import errors
from gpuflex.testing import backend_in_use, wait_until

sys.path.insert(0, str(Path(__file__).parent))
import _ray_app as app  # noqa: E402
from _ray_helpers import processes_under  # noqa: E402

WAIT = 90.0


def node_lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_importing_the_backend_does_not_import_ray():
    code = "import sys, gpuflex, gpuflex_ray; gpuflex.list_backends(); print('ray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_a_node_lost_mid_call_is_retried_on_another_node(ray_cluster, tmp_path):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    doomed = ray_cluster.add_node()
    here = NodeAffinitySchedulingStrategy(doomed.node_id, soft=True)  # the first actor goes there, others elsewhere
    marker = tmp_path / "nodes"
    with backend_in_use(lambda: RayBackend(ray_cluster.config(actor_options={"scheduling_strategy": here}))):
        job = app.node_loss.spawn(str(marker))
        wait_until(lambda: len(node_lines(marker)) == 1, "the call to start", limit=WAIT)
        assert node_lines(marker) == [doomed.node_id]
        ray_cluster.remove_node(doomed)
        survivor = job.result(timeout=WAIT)
        assert job.attempts == 2, "the call lost with its node must run again"
        assert survivor != doomed.node_id and node_lines(marker)[1] == survivor
        assert job.status is gpuflex.JobStatus.COMPLETED


def test_actors_run_the_shipped_gpuflex_and_the_bundle_and_cost_their_uptime(ray_cluster):
    with backend_in_use(lambda: RayBackend(ray_cluster.config(cpu_hourly_rate=36.0))) as backend:
        job = app.where.spawn()
        seen = job.result(timeout=WAIT)
        price = backend.price(app.where.spec)
        assert (price.billing, price.usd_per_hour) == ("uptime", 36.0)
        assert job.cost is not None and job.cost.usd > 0, "a call costs its running time at the actor's rate"
        [usage] = [u for u in backend.usage() if u.endpoint == "ray_where"]
        assert usage.uptime_seconds > 0 and usage.usd == pytest.approx(usage.uptime_seconds * 36.0 / 3600)
        assert usage.node == seen["node"]
    runtime_resources = os.path.join(ray_cluster.root, "ray")
    assert seen["gpuflex"].startswith(runtime_resources), "gpuflex must come from the job's py_modules"
    assert seen["gpuflex_ray"].startswith(runtime_resources)
    bundles = Path(ray_cluster.root) / "gpuflex-ray" / "bundles"
    assert Path(seen["module"]).resolve().is_relative_to(bundles.resolve()), "the endpoint must come from the bundle"


def test_env_and_secrets_reach_the_actor(ray_cluster, monkeypatch):
    monkeypatch.setenv("RAY_TEST_SECRET", "s3cr3t")
    with backend_in_use(lambda: RayBackend(ray_cluster.config())) as backend:
        assert app.secret() == {"secret": "s3cr3t", "env": "from-env"}
        options = backend.actor_options(app.secret.spec, "w")
        assert "s3cr3t" not in repr(options), "a secret must not travel in the actor's options"


def test_printed_lines_reach_the_caller_before_the_result(ray_cluster):
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("gpuflex.worker")
    handler, saved = Collect(logging.DEBUG), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        with backend_in_use(lambda: RayBackend(ray_cluster.config())):
            for _ in range(3):
                tag = f"t-{uuid.uuid4().hex[:6]}"
                assert app.talk_then_return(tag, 20) == tag
                mine = [r.getMessage().split("] ", 1)[-1] for r in records if tag in r.getMessage()]
                expected = [f"{tag} line {i}" for i in range(20)]
                assert mine[:20] == expected, "lines were lost or reordered, or arrived after the result"
                # the log record goes at once; the partial line when the call ends (the runtime flushes it)
                last = {f"{tag} partial line without a newline", f"WARNING ray-test: {tag} logged last"}
                assert set(mine[20:]) == last
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved)


def test_a_gpu_endpoint_runs_on_cpu_with_a_warning_when_allowed(ray_cluster):
    with backend_in_use(lambda: RayBackend(ray_cluster.config(strict_gpu=False))) as backend:
        with pytest.warns(errors.GpuflexWarning, match="no node of the Ray cluster has a GPU"):
            assert app.on_gpu()
        assert backend.live_capabilities()["gpu"] == "no node of the Ray cluster has a GPU"


def test_a_gpu_the_cluster_lacks_is_asked_for_and_fails_after_start_timeout(ray_cluster):
    make = lambda: RayBackend(ray_cluster.config(strict_gpu=True, start_timeout=3))  # noqa: E731
    with backend_in_use(make) as backend:
        with pytest.warns(errors.GpuflexWarning, match="wait for the cluster"), \
                pytest.raises(errors.JobFailed) as caught:
            app.on_gpu.spawn().result(timeout=WAIT)
        assert re.search(r"accelerator_type=A100\b", str(caught.value)) and "start_timeout" in str(caught.value)
        assert backend.actor_options(app.on_gpu.spec, "w")["num_gpus"] == 1


def test_arrays_arrive_writable_and_large_ones_travel_out_of_band(ray_cluster):
    np = pytest.importorskip("numpy")
    with backend_in_use(lambda: RayBackend(ray_cluster.config())):
        small, large = np.arange(10.0), np.arange(2_000_000.0)  # 16 MB: through the object store
        assert np.array_equal(app.add_one(small), small + 1)
        back = app.add_one(large)
        assert np.array_equal(back, large + 1)
        back += 1  # what comes back is writable too


RELOAD_APP = '''
import gpuflex


@gpuflex.endpoint(name="ray_reload_{tag}")
def version() -> tuple:
    import os
    return ("{version}", os.getpid())
'''


def test_hot_reload_sends_only_the_changed_file_and_keeps_the_actor(ray_cluster, tmp_path):
    import ray

    tag = uuid.uuid4().hex[:8]
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text("[project]\nname = 'reload'\n")
    for i in range(5):
        (project / f"unchanged_{i}.py").write_text(f"VALUE = {i}\n")
    source = project / f"ray_reload_{tag}.py"
    source.write_text(RELOAD_APP.format(tag=tag, version="v1"))
    sys.path.insert(0, str(project))
    try:
        module = importlib.import_module(f"ray_reload_{tag}")
        with backend_in_use(lambda: RayBackend(ray_cluster.config())) as backend:
            first, pid = module.version()
            source.write_text(RELOAD_APP.format(tag=tag, version="v2"))
            gpuflex.reload()
            second, same_pid = module.version()
            assert (first, second) == ("v1", "v2") and same_pid == pid, "the new code must load in the live actor"
            uploads = backend._uploads
            assert uploads is not None and len(uploads.blobs) == 2
            assert len(ray.get(uploads.blobs[0])) == 7  # pyproject.toml, five unchanged modules, the app
            assert set(ray.get(uploads.blobs[1])) == {hashlib.sha256(source.read_bytes()).hexdigest()}
    finally:
        sys.path.remove(str(project))
        sys.modules.pop(f"ray_reload_{tag}", None)


def test_an_endpoint_that_fails_to_load_fails_its_calls_with_the_reason(ray_cluster, tmp_path):
    project = tmp_path / "broken"
    project.mkdir()
    (project / "pyproject.toml").write_text("[project]\nname = 'broken'\n")
    name = f"ray_broken_{uuid.uuid4().hex[:8]}"
    (project / f"{name}.py").write_text(textwrap.dedent(f'''
        import os
        import gpuflex

        if os.environ.get("GPUFLEX_IN_WORKER"):
            raise RuntimeError("cannot load here")


        @gpuflex.endpoint(name="{name}")
        def f() -> int:
            return 1
    '''))
    sys.path.insert(0, str(project))
    try:
        module = importlib.import_module(name)
        with backend_in_use(lambda: RayBackend(ray_cluster.config())):
            with pytest.raises(RuntimeError, match="cannot load here"):
                module.f()
    finally:
        sys.path.remove(str(project))
        sys.modules.pop(name, None)


def test_a_wrong_token_is_an_authentication_error_that_never_shows_it(ray_cluster, tmp_path):
    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import gpuflex
        import _ray_app as app
        try:
            with gpuflex.use("ray", address={ray_cluster.address!r}):
                app.where()
        except gpuflex.errors.GpuflexError as exc:
            print(type(exc).__name__, exc)
        finally:
            gpuflex.shutdown()
    """))
    wrong = "f" * 64
    env = dict(os.environ, RAY_AUTH_TOKEN=wrong, RAY_gcs_server_port_wait_time_s="1")  # one try, not twenty
    env.pop("RAY_AUTH_TOKEN_PATH")
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("AuthenticationError"), done.stdout + done.stderr
    assert "RAY_AUTH_TOKEN" in done.stdout, "the error must say where the token goes"
    assert wrong not in done.stdout + done.stderr


def test_dependencies_are_installed_through_the_runtime_environment(ray_cluster):
    """``six`` is not in this environment: Ray builds a virtual environment with it for the endpoint's actors."""
    with backend_in_use(lambda: RayBackend(ray_cluster.config())):
        seen = app.with_dependency()
    assert seen["six"] == "1.16.0"
    assert seen["python"] != sys.executable, "the actor must run in the environment Ray built for the dependencies"


@pytest.mark.timeout(400)  # starts and stops a whole local cluster in a child process
def test_a_local_cluster_is_started_on_demand_and_gone_afterwards(ray_cluster, tmp_path):
    """No address and no RAY_ADDRESS: gpuflex starts a local cluster for development (a GPU endpoint runs on its
    CPU, with a warning), and stops it when it closes, leaving no process behind."""
    root = Path(tempfile.mkdtemp(prefix="gfl-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    script = tmp_path / "local.py"
    script.write_text(textwrap.dedent(f"""
        import sys, warnings
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import gpuflex
        import _ray_app as app
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with gpuflex.use("ray", init_options={{"num_cpus": 1, "object_store_memory": 80 * 2**20}}):
                print("node", app.on_gpu())
            gpuflex.shutdown()
        print("warned", any("runs on CPU" in str(w.message) for w in seen))
    """))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = str(root)
    try:
        done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=170)
        assert done.returncode == 0, done.stdout + done.stderr[-3000:]
        assert "warned True" in done.stdout and "node " in done.stdout, done.stdout
        # the cluster's processes exit on their own once told to stop: give them time on a loaded machine
        wait_until(lambda: not processes_under(str(root)), "the local cluster to stop when gpuflex closes", 60)
    finally:
        shutil.rmtree(root, ignore_errors=True)
