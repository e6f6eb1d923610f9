"""The conformance suite: what "a backend works" means, as plain functions taking a backend factory.

Each check builds a backend with ``make_backend()``, routes the suite's endpoints to it, exercises one behaviour
through the public API, and raises ``AssertionError`` when the backend falls short. A check that needs a
capability the backend declares missing raises :class:`CheckSkipped` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import typing
import uuid
from pathlib import Path
from typing import Any

import gpuflex
from gpuflex import errors
from gpuflex.client._session import get_session

from . import _endpoints as ep
from . import _harness
from ._harness import WAIT, BackendFactory, Check, CheckSkipped, backend_in_use, wait_until
from ._harness import needs as _needs
from ._harness import tmp_dir as _tmp
from ._interrupts import check_interrupt

__all__ = ["CHECKS", "BackendFactory", "Check", "CheckSkipped", "backend_in_use", "run_check", "wait_until"]

# -- endpoint kinds ----------------------------------------------------------------------------------------------


def check_function(make_backend: BackendFactory) -> None:
    with backend_in_use(make_backend):
        assert ep.echo(21) == 21
        assert ep.echo("a", suffix="b") == "ab"
        assert ep.echo({"nested": [1, 2.5, None]}) == {"nested": [1, 2.5, None]}
        blob = bytes(range(256)) * 4096  # 1 MiB: big enough to travel out of band
        assert ep.echo(blob) == blob
        assert ep.echo.local(5) == 5


def check_async_function(make_backend: BackendFactory) -> None:
    async def main() -> list[Any]:
        pending = [ep.async_echo(i) for i in range(5)]
        return list(await asyncio.gather(*pending))

    with backend_in_use(make_backend):
        assert asyncio.run(main()) == [0, 1, 2, 3, 4]

        async def sync_from_async() -> Any:
            return await ep.echo.aio("from a loop")

        assert asyncio.run(sync_from_async()) == "from a loop"


def check_generator_streams(make_backend: BackendFactory) -> None:
    with backend_in_use(make_backend) as backend:
        _needs(backend, "streaming")
        gate = _tmp() / "gate"
        chunks = ep.stream(5, str(gate))
        assert next(chunks) == 0, "the first chunk must arrive while the generator still runs"
        gate.touch()
        assert list(chunks) == [1, 2, 3, 4], "a chunk was lost, or the generator was not streamed"


def check_async_generator_streams(make_backend: BackendFactory) -> None:
    async def main(gate: Path) -> list[int]:
        seen = []
        async for chunk in ep.async_stream(4, str(gate)):
            seen.append(chunk)
            if chunk == 0:
                gate.touch()  # noqa: ASYNC240 - a tiny local file, on purpose in the loop
        return seen

    with backend_in_use(make_backend) as backend:
        _needs(backend, "streaming")
        assert asyncio.run(main(_tmp() / "gate")) == [0, 1, 2, 3]


def check_class_endpoint(make_backend: BackendFactory) -> None:
    with backend_in_use(make_backend) as backend:
        _needs(backend, "classes")
        counter = ep.Counter()
        first, second, third = counter(), counter(2), counter()
        assert [first["calls"], second["calls"], third["calls"]] == [1, 3, 4], "state was not kept between calls"
        assert {first["setups"], third["setups"]} == {1} and first["token"] == third["token"], "setup() re-ran"
        assert asyncio.run(typing.cast(Any, counter).double.aio(4)) == 8
        assert list(counter.letters("abc")) == ["a", "b", "c"]
        try:
            getattr(counter, "missing")(1)  # noqa: B009 - the attribute does not exist on purpose
        except AttributeError as exc:
            assert "missing" in str(exc)
        else:
            raise AssertionError("calling an unknown method must raise AttributeError")


# -- errors ------------------------------------------------------------------------------------------------------


def check_remote_exceptions(make_backend: BackendFactory) -> None:
    with backend_in_use(make_backend):
        for kind, expected in (("value", ValueError), ("custom", ep.ConformanceError), ("other", KeyError)):
            try:
                ep.fail(kind)
            except expected as exc:
                assert isinstance(exc.__cause__, errors.RemoteTraceback), "the remote traceback is not attached"
                assert "def fail" in exc.__cause__.tb or "fail" in exc.__cause__.tb
            else:
                raise AssertionError(f"fail({kind!r}) did not raise {expected.__name__}")
        try:
            ep.fail("unpicklable")
        except errors.RemoteError as exc:
            assert "UnpicklableError" in str(exc) and "a/b" in str(exc)
        else:
            raise AssertionError("an exception that cannot be rebuilt must become gpuflex.RemoteError")
        try:
            typing.cast(Any, ep.echo)(1, 2, 3)
        except TypeError:
            pass
        else:
            raise AssertionError("calling with the wrong arguments must raise TypeError like a local call")


def check_bad_input(make_backend: BackendFactory) -> None:
    with backend_in_use(make_backend):
        before = get_session().accepted
        try:
            ep.echo(threading.Lock())
        except errors.SerializationError as exc:
            assert "argument 0" in str(exc) and "lock" in str(exc).lower()
        else:
            raise AssertionError("an unpicklable argument must raise SerializationError before submitting")
        assert get_session().accepted == before, "a job was accepted for arguments that cannot be sent"
        try:
            ep.unpicklable_result()
        except errors.SerializationError as exc:
            assert "cannot be sent back" in str(exc)
        else:
            raise AssertionError("an unpicklable result must raise SerializationError")
        try:
            with gpuflex.use("no-such-backend"):
                ep.echo(1)
        except errors.UnknownBackendError as exc:
            assert "no-such-backend" in str(exc) and "installed backends" in str(exc)
        else:
            raise AssertionError("an unknown backend name must raise UnknownBackendError")
        assert ep.echo("still works") == "still works"


# -- job control -------------------------------------------------------------------------------------------------


def check_job_api(make_backend: BackendFactory) -> None:
    with backend_in_use(make_backend) as backend:
        started = _tmp() / "started"
        job = ep.sleep.spawn(1.0, str(started))
        assert isinstance(job, gpuflex.Job) and job.id
        try:
            job.result(timeout=0.01)
        except TimeoutError:
            pass
        else:
            raise AssertionError("result(timeout=) must raise TimeoutError while the job runs")
        assert job.result(timeout=WAIT) == 1.0
        assert job.status is gpuflex.JobStatus.COMPLETED and job.attempts == 1
        assert job.run_time is not None and job.run_time > 0 and job.queue_time is not None
        assert job.worker, "the job does not say which worker ran it"
        assert job.backend == backend.name
        results = list(ep.echo.map(range(20)))
        assert results == list(range(20))
        assert sorted(ep.echo.map(range(20), order=False)) == list(range(20))


def check_cancel(make_backend: BackendFactory) -> None:
    with backend_in_use(make_backend) as backend:
        _needs(backend, "cancel")
        for fn in (ep.sleep, ep.async_sleep):
            started = _tmp() / "started"
            job = fn.spawn(60, str(started))
            wait_until(started.exists, "the job to start")
            job.cancel()
            try:
                job.result(timeout=WAIT)
            except errors.JobCancelled as exc:
                assert job.id in str(exc)
            else:
                raise AssertionError("a cancelled job must raise JobCancelled")
            assert job.status is gpuflex.JobStatus.CANCELLED
        assert ep.sleep(0.01) == 0.01, "the endpoint must keep working after a cancel"


def check_timeout(make_backend: BackendFactory) -> None:
    with backend_in_use(make_backend):
        job = ep.sleep_past_timeout.spawn(60)
        try:
            job.result(timeout=WAIT)
        except errors.JobTimeout as exc:
            assert "timeout" in str(exc) and isinstance(exc, TimeoutError)
        else:
            raise AssertionError("a job past its endpoint's timeout must raise JobTimeout")
        assert job.status is gpuflex.JobStatus.TIMED_OUT
        assert ep.sleep_past_timeout(0.01) == 0.01


def check_retry_after_worker_killed(make_backend: BackendFactory) -> None:
    with backend_in_use(make_backend) as backend:
        _needs(backend, "kill_worker")
        job = ep.die_once.spawn(str(_tmp() / "marker"))
        assert job.result(timeout=WAIT) == "survived"
        assert job.attempts == 2, f"expected a retry after the worker died, got {job.attempts} attempt(s)"
        job = ep.die_always.spawn()
        try:
            job.result(timeout=WAIT)
        except errors.WorkerLost as exc:
            assert "died" in str(exc) or "lost" in str(exc), str(exc)
        else:
            raise AssertionError("a job whose worker dies with no retries left must raise WorkerLost")
        assert job.status is gpuflex.JobStatus.FAILED and job.reason


# -- scaling and cost ------------------------------------------------------------------------------------------


def check_scaling_bounds(make_backend: BackendFactory) -> None:
    with backend_in_use(make_backend) as backend:
        _needs(backend, "scaling")
        pids = set(ep.scaled.map([0.3] * 6))
        assert 1 <= len(pids) <= 2, f"max_workers=2 but {len(pids)} workers ran the jobs"

        def live(name: str) -> int:
            workers = get_session().run(backend.workers())
            return sum(1 for w in workers if w.endpoint == name and w.state.value in ("IDLE", "BUSY", "STARTING"))

        wait_until(lambda: live("conformance_scaled") == 0, "idle workers to be stopped after idle_timeout")
        first = ep.warm()
        wait_until(lambda: live("conformance_warm") == 1, "min_workers=1 to keep one worker")
        time.sleep(1.5)
        assert live("conformance_warm") == 1, "a min_workers worker was stopped"
        assert ep.warm() == first, "min_workers=1, max_workers=1 must reuse the warm worker"


def check_cost_recorded(make_backend: BackendFactory) -> None:
    with backend_in_use(make_backend) as backend:
        before = gpuflex.costs().get("conformance_sleep")
        calls_before = before.calls if before else 0
        job = ep.sleep.spawn(0.2)
        job.result(timeout=WAIT)
        assert isinstance(job.cost, gpuflex.Cost)
        price = backend.price(ep.sleep.spec)
        assert job.cost.rule == price.billing
        # the billed seconds already include the rule's rounding and idle tail: the cost is exactly their price
        expected = job.cost.billed_seconds * price.usd_per_second if price.billing != "free" else 0.0
        assert abs(job.cost.usd - expected) < 1e-9
        if price.usd_per_hour > 0:
            assert job.cost.usd > 0
        after = gpuflex.costs()["conformance_sleep"]
        assert after.calls == calls_before + 1


_RELOAD_SOURCE = """
import gpuflex


@gpuflex.endpoint(name="{name}")
def probe() -> str:
    return "{answer}"
"""


def check_hot_reload(make_backend: BackendFactory) -> None:
    """Edit an endpoint's source between calls: the next call runs the new code, with no restart."""
    import importlib
    import sys
    import uuid

    project = _tmp()
    module_name = f"gpuflex_reload_probe_{uuid.uuid4().hex[:8]}"
    source = project / f"{module_name}.py"
    endpoint_name = f"reload_{module_name[-8:]}"
    source.write_text(_RELOAD_SOURCE.format(name=endpoint_name, answer="before"))
    (project / "pyproject.toml").write_text("[project]\nname = 'probe'\n")
    sys.path.insert(0, str(project))
    try:
        module = importlib.import_module(module_name)
        with backend_in_use(make_backend):
            assert module.probe() == "before"
            source.write_text(_RELOAD_SOURCE.format(name=endpoint_name, answer="after"))
            gpuflex.reload()
            assert module.probe() == "after", "the call after an edit did not run the new code"
    finally:
        sys.path.remove(str(project))
        sys.modules.pop(module_name, None)


def check_worker_output(make_backend: BackendFactory) -> None:
    """What the endpoint prints and logs reaches the caller's ``gpuflex.worker`` logger while the call runs,
    marked with the endpoint and the worker."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(logging.DEBUG)
    logger = logging.getLogger("gpuflex.worker")
    saved_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        with backend_in_use(make_backend) as backend:
            _needs(backend, "worker_output")
            tag, gate = f"chatty-{uuid.uuid4().hex[:8]}", _tmp() / "gate"
            job = ep.chatty.spawn(tag, str(gate))
            expected = {("stdout", f"{tag} to stdout"), ("stderr", f"{tag} to stderr"),
                        ("log", f"WARNING conformance: {tag} logged")}

            def seen() -> set[tuple[str, str]]:
                return {(getattr(r, "gpuflex_stream", ""), r.getMessage().split("] ", 1)[-1]) for r in records}

            wait_until(lambda: expected <= seen(), f"the worker's output {sorted(expected)} (seen: {sorted(seen())})")
            assert not job.status.is_terminal, "the output must arrive while the call runs, not after it"
            gate.touch()
            assert job.result(timeout=WAIT) == tag
            mine = [r for r in records if tag in r.getMessage()]
            assert all(getattr(r, "gpuflex_endpoint", None) == "conformance_chatty" for r in mine)
            assert all(getattr(r, "gpuflex_worker", None) for r in mine), "each line names its worker"
            assert all(f"[conformance_chatty {r.__dict__['gpuflex_worker']}]" in r.getMessage() for r in mine)
            warning = next(r for r in mine if getattr(r, "gpuflex_stream", "") == "log")
            assert warning.levelno == logging.WARNING, "a log record keeps its level"
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved_level)


def check_batching(make_backend: BackendFactory) -> None:
    """Calls of a batched endpoint are grouped on the worker (up to max_batch_size), each caller gets its own
    item's result, a batch's exception fails every call in it, and a result list of the wrong length is a
    BatchError."""
    batched: Any = ep.batched  # callers pass one item; the function's own hints say list -> list
    with backend_in_use(make_backend) as backend:
        _needs(backend, "batching")
        jobs = [batched.spawn(i) for i in range(8)]
        results = [job.result(timeout=WAIT) for job in jobs]
        assert [doubled for doubled, _ in results] == [2 * i for i in range(8)], "each caller gets its own result"
        batches = {batch for _, batch in results}
        assert all(1 <= len(batch) <= 4 for batch in batches), f"batches over max_batch_size: {batches}"
        assert max(len(batch) for batch in batches) > 1, f"8 calls at once were never grouped: {batches}"
        assert sorted(i for batch in batches for i in batch) == list(range(8)), "every item ran exactly once"
        assert batched(21) == (42, (21,)), "a call alone still runs, after at most batch_wait_ms"
        with contextlib.suppress(errors.BatchError):
            batched(1, 2)
            raise AssertionError("a batched endpoint takes exactly one item per call")
        mixed = [batched.spawn(i) for i in (-1, 5, 6)]
        for item, job in zip((-1, 5, 6), mixed, strict=True):
            try:
                doubled, batch = job.result(timeout=WAIT)
            except ep.ConformanceError:
                continue  # it shared the failing item's batch (the -1 call itself always lands here)
            assert item != -1 and -1 not in batch and doubled == 2 * item
        try:
            batched(-2)
        except errors.BatchError as exc:
            assert "1 items and returned 0 results" in str(exc), str(exc)
        else:
            raise AssertionError("a batched function returning too few results must raise BatchError")


def check_endpoint_env(make_backend: BackendFactory) -> None:
    """An endpoint's ``env=`` and ``secrets=`` reach its workers, and the secret's value shows in no log record
    and on no command line (of the worker, its parent, or any process on this machine)."""
    token = f"conformance-secret-{uuid.uuid4().hex}"
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(logging.DEBUG)
    loggers = [logging.getLogger(), logging.getLogger("gpuflex"), logging.getLogger("gpuflex.worker")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
    logging.getLogger("gpuflex").setLevel(logging.DEBUG)
    saved = os.environ.get(ep.SECRET_NAME)
    os.environ[ep.SECRET_NAME] = token
    try:
        with backend_in_use(make_backend):
            seen = ep.environ()
            commands = _command_lines_holding(token)
        assert seen["env"] == ep.ENV_VALUE, f"env= did not reach the worker (it saw {seen['env']!r})"
        assert seen["secret"] == token, "secrets= did not reach the worker (its variable was not set there)"
        assert not any(token in line for line in seen["cmdlines"]), "a secret's value is on the worker's command line"
        assert not commands, f"a secret's value is on the command line of {len(commands)} process(es) here"
        leaked = [r.name for r in records if token in r.getMessage()]
        assert not leaked, f"a secret's value was logged (by {sorted(set(leaked))})"
    finally:
        if saved is None:
            os.environ.pop(ep.SECRET_NAME, None)
        else:
            os.environ[ep.SECRET_NAME] = saved
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


def _command_lines_holding(text: str) -> list[str]:
    """The pids of processes on this machine whose command line contains ``text`` (Linux: /proc)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if text.encode() in (entry / "cmdline").read_bytes():
                found.append(entry.name)
        except OSError:
            continue
    return found


CHECKS: list[Check] = [
    check_function,
    check_async_function,
    check_generator_streams,
    check_async_generator_streams,
    check_class_endpoint,
    check_remote_exceptions,
    check_bad_input,
    check_job_api,
    check_cancel,
    check_timeout,
    check_retry_after_worker_killed,
    check_scaling_bounds,
    check_cost_recorded,
    check_hot_reload,
    check_worker_output,
    check_batching,
    check_endpoint_env,
    check_interrupt,
]


def run_check(check: Check, make_backend: BackendFactory) -> None:
    """Run one check. A missing capability raises :class:`CheckSkipped`, which becomes a skip when pytest runs the
    check (and stays ``CheckSkipped`` in a plain script, even with pytest installed)."""
    try:
        check(make_backend)
    except CheckSkipped as exc:
        if not _harness.pytest_sessions:  # a plain script (which may import pytest, or inherit pytest's env)
            raise
        import pytest

        pytest.skip(str(exc))
