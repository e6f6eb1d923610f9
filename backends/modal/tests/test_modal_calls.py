"""Calls through the fake, whose containers are processes of their own running Modal's container entrypoint:
timeouts (the call's and the container's start-up), cancels that stop the user's code, retries, killed
containers, names, and worker output reaching the caller as it happens."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

import _modal_calls_app as mc
import pytest
from gpuflex_modal import ModalBackend, ModalConfig

from gpuflex import errors
from gpuflex.testing import backend_in_use, wait_until


@pytest.fixture
def marks():
    Path(mc.DIR).mkdir(parents=True, exist_ok=True)
    return Path(mc.DIR)


@pytest.fixture
def tag():
    return uuid.uuid4().hex[:10]


def modal(fake, **options):
    return lambda: ModalBackend(ModalConfig(server_url=fake.url, **options))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- timeouts --------------------------------------------------------------------------------------------------


def test_setup_longer_than_the_call_timeout_neither_crash_loops_nor_counts(fake_modal, marks):
    """timeout=1 bounds the call; setup() takes 3 s under startup_timeout: the call works, and its run (the
    deadline's start, the cost) begins after setup(), not at submit."""
    (marks / "setup-done").unlink(missing_ok=True)
    with backend_in_use(modal(fake_modal)):
        assert mc.SlowSetup()("ok") == "ok"
        functions = fake_modal.servicer.functions_by_name()
        function = next(f for name, (f, _) in functions.items() if "mc_slow_setup" in name)
        assert (function.timeout_secs, function.startup_timeout_secs) == (1, 1200)
    assert len(fake_modal.servicer.workers.started) == 1, "the container started once: no crash loop"


def test_run_time_and_cost_start_when_the_call_starts_in_its_container(fake_modal, marks):
    (marks / "setup-done").unlink(missing_ok=True)
    with backend_in_use(modal(fake_modal)):
        job = mc.SlowSetup().spawn("ok")
        assert job.result(timeout=60) == "ok"
    setup_done = float((marks / "setup-done").read_text())
    assert job.started_at is not None and job.started_at >= setup_done, "the cold start was counted as run time"
    assert job.queue_time is not None and job.queue_time > 0


def test_a_start_up_timeout_is_not_the_calls_timeout(fake_modal):
    with backend_in_use(modal(fake_modal, startup_timeout=1)):
        with pytest.raises(errors.JobFailed, match="startup_timeout") as caught:
            mc.NeverStarts()()
    assert not isinstance(caught.value, errors.JobTimeout)


def test_setup_errors_come_back_as_their_own_type(fake_modal):
    with backend_in_use(modal(fake_modal)):
        with pytest.raises(LookupError, match="setup failed on purpose"):
            mc.BadSetup()()


# -- cancels stop the user's code --------------------------------------------------------------------------------


def test_cancel_stops_async_user_code_in_the_container(fake_modal, marks, tag):
    with backend_in_use(modal(fake_modal)):
        job = mc.async_wait.spawn(tag)
        wait_until((marks / f"{tag}-started").exists, "the call to start")
        job.cancel()
        with pytest.raises(errors.JobCancelled):
            job.result(timeout=60)
        wait_until((marks / f"{tag}-cancelled").exists, "the user's coroutine to be cancelled")
        pid = int((marks / f"{tag}-started").read_text())
        assert alive(pid), "an async call is cancelled without stopping its container"


def test_cancel_of_a_sync_call_stops_its_container(fake_modal, marks, tag):
    """A thread cannot be interrupted: the container is terminated, so no next input shares it with the old
    call, and the endpoint keeps serving on a new one."""
    with backend_in_use(modal(fake_modal)):
        job = mc.sync_wait.spawn(tag)
        wait_until((marks / f"{tag}-started").exists, "the call to start")
        pid = int((marks / f"{tag}-started").read_text())
        job.cancel()
        with pytest.raises(errors.JobCancelled):
            job.result(timeout=60)
        wait_until(lambda: not alive(pid), "the container running the cancelled call to stop")
        requests = fake_modal.servicer.of("FunctionCallCancel")
        assert requests and requests[-1].terminate_containers


def test_a_call_cancelled_while_queued_is_stopped_when_it_starts(fake_modal, marks, tag):
    """Modal names a call (its id, to cancel it by) only once it starts: a cancel before that is reported at
    once, and sent to Modal when the call starts."""
    workers = fake_modal.servicer.workers
    with backend_in_use(modal(fake_modal)):
        job = mc.SlowAsync().spawn(tag)
        wait_until(lambda: bool(workers.inputs), "the call to be queued at Modal")
        job.cancel()
        with pytest.raises(errors.JobCancelled):
            job.result(timeout=60)
        (queued,) = workers.inputs.values()
        wait_until(lambda: queued.call.result is not None, "Modal to end the call")
    assert fake_modal.servicer.of("FunctionCallCancel"), "the cancel reached Modal"
    assert queued.call.result[0].status == queued.call.result[0].GENERIC_STATUS_TERMINATED


# -- retries and killed containers ------------------------------------------------------------------------------


def test_retries_retry_an_exception_the_function_raised(fake_modal, marks, tag):
    with backend_in_use(modal(fake_modal)):
        job = mc.flaky.spawn(tag)
        assert job.result(timeout=60) == 3
        assert job.attempts == 3
    assert not any(f.retry_policy.retries for f, _ in fake_modal.servicer.functions_by_name().values()), \
        "gpuflex retries; Modal's retry policy would only see successes"


def test_a_killed_container_reschedules_its_call(fake_modal, marks, tag):
    """Modal reschedules the input of a container that dies on a new container: the call survives."""
    with backend_in_use(modal(fake_modal)):
        job = mc.die_once.spawn(tag)
        survivor = job.result(timeout=60)
    dead = int((marks / f"{tag}-died").read_text())
    assert survivor != dead and not alive(dead)
    assert len(fake_modal.servicer.workers.started) == 2


def test_a_container_that_always_dies_is_a_lost_worker_after_the_retries(fake_modal):
    with backend_in_use(modal(fake_modal)):
        job = mc.die_always.spawn()
        with pytest.raises(errors.WorkerLost, match="lost"):
            job.result(timeout=120)
        assert job.attempts == 2, "retries=1: one more attempt after Modal gave up on the first"


def test_inputs_and_results_over_the_inline_limit_travel_as_blobs(fake_modal):
    blob = os.urandom(3 * 2**20)  # over Modal's 2 MiB inline limit, both ways
    with backend_in_use(modal(fake_modal)):
        assert mc.echo_bytes(blob) == blob
    assert len(fake_modal.servicer.blobs) >= 2, "the input and the result went through the blob store"


# -- names --------------------------------------------------------------------------------------------------------


def test_names_differing_only_in_dash_or_underscore_do_not_collide(fake_modal):
    with backend_in_use(modal(fake_modal)):
        assert (mc.embed_dash(), mc.embed_underscore(), mc.cafe()) == ("dash", "underscore", "café")
    names = set(fake_modal.servicer.functions_by_name())
    assert len([n for n in names if "embed" in n]) == 2
    assert all(n.isascii() for n in names)


# -- worker output ------------------------------------------------------------------------------------------------


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def has(self, text: str) -> bool:
        return any(text in r.getMessage() for r in self.records)


@pytest.fixture
def worker_lines():
    handler = _Lines()
    logger = logging.getLogger("gpuflex.worker")
    saved = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(saved)


def test_worker_output_reaches_the_caller_while_the_call_runs(fake_modal, marks, tag, worker_lines):
    with backend_in_use(modal(fake_modal)):
        job = mc.talk.spawn(tag)
        for text in ("hello from the worker", "a line on stderr", "a log record"):
            wait_until(lambda text=text: worker_lines.has(f"{tag} {text}"), f"the worker's {text!r}")
        assert not job.done(), "the lines arrived while the call was still running"
        (marks / f"{tag}-gate").touch()
        assert job.result(timeout=60) == "seen"
    mine = {(r.gpuflex_stream, r.getMessage().split("] ", 1)[-1]) for r in worker_lines.records
            if tag in r.getMessage()}
    assert {("stdout", f"{tag} hello from the worker"), ("stderr", f"{tag} a line on stderr"),
            ("log", f"WARNING user-code: {tag} a log record")} <= mine
    line = next(r for r in worker_lines.records if f"{tag} hello from the worker" in r.getMessage())
    assert line.gpuflex_endpoint == "mc_talk" and line.gpuflex_worker.startswith("ta-"), "endpoint and container"


def test_a_setup_traceback_reaches_the_caller(fake_modal, worker_lines):
    with backend_in_use(modal(fake_modal)):
        with pytest.raises(LookupError):
            mc.BadSetup()()
        wait_until(lambda: worker_lines.has("setup failed on purpose"), "setup()'s traceback in the output")
