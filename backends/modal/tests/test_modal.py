"""The Modal backend offline: the real Modal client runs ``app.run()`` and ``app.deploy()`` against a fake control
plane (built on the helper the modal wheel ships), and the tests assert what would be created; the container-side
runner executes real endpoints in process; credentials and network failures give clear errors fast.

Calls through the fake are the conformance suite's (test_conformance.py); test_live_conformance runs it against
real Modal with --run-live and a token.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path

import pytest
from gpuflex_modal import ModalBackend, ModalConfig, plan_for
from gpuflex_modal._runner import EndpointRunner

import gpuflex
from gpuflex import errors
from gpuflex._bundle import build_bundle
from gpuflex._envelope import decode_outcome, encode_call
from gpuflex.backend import Payload
from gpuflex.client._session import get_session
from gpuflex.testing import CHECKS, backend_in_use, run_check
from gpuflex.worker import worker_init

sys.path.insert(0, str(Path(__file__).parent))
import _modal_app as app  # noqa: E402
from _fake_modal import FakeModalServer  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def fake_modal(monkeypatch):
    server = FakeModalServer()
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-test-secret-value")
    yield server
    gpuflex.shutdown()
    server.close()


@pytest.fixture(autouse=True)
def _fresh_session():
    gpuflex.shutdown()
    yield
    gpuflex.shutdown()


def deploy(backend, *endpoints):
    """Deploy (record) the endpoints, then run the app the way the next call would."""
    session = get_session()
    b = build_bundle(Path(__file__).parent)
    for endpoint in endpoints:
        session.run(backend.deploy(endpoint.spec, b))
    session.run(backend.ensure_running())
    return b


# -- translation ------------------------------------------------------------------------------------------------


def test_plan_maps_every_setting():
    plan = plan_for(app.big.spec)
    assert plan.gpu == "H100:2"
    assert (plan.min_containers, plan.max_containers, plan.scaledown_window) == (1, 5, 90)
    assert (plan.timeout, plan.retries, plan.max_inputs) == (120, 2, 4)
    assert plan.python_version == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert "numpy==2.0.0" in plan.pip_packages and any(p.startswith("cloudpickle") for p in plan.pip_packages)
    assert plan.secrets == ("HF_TOKEN",) and plan.env == {"MODE": "fast"}
    assert plan_for(app.Counter.spec).is_class and plan_for(app.Counter.spec).gpu == "any"


def test_plan_refuses_what_modal_cannot_take():
    with pytest.raises(errors.ConfigError, match="Modal does not offer"):
        plan_for(gpuflex.endpoint(name="m_rtx", gpu="RTX4090")(lambda: None).spec)
    with pytest.raises(errors.ConfigError, match="3600"):
        plan_for(gpuflex.endpoint(name="m_idle", idle_timeout=7200)(lambda: None).spec)
    short = plan_for(gpuflex.endpoint(name="m_short", idle_timeout=0.5)(lambda: None).spec)
    assert short.scaledown_window == 2 and "2 s" in short.notes[0]


def test_price_is_per_second_with_the_scaledown_tail():
    backend = ModalBackend()
    price = backend.price(app.small.spec)
    assert price.billing == "per-second" and price.usd_per_hour == pytest.approx(0.000222 * 3600)
    assert price.tail_seconds == 60  # no warm container: each call keeps one up for scaledown_window
    warm = backend.price(app.big.spec)
    assert warm.usd_per_hour == pytest.approx(0.001097 * 2 * 3600) and warm.tail_seconds == 0
    assert warm.idle_usd_per_hour == pytest.approx(warm.usd_per_hour)


# -- what the real client sends -----------------------------------------------------------------------------------


def test_app_run_creates_exactly_the_planned_classes(fake_modal, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "never-sent")
    config = ModalConfig(server_url=fake_modal.url)
    with backend_in_use(lambda: ModalBackend(config)) as backend:
        deploy(backend, app.big, app.small, app.Counter)
    functions = fake_modal.servicer.functions()
    big = functions["gpuflex_modal_big.*"][0]
    assert big.resources.gpu_config.gpu_type == "H100" and big.resources.gpu_config.count == 2
    assert (big.autoscaler_settings.min_containers, big.autoscaler_settings.max_containers,
            big.autoscaler_settings.scaledown_window) == (1, 5, 90)
    assert big.timeout_secs == 120
    assert big.retry_policy.retries == 2
    assert big.max_concurrent_inputs == 4
    assert len(big.secret_ids) == 2, "the HF_TOKEN secret by name, plus the env"
    secret_names = [r.deployment_name for r in fake_modal.servicer.of("SecretGetOrCreate")]
    assert "HF_TOKEN" in secret_names
    small = functions["gpuflex_modal_small.*"][0]
    assert small.resources.gpu_config.gpu_type == "L4" and small.autoscaler_settings.max_containers == 1
    counter = functions["gpuflex_modal_counter.*"][0]
    assert counter.resources.gpu_config.gpu_type.upper() == "ANY"
    steps = [line for layers in fake_modal.servicer.dockerfiles() for line in layers]
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert any(line.startswith(f"FROM python:{python}") for line in steps), steps
    assert any("numpy==2.0.0" in line and "uv" in line for line in steps), steps
    assert all("never-sent" not in str(request) for _, request in fake_modal.servicer.requests)
    mounted = fake_modal.servicer.mounted_files()
    assert "/root/gpuflex-bundle/_modal_app.py" in mounted, "the bundle is shipped as local source"
    assert any(f.endswith("/gpuflex/runtime/_runner.py") for f in mounted), "gpuflex's runtime is shipped with it"


def test_hot_reload_runs_the_app_again_with_the_new_bundle(fake_modal):
    config = ModalConfig(server_url=fake_modal.url)
    with backend_in_use(lambda: ModalBackend(config)) as backend:
        deploy(backend, app.small)
        get_session().run(backend.ensure_running())
        assert len(fake_modal.servicer.of("AppCreate")) == 1, "nothing changed: no new run"
        deploy(backend, app.small)
    assert len(fake_modal.servicer.of("AppCreate")) == 2, "a redeploy runs the app anew"
    assert len(fake_modal.servicer.of("AppClientDisconnect")) >= 1, "the previous run was stopped"


def test_gpuflex_deploy_publishes_one_app_without_ephemeral_runs(fake_modal, tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text("[project]\nname = 'modal-deploy'\n")
    (project / "app.py").write_text(
        "import gpuflex\n\n@gpuflex.endpoint(name='dep_one', gpu='L4')\ndef one(x):\n    return x\n\n"
        "@gpuflex.endpoint(name='dep_two')\ndef two(x):\n    return x\n")
    (project / "gpuflex.toml").write_text(f'[backends.modal]\nserver_url = "{fake_modal.url}"\n'
                                          'app_name = "gpuflex-test"\n')
    from typer.testing import CliRunner

    from gpuflex._config import reload_project_config
    from gpuflex.cli import app as cli

    monkeypatch.chdir(project)  # the project file is found from here
    reload_project_config()
    try:
        result = CliRunner().invoke(cli, ["deploy", str(project / "app.py"), "--backend", "modal"])
    finally:
        monkeypatch.undo()
        reload_project_config()  # forget this project's file for the tests after
    assert result.exit_code == 0, result.output
    assert "published on modal" in result.output
    published = fake_modal.servicer.of("AppPublish")
    assert len(published) == 1 and published[0].name == "gpuflex-test"
    assert len(fake_modal.servicer.of("AppCreate")) <= 1, "no ephemeral run per endpoint"
    assert set(fake_modal.servicer.functions()) == {"gpuflex_dep_one.*", "gpuflex_dep_two.*"}


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
    created = fake_modal.servicer.functions()
    assert len(created) == 3
    gpus = {name: fn.resources.gpu_config.gpu_type for name, (fn, _) in created.items()}
    assert any(gpu for gpu in gpus.values()), f"the image generator asks for a GPU: {gpus}"


# -- failures that must be fast and clear ---------------------------------------------------------------------


def test_missing_token_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("MODAL_TOKEN_ID", raising=False)
    monkeypatch.delenv("MODAL_TOKEN_SECRET", raising=False)
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "none.toml"))
    import modal.config

    monkeypatch.setattr(modal.config, "config", {})
    with backend_in_use(ModalBackend) as backend:
        with pytest.raises(errors.AuthenticationError, match="modal token new"):
            get_session().run(backend.deploy(app.small.spec, build_bundle(Path(__file__).parent)))


def test_unreachable_api_fails_within_the_connect_timeout(monkeypatch):
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-do-not-print")
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
    return EndpointRunner(worker_init(endpoint.spec, b, report_started=False))


def test_runner_runs_calls_with_the_shared_envelope():
    async def main():
        runner = _runner(app.small)
        await runner.start()
        status, outcome, _ = await runner.call(encode_call(None, ("abc",), {}).to_bytes())
        assert status == "ok" and decode_outcome(Payload.from_bytes(outcome)) == "ABC"
        failing = _runner(app.fails)
        await failing.start()
        status, outcome, _ = await failing.call(encode_call(None, ("gone",), {}).to_bytes())
        assert status == "error"
        with pytest.raises(KeyError, match="gone") as caught:
            decode_outcome(Payload.from_bytes(outcome))
        assert isinstance(caught.value.__cause__, errors.RemoteTraceback)

    asyncio.run(main())


def test_runner_streams_generators_and_keeps_class_state():
    async def main():
        gen = _runner(app.countdown)
        await gen.start()
        items = [item async for item in gen.stream(encode_call(None, (3,), {}).to_bytes())]
        chunks = [decode_outcome(Payload.from_bytes(data)) for kind, data in items if kind == "chunk"]
        assert chunks == [3, 2, 1] and items[-1][0] == "ok"
        counter = _runner(app.Counter)
        await counter.start()  # setup() runs here, once
        results = []
        for step in (1, 5):
            _, outcome, _ = await counter.call(encode_call(None, (step,), {}).to_bytes())
            results.append(decode_outcome(Payload.from_bytes(outcome)))
        assert results == [101, 106]

    asyncio.run(main())


# -- live ------------------------------------------------------------------------------------------------------


@pytest.mark.live
@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
def test_live_conformance(check):
    """Against real Modal: needs --run-live and a Modal token; it creates (and stops) an ephemeral app."""
    run_check(check, ModalBackend)
