"""A job's status and error tell the truth, on the local backend: an unsendable result is a failure with its reason
(status, reason, hooks), a failing ``setup()`` says so, remote tracebacks name the project's files, a call that does
not match the signature fails in the caller, and a bad backend option is a ConfigError naming the backend."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

import gpuflex
from gpuflex import JobStatus, hookimpl
from gpuflex._plugins import get_plugin_manager
from gpuflex.client._session import get_session
from gpuflex.errors import ConfigError, RemoteTraceback, SerializationError
from gpuflex.testing import load_module

WAIT = 60.0
ROOT = Path(__file__).resolve().parent.parent


app = load_module(Path(__file__).with_name("_gpuflex_app.py"))


class Finished:
    """A plugin that records what ``gpuflex_job_finished`` saw (the ledger and dev server learn a job's end so)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, JobStatus, str | None]] = []

    @hookimpl
    def gpuflex_job_finished(self, job: gpuflex.Job) -> None:
        self.seen.append((job.endpoint, job.status, job.reason))


@pytest.fixture
def finished():
    plugin = Finished()
    get_plugin_manager().register(plugin)
    yield plugin
    get_plugin_manager().unregister(plugin)


def test_an_unsendable_result_is_a_failure_with_its_reason(finished):
    job = app.unsendable.spawn()
    with pytest.raises(SerializationError, match="cannot be sent back"):
        job.result(timeout=WAIT)
    assert job.status is JobStatus.FAILED
    assert job.reason is not None and "SerializationError" in job.reason and "lock" in job.reason.lower()
    assert ("outcome_unsendable", JobStatus.FAILED, job.reason) in finished.seen


def test_an_unsendable_chunk_fails_the_generator():
    job = app.unsendable_chunks.spawn()
    chunks = job.iter_chunks()
    assert next(chunks) == 1
    with pytest.raises(SerializationError, match="yielded a lock"):
        list(chunks)
    assert job.status is JobStatus.FAILED and "SerializationError" in (job.reason or "")


def test_a_user_exception_is_named_in_the_reason(finished):
    job = app.raises.spawn("bad input")
    with pytest.raises(ValueError, match="bad input"):
        job.result(timeout=WAIT)
    assert job.status is JobStatus.FAILED and job.reason == "ValueError: bad input"
    assert ("outcome_raises", JobStatus.FAILED, "ValueError: bad input") in finished.seen


def test_a_failing_setup_names_setup():
    instance = app.SetupFails()
    job = instance.spawn()
    with pytest.raises(ZeroDivisionError) as info:
        job.result(timeout=WAIT)
    notes = getattr(info.value, "__notes__", [])
    assert any("SetupFails.setup()" in note for note in notes), notes
    assert "SetupFails.setup()" in (job.reason or "") and "ZeroDivisionError" in (job.reason or "")
    assert "SetupFails.setup()" in str(info.value.__cause__)  # the remote traceback shows the note too


def test_remote_tracebacks_name_the_projects_files():
    with pytest.raises(ValueError) as info:
        app.raises("where")
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert f'File "{ROOT / "tests" / "_gpuflex_app.py"}"' in cause.tb, cause.tb
    assert "bundles" not in cause.tb


def test_a_call_that_does_not_match_the_signature_fails_in_the_caller():
    session = get_session()
    before = session.accepted
    with pytest.raises(TypeError, match=r"outcome_signature\(\): missing a required argument: 'b'"):
        app.takes_two(1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'd'"):
        app.takes_two(1, 2, d=3)
    with pytest.raises(TypeError, match="too many positional arguments"):
        app.takes_two.spawn(1, 2, 3)
    with pytest.raises(TypeError, match="missing a required argument"):
        list(app.takes_two.map([1, 2]))
    methods = app.Methods()
    with pytest.raises(TypeError, match=r"outcome_methods\.add\(\): missing a required argument: 'b'"):
        methods.add(1)
    with pytest.raises(TypeError, match="too many positional arguments"):
        methods.double(1, 2)
    assert session.accepted == before, "a call that cannot bind its arguments must not reach a backend"
    assert app.takes_two(1, 2, c=3) == 6 and methods.add(1, 2) == 3 and methods.double(4) == 8


def test_a_bad_option_value_is_a_config_error_naming_the_backend():
    with gpuflex.use("local", hourly_rate=-1), pytest.raises(ConfigError) as info:
        app.takes_two(1, 2)
    assert "local" in str(info.value) and "hourly_rate" in str(info.value)


def test_waiting_for_a_result_can_be_cancelled_without_cancelling_the_job():
    import asyncio

    gate = threading.Event()

    async def main() -> Any:
        job = app.nap.spawn(0.3)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(job.aresult(), 0.01)
        gate.set()
        return job

    job = asyncio.run(main())
    assert gate.is_set() and job.result(timeout=WAIT) == 0.3 and job.status is JobStatus.COMPLETED
