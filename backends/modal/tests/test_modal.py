"""The Modal backend offline: what an endpoint becomes (the plan, and what the real client sends the fake),
deploy and teardown, prices, and failures that must be fast and clear; the container-side runner in process.

Calls through the fake are in test_modal_calls.py and the conformance suite (test_conformance.py); against real
Modal, test_modal_live.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import time
import uuid
from pathlib import Path

import _modal_app as app
import pytest
from gpuflex_modal import ModalBackend, ModalConfig, plan_for
from gpuflex_modal._config import default_app_name
from gpuflex_modal._runner import EndpointRunner

import gpuflex
from gpuflex import errors
from gpuflex._bundle import build_bundle
from gpuflex._envelope import decode_outcome, encode_call
from gpuflex.backend import Payload
from gpuflex.client._session import get_session
from gpuflex.testing import backend_in_use
from gpuflex.worker import worker_init

ROOT = Path(__file__).resolve().parents[3]


@contextlib.contextmanager
def collect_worker_output():
    """The records of the gpuflex.worker logger while the block runs."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler, logger = Collect(logging.DEBUG), logging.getLogger("gpuflex.worker")
    saved = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved)


def deploy(backend, *endpoints):
    """Deploy (record) the endpoints with the bundle a call would use, then run the app as the next call would."""
    session = get_session()
    for endpoint in endpoints:
        session.run(backend.deploy(endpoint.spec, session.bundle_for(endpoint)))
    session.run(backend.ensure_running())


# -- translation ------------------------------------------------------------------------------------------------


def test_plan_maps_every_setting():
    plan = plan_for(app.big.spec)
    assert plan.gpu == "H100:2"
    assert (plan.min_containers, plan.max_containers, plan.scaledown_window) == (1, 5, 90)
    assert (plan.timeout, plan.startup_timeout, plan.max_inputs) == (120, 1200, 4)
    assert (plan.cpu, plan.memory, plan.apt_packages) == (4.0, 16384, ("ffmpeg",))
    assert plan.python_version == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert "numpy==2.0.0" in plan.pip_packages and any(p.startswith("cloudpickle") for p in plan.pip_packages)
    assert plan.secrets == ("HF_TOKEN",) and plan.env == {"MODE": "fast"}
    assert plan_for(app.Counter.spec).is_class and plan_for(app.Counter.spec).gpu == "any"
    assert plan_for(app.big.spec, ModalConfig(startup_timeout=30)).startup_timeout == 30


def test_plan_refuses_what_modal_cannot_take():
    with pytest.raises(errors.ConfigError, match="Modal does not offer"):
        plan_for(gpuflex.endpoint(name="m_rtx", gpu="RTX4090")(lambda: None).spec)
    with pytest.raises(errors.ConfigError, match="3600"):
        plan_for(gpuflex.endpoint(name="m_idle", idle_timeout=7200)(lambda: None).spec)
    short = plan_for(gpuflex.endpoint(name="m_short", idle_timeout=0.5)(lambda: None).spec)
    assert short.scaledown_window == 2 and "2 s" in short.notes[0]


def test_gpu_counts_are_checked_at_plan_time():
    """Modal's GPU guide: at most 8 of a type per container, 4 for A10 (the client sends any count)."""
    with pytest.raises(errors.ConfigError, match="at most 4 A10"):
        plan_for(gpuflex.endpoint(name="m_a10", gpu=gpuflex.GPU("A10", 8))(lambda: None).spec)
    with pytest.raises(errors.ConfigError, match="at most 8 H100"):
        plan_for(gpuflex.endpoint(name="m_h100", gpu=gpuflex.GPU("H100", 16))(lambda: None).spec)
    assert plan_for(gpuflex.endpoint(name="m_ok", gpu=gpuflex.GPU("H100", 8))(lambda: None).spec).gpu == "H100:8"


def test_price_is_per_second_with_the_scaledown_tail():
    backend = ModalBackend()
    price = backend.price(app.small.spec)
    cpu_and_memory = 0.125 * 0.0000131 + 0.125 * 0.00000222  # Modal's default reservation when none is asked
    assert price.billing == "per-second"
    assert price.usd_per_hour == pytest.approx((0.000222 + cpu_and_memory) * 3600)
    assert price.tail_seconds == 60  # no warm container: each call keeps one up for scaledown_window
    warm = backend.price(app.big.spec)
    expected = 0.001097 * 2 + 4 * 0.0000131 + 16 * 0.00000222
    assert warm.usd_per_hour == pytest.approx(expected * 3600) and warm.tail_seconds == 0
    assert warm.idle_usd_per_hour == pytest.approx(warm.usd_per_hour)


@pytest.mark.parametrize("gpu", ["A10", "A100-40GB", "H200", "B200", "RTX-PRO-6000"])
def test_every_modal_gpu_has_a_price(gpu):
    price = ModalBackend().price(gpuflex.endpoint(name="m_priced", gpu=gpu)(lambda: None).spec)
    assert price.usd_per_hour > 0, price.source
    assert "estimate" in price.source, "prices not checked against modal.com say so"


# -- what the real client sends -----------------------------------------------------------------------------------


def test_app_run_creates_exactly_the_planned_classes(fake_modal, monkeypatch):
    local_value = f"local-{uuid.uuid4().hex}"  # made here: the bundle (this file) is uploaded too
    monkeypatch.setenv("HF_TOKEN", local_value)
    fake_modal.servicer.named_secrets["HF_TOKEN"] = {"HF_TOKEN": "stored at Modal"}
    config = ModalConfig(server_url=fake_modal.url)
    with backend_in_use(lambda: ModalBackend(config)) as backend:
        deploy(backend, app.big, app.small, app.Counter)
    functions = fake_modal.servicer.functions_by_name()
    big = functions["gpuflex_modal_big.*"][0]
    assert big.resources.gpu_config.gpu_type == "H100" and big.resources.gpu_config.count == 2
    assert (big.resources.milli_cpu, big.resources.memory_mb) == (4000, 16384)
    assert (big.autoscaler_settings.min_containers, big.autoscaler_settings.max_containers,
            big.autoscaler_settings.scaledown_window) == (1, 5, 90)
    assert (big.timeout_secs, big.startup_timeout_secs) == (120, 1200)
    assert not big.retry_policy.retries, "gpuflex retries a call that raised; Modal never sees it fail"
    assert big.max_concurrent_inputs == 4
    assert len(big.secret_ids) == 2, "the HF_TOKEN secret by name, plus the env"
    (lookup,) = [r for r in fake_modal.servicer.of("SecretGetOrCreate") if r.deployment_name]
    assert lookup.deployment_name == "HF_TOKEN" and list(lookup.required_keys) == ["HF_TOKEN"]
    small = functions["gpuflex_modal_small.*"][0]
    assert small.resources.gpu_config.gpu_type == "L4" and small.autoscaler_settings.max_containers == 1
    counter = functions["gpuflex_modal_counter.*"][0]
    assert counter.resources.gpu_config.gpu_type.upper() == "ANY"
    steps = [line for layers in fake_modal.servicer.dockerfiles() for line in layers]
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert any(line.startswith(f"FROM python:{python}") for line in steps), steps
    assert any("apt-get install" in line and "ffmpeg" in line for line in steps), steps
    assert any("numpy==2.0.0" in line and "uv" in line for line in steps), steps
    assert all(local_value not in str(request) for _, request in fake_modal.servicer.requests)
    mounted = fake_modal.servicer.mounted_files()
    assert "/root/gpuflex-bundle/tests/_modal_app.py" in mounted, "the bundle is shipped as local source"
    assert any(f.endswith("/gpuflex/runtime/_runner.py") for f in mounted), "gpuflex's runtime is shipped with it"


def test_a_missing_modal_secret_is_a_clear_error(fake_modal):
    with backend_in_use(lambda: ModalBackend(ModalConfig(server_url=fake_modal.url))) as backend:
        with pytest.raises(errors.ConfigError, match="modal secret create"):
            deploy(backend, app.big)


def test_hot_reload_runs_the_app_again_with_the_new_bundle(fake_modal):
    config = ModalConfig(server_url=fake_modal.url)
    with backend_in_use(lambda: ModalBackend(config)) as backend:
        deploy(backend, app.small)
        get_session().run(backend.ensure_running())
        assert len(fake_modal.servicer.of("AppCreate")) == 1, "nothing changed: no new run"
        deploy(backend, app.small)
    assert len(fake_modal.servicer.of("AppCreate")) == 2, "a redeploy runs the app anew"
    assert len(fake_modal.servicer.of("AppClientDisconnect")) >= 1, "the previous run was stopped"


def _project(tmp_path: Path, name: str, fake_url: str, app_name: str | None = None) -> Path:
    project = tmp_path / name
    project.mkdir()
    (project / "pyproject.toml").write_text(f"[project]\nname = '{name}'\n")
    (project / "app.py").write_text(
        "import gpuflex\n\n@gpuflex.endpoint(name='dep_one', gpu='L4', min_workers=1)\ndef one(x):\n    return x\n\n"
        "@gpuflex.endpoint(name='dep_two')\ndef two(x):\n    return x\n")
    extra = f'app_name = "{app_name}"\n' if app_name else ""
    (project / "gpuflex.toml").write_text(f'[backends.modal]\nserver_url = "{fake_url}"\n{extra}')
    return project


def _cli(project: Path, monkeypatch, *args: str):
    from typer.testing import CliRunner

    from gpuflex._config import reload_project_config
    from gpuflex.cli import app as cli

    monkeypatch.chdir(project)  # the project file is found from here
    reload_project_config()
    try:
        return CliRunner().invoke(cli, list(args))
    finally:
        monkeypatch.chdir(ROOT)
        reload_project_config()  # forget this project's file for the tests after


def test_gpuflex_deploy_publishes_one_app_and_teardown_stops_it(fake_modal, tmp_path, monkeypatch):
    project = _project(tmp_path, "modal-deploy", fake_modal.url, app_name="gpuflex-test")
    result = _cli(project, monkeypatch, "deploy", str(project / "app.py"), "--backend", "modal")
    assert result.exit_code == 0, result.output
    assert "dep_one" in result.output and "create" in result.output
    published = fake_modal.servicer.of("AppPublish")
    assert len(published) == 1 and published[0].name == "gpuflex-test-prod", "one app per environment"
    assert len(fake_modal.servicer.of("AppCreate")) <= 1, "no ephemeral run per endpoint"
    assert set(fake_modal.servicer.functions_by_name()) == {"gpuflex_dep_one.*", "gpuflex_dep_two.*"}
    app_id = published[0].app_id
    assert not fake_modal.servicer.stopped(app_id), "a deployment outlives gpuflex deploy"
    result = _cli(project, monkeypatch, "teardown", "--backend", "modal", "--env", "prod")
    assert result.exit_code == 0, result.output
    assert [r.app_id for r in fake_modal.servicer.of("AppStop")] == [app_id]
    assert fake_modal.servicer.stopped(app_id), "teardown stops the deployed app (and its warm container)"


def test_projects_deploy_under_apps_of_their_own(fake_modal, tmp_path, monkeypatch):
    for name in ("alpha", "beta"):
        result = _cli(_project(tmp_path, name, fake_modal.url), monkeypatch, "deploy",
                      str(tmp_path / name / "app.py"), "--backend", "modal")
        assert result.exit_code == 0, result.output
    names = sorted(name for _, name in fake_modal.servicer.deployments)
    assert names == ["gpuflex-alpha-prod", "gpuflex-beta-prod"], "a second project's deploy replaced the first"


def test_default_app_name_comes_from_the_project(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'My_Project'\n")
    (tmp_path / "sub").mkdir()
    assert default_app_name(tmp_path / "sub") == "gpuflex-my_project"
    other = tmp_path / "other dir"
    other.mkdir()
    (other / "gpuflex.toml").write_text("")
    assert default_app_name(other) == "gpuflex-other-dir"
    with pytest.raises(ValueError, match="app_name"):
        ModalConfig(app_name="not a name!")


def test_image_pipeline_builds_its_modal_app_unchanged(fake_modal):
    sys.path.insert(0, str(ROOT / "examples" / "image_pipeline"))
    try:
        import pipeline
    finally:
        sys.path.remove(str(ROOT / "examples" / "image_pipeline"))
    endpoints = [e for e in vars(pipeline).values() if isinstance(e, gpuflex.Endpoint)]
    assert len(endpoints) == 3
    config = ModalConfig(server_url=fake_modal.url)
    with backend_in_use(lambda: ModalBackend(config)) as backend:
        b = build_bundle(ROOT / "examples" / "image_pipeline")
        for endpoint in endpoints:
            get_session().run(backend.deploy(endpoint.spec, b))
        get_session().run(backend.ensure_running())
    created = fake_modal.servicer.functions_by_name()
    assert len(created) == 3
    gpus = {name: fn.resources.gpu_config.gpu_type for name, (fn, _) in created.items()}
    assert any(gpu for gpu in gpus.values()), f"the image generator asks for a GPU: {gpus}"


# -- image builds -------------------------------------------------------------------------------------------------


def test_build_logs_reach_the_user_and_a_failed_build_says_why(fake_modal):
    fake_modal.servicer.build.update(lines=["Collecting numpy==2.0.0", "ERROR: No matching distribution found"],
                                     fail=True)
    with collect_worker_output() as records, backend_in_use(lambda: ModalBackend(ModalConfig(
            server_url=fake_modal.url, app_name="gpuflex-builds"))):
        with pytest.raises(errors.ConfigError, match="No matching distribution found"):
            app.small("x")
    line = next((r for r in records if "Collecting numpy" in r.getMessage()), None)
    assert line is not None, "the build log was not forwarded"
    assert "[gpuflex-builds image-build]" in line.getMessage()


def test_image_builds_are_waited_for_as_long_as_build_timeout_says(fake_modal):
    fake_modal.servicer.build.update(seconds=3, lines=["building..."])
    with backend_in_use(lambda: ModalBackend(ModalConfig(server_url=fake_modal.url, build_timeout=1))):
        with pytest.raises(errors.BackendUnavailable, match="build_timeout=1"):
            app.small("x")
    with backend_in_use(lambda: ModalBackend(ModalConfig(server_url=fake_modal.url, connect_timeout=1))):
        assert app.small("x") == "X", "no build_timeout: a build longer than connect_timeout is waited for"


# -- failures that must be fast and clear ---------------------------------------------------------------------


def test_missing_token_is_a_clear_error(monkeypatch, tmp_path):
    for name in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "MODAL_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "none.toml"))
    with backend_in_use(ModalBackend) as backend:
        with pytest.raises(errors.AuthenticationError, match="modal token new"):
            get_session().run(backend.deploy(app.small.spec, build_bundle(Path(__file__).parent)))


def test_unreachable_api_fails_within_the_connect_timeout(monkeypatch, tmp_path):
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-do-not-print")
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "none.toml"))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = ModalConfig(server_url=f"http://127.0.0.1:{port}", connect_timeout=2)
    with backend_in_use(lambda: ModalBackend(config)):
        begun = time.monotonic()
        with pytest.raises(errors.BackendError) as caught:
            app.small("x")
        waited = time.monotonic() - begun
    assert "as-do-not-print" not in str(caught.value)
    # the bound itself is the behaviour under test: connect_timeout=2 s, where Modal's client alone retries for
    # about a minute; the margin is wide so a loaded machine does not fail it
    assert waited < 30, f"waited {waited:.0f} s"


# -- the container side, run here -----------------------------------------------------------------------------


def _runner(endpoint):
    b = build_bundle(Path(__file__).parent)
    return EndpointRunner(worker_init(endpoint.spec, b, report_started=False), root=str(b.root))


async def _run(runner, *args):
    return [item async for item in runner.run(encode_call(None, args, {}).to_bytes())]


def test_runner_runs_calls_with_the_shared_envelope():
    async def main():
        runner = _runner(app.small)
        await runner.start()
        started, done = await _run(runner, "abc")
        assert started[0] == "started" and started[2] <= done[3]
        assert done[:2] == ("done", "ok") and decode_outcome(Payload.from_bytes(done[2])) == "ABC"
        failing = _runner(app.fails)
        await failing.start()
        _, done = await _run(failing, "gone")
        assert done[1] == "error"
        with pytest.raises(KeyError, match="gone") as caught:
            decode_outcome(Payload.from_bytes(done[2]))
        assert isinstance(caught.value.__cause__, errors.RemoteTraceback)

    asyncio.run(main())


def test_runner_streams_generators_and_keeps_class_state():
    async def main():
        gen = _runner(app.countdown)
        await gen.start()
        items = await _run(gen, 3)
        chunks = [decode_outcome(Payload.from_bytes(item[1])) for item in items if item[0] == "chunk"]
        assert chunks == [3, 2, 1] and items[-1][:2] == ("done", "ok")
        counter = _runner(app.Counter)
        await counter.start()  # setup() runs here, once
        results = []
        for step in (1, 5):
            done = (await _run(counter, step))[-1]
            results.append(decode_outcome(Payload.from_bytes(done[2])))
        assert results == [101, 106]

    asyncio.run(main())


def test_an_endpoint_modal_cannot_run_has_no_price_rather_than_a_free_one():
    price = ModalBackend().price(gpuflex.endpoint(name="m_nowhere", gpu="RTX4090")(lambda: None).spec)
    assert price.billing == "unknown" and "not runnable on Modal" in price.source
