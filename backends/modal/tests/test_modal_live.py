"""Against real Modal: what only the live service can show (the conformance suite itself runs from tests/live).

Marked ``live`` (they run with ``--run-live``, which ``nox -s live`` passes) and skipped unless Modal credentials
are configured (a token or OAuth settings, in the environment or ~/.modal.toml, found as Modal's client finds
them). Each test runs ephemeral apps, which stop when the test ends; the deploy test stops (tears down) the app it
deployed even when it fails. GPUs cost money: only ``test_live_any_gpu`` asks for one.
"""

from __future__ import annotations

import logging
import os
import uuid

import _modal_calls_app as mc
import pytest
from gpuflex_modal import ModalBackend, ModalConfig
from gpuflex_modal._auth import modal_credentials

import gpuflex
from gpuflex import errors
from gpuflex.client._session import get_session
from gpuflex.testing import backend_in_use, wait_until


def _credentials_reason() -> str | None:
    try:
        return None if modal_credentials() is not None else "no Modal credentials configured"
    except errors.GpuflexError as exc:
        return f"Modal credentials unusable: {exc}"


pytestmark = [pytest.mark.live, pytest.mark.skipif(_credentials_reason() is not None,
                                                   reason=_credentials_reason() or "")]
LIVE_APP = f"gpuflex-live-{uuid.uuid4().hex[:8]}"


def modal(**options):
    return lambda: ModalBackend(ModalConfig(app_name=LIVE_APP, **options))


def test_live_setup_longer_than_the_call_timeout():
    """Modal's startup_timeout is set apart from the call's timeout (1 s here, setup() 3 s)."""
    with backend_in_use(modal()):
        job = mc.SlowSetup().spawn("ok")
        assert job.result(timeout=600) == "ok"
        assert job.queue_time is not None and job.run_time is not None and job.queue_time > job.run_time, \
            "the cold start and setup() were counted as the call's run"


def test_live_start_up_timeout_is_named_as_such():
    """However Modal reports a container that does not start in time (a timeout or a failure), it is a start-up
    failure, not the call's timeout."""
    with backend_in_use(modal(startup_timeout=5)):
        with pytest.raises(errors.JobFailed, match="start") as caught:
            mc.NeverStarts()()
    assert not isinstance(caught.value, errors.JobTimeout)


def test_live_cancel_of_a_sync_call_replaces_its_container():
    tag = uuid.uuid4().hex[:8]
    with backend_in_use(modal()):
        job = mc.sync_wait.spawn(tag)
        wait_until(lambda: job.status is gpuflex.JobStatus.RUNNING, "the call to start", limit=600)
        job.cancel()
        with pytest.raises(errors.JobCancelled):
            job.result(timeout=120)
        after = mc.sync_wait.spawn(f"{tag}-after", 0)
        after.result(timeout=600)
        assert after.worker != job.worker, "the cancelled call's container took the next input"


def test_live_worker_output_arrives_while_the_call_runs():
    tag = uuid.uuid4().hex[:8]
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("gpuflex.worker").addHandler(handler)
    try:
        with backend_in_use(modal()):
            job = mc.talk.spawn(tag, 60.0)
            for text in ("hello from the worker", "a line on stderr", "a log record"):
                wait_until(lambda text=text: any(f"{tag} {text}" in r.getMessage() for r in records),
                           f"the worker's {text!r} in the caller's log", limit=600)
            assert not job.done(), "the lines arrived while the call ran"
            job.result(timeout=120)
    finally:
        logging.getLogger("gpuflex.worker").removeHandler(handler)


def test_live_failed_build_names_the_error():
    with backend_in_use(modal()):
        with pytest.raises(errors.ConfigError, match="gpuflex-no-such-package-4c1d") as caught:
            mc.bad_build()
    assert "build log" in str(caught.value), "the build's own lines are in the error"


def test_live_names_modal_takes():
    with backend_in_use(modal()):
        assert (mc.embed_dash(), mc.embed_underscore(), mc.cafe()) == ("dash", "underscore", "café")


def test_live_large_input_goes_through_blobs():
    blob = os.urandom(3 * 2**20)
    with backend_in_use(modal()):
        assert mc.echo_bytes(blob) == blob


def test_live_any_gpu():
    """'any' is in Modal's protocol but no longer in its GPU guide: check Modal still takes it."""
    with backend_in_use(modal()):
        assert isinstance(mc.any_gpu(), int)


def test_live_deploy_then_teardown_stops_the_app():
    import modal as modal_sdk

    name = f"{LIVE_APP}-deployed"
    backend = ModalBackend(ModalConfig(app_name=name))
    session = get_session()
    session.install_backend(backend)
    try:
        session.run(backend.deploy(mc.pid.spec, session.bundle_for(mc.pid)))
        session.run(backend.publish())
        assert modal_sdk.App.lookup(name).app_id
    finally:
        session.run(backend.teardown())
        session.run(session.remove_backend(backend))
    with pytest.raises(modal_sdk.exception.NotFoundError):
        modal_sdk.App.lookup(name)


def test_live_release_deploys_web_endpoints_plans_nothing_twice_and_tears_down():
    """gpuflex deploy on Modal: Modal takes a class with a generator method and an ASGI web method, serves plain
    JSON at the URL it reports, reads back the settings it was sent (a second plan changes nothing), keeps the
    version, and the teardown leaves no app. Without MODAL_PROXY_TOKEN_ID/SECRET the endpoint is public for the
    test's few minutes (it answers a constant)."""
    import httpx
    import modal as modal_sdk
    from gpuflex_modal._release import PROXY_ENV

    from gpuflex.backend import PlanAction, Release, ReleaseEndpoint

    token = (os.environ.get(PROXY_ENV[0]), os.environ.get(PROXY_ENV[1]))
    backend = ModalBackend(ModalConfig(app_name=LIVE_APP, web_auth="proxy" if all(token) else "public"))
    session = get_session()
    session.install_backend(backend)
    env = f"t{uuid.uuid4().hex[:8]}"
    release = Release(app="live", env=env, endpoints=(ReleaseEndpoint(mc.cafe.spec, session.bundle_for(mc.cafe)),))
    try:
        plans = session.run(backend.plan_release(release))
        assert [p.action for p in plans] == [PlanAction.CREATE]
        deployed = session.run(backend.apply_release(release, plans))
        url = deployed[0].url
        assert url and url.startswith("https://"), deployed
        headers = {"Modal-Key": token[0], "Modal-Secret": token[1]} if all(token) else {}
        answer = httpx.post(url, json={}, headers=headers, timeout=600)
        assert answer.status_code == 200 and answer.json() == "café", answer.text
        if all(token):
            assert httpx.post(url, json={}, timeout=120).status_code == 401
        again = session.run(backend.plan_release(release))
        assert [p.action for p in again] == [PlanAction.UNCHANGED], again
        versions = session.run(backend.versions(env, mc.cafe.spec.name))
        assert len(versions) == 1 and versions[0].current
    finally:
        session.run(backend.apply_release(Release(app="live", env=env),
                                          session.run(backend.plan_release(Release(app="live", env=env)))))
        session.run(session.remove_backend(backend))
    with pytest.raises(modal_sdk.exception.NotFoundError):
        modal_sdk.App.lookup(backend.releases.app_name(env))
