"""Every hookspec, implemented by a plugin and triggered through the public API on the local backend.

Each ``test_hook_<name>`` registers a plugin on the plugin manager, calls an endpoint from ``_gpuflex_app.py``
(module-level endpoints that workers import; see its docstring), and checks what the hook saw and what it changed.
Each test starts and ends with ``gpuflex.shutdown()``: the session caches bundles, specs and prices.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pytest
from gpuflex_local import LocalBackend

import gpuflex
from gpuflex import Bundle, Cost, EndpointSpec, JobStatus, Price, WorkerInfo, hookimpl, hookspecs
from gpuflex._plugins import get_plugin_manager
from gpuflex._registry import reset_registry
from gpuflex.errors import QuotaExceeded, UnknownBackendError
from gpuflex.testing import load_module

WAIT = 60.0


app = load_module(Path(__file__).with_name("_gpuflex_app.py"))
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def register():
    """Register plugins for one test, on a fresh session; stop its workers and unregister them afterwards."""
    gpuflex.shutdown()
    pm = get_plugin_manager()
    added: list[object] = []

    def add(plugin: object) -> Any:
        pm.register(plugin)
        added.append(plugin)
        return plugin

    yield add
    gpuflex.shutdown()
    for plugin in added:
        pm.unregister(plugin)


def _wait_until(predicate, what: str, limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


# -- registration ---------------------------------------------------------------------------------------------


class HookLocalBackend(LocalBackend):
    """The local backend under another name, as a third-party plugin would register it."""

    name: ClassVar[str] = "hook-local"
    aliases: ClassVar[tuple[str, ...]] = ()


def test_hook_register_backends(register):
    class Plugin:
        calls = 0

        @hookimpl
        def gpuflex_register_backends(self):
            Plugin.calls += 1
            return HookLocalBackend

    register(Plugin())
    reset_registry()  # the registry collects once; make it collect with this plugin
    try:
        assert "hook-local" in gpuflex.list_backends()
        assert "local" in gpuflex.list_backends()
        assert Plugin.calls == 1
        with gpuflex.use("hook-local"):
            job = app.hook_register.spawn(41)
            assert job.result(timeout=WAIT) == 41
        assert job.backend == "hook-local"
        assert Plugin.calls == 1  # collected once, not per call
    finally:
        gpuflex.shutdown()
        reset_registry()


# -- configuration ----------------------------------------------------------------------------------------------


def test_hook_endpoint_spec(register):
    seen: list[EndpointSpec] = []

    class Plugin:
        @hookimpl
        def gpuflex_endpoint_spec(self, spec):
            seen.append(spec)
            if spec.name == "hook_env":
                return attrs.evolve(spec, env={**spec.env, "GPUFLEX_HOOK_ENV": "from-the-hook"})
            return None

    register(Plugin())
    assert "GPUFLEX_HOOK_ENV" not in os.environ
    assert app.hook_env("GPUFLEX_HOOK_ENV") == "from-the-hook"
    assert app.hook_env("GPUFLEX_HOOK_ENV") == "from-the-hook"
    assert seen == [app.hook_env.spec]  # once per endpoint and backend, with the spec as decorated
    assert app.hook_env.spec.env == {}  # the endpoint itself is unchanged


def test_hook_endpoint_spec_results_chain_in_plugin_order(register):
    def appender(letter: str) -> object:
        class Plugin:
            @hookimpl
            def gpuflex_endpoint_spec(self, spec):
                value = spec.env.get("GPUFLEX_HOOK_ENV", "") + letter
                return attrs.evolve(spec, env={**spec.env, "GPUFLEX_HOOK_ENV": value})

        return Plugin()

    class KeepsIt:
        @hookimpl
        def gpuflex_endpoint_spec(self, spec):
            return None

    register(appender("a"))
    register(KeepsIt())
    register(appender("b"))
    # each plugin sees the previous one's result, in pluggy's order (the last registered runs first)
    assert app.hook_env("GPUFLEX_HOOK_ENV") == "ba"


def test_hook_select_backend(register):
    class Plugin:
        answer: str | None = "hook-not-installed"
        seen: ClassVar[list[EndpointSpec]] = []

        @hookimpl
        def gpuflex_select_backend(self, spec):
            Plugin.seen.append(spec)
            return Plugin.answer if spec.name == "hook_select" else None

    register(Plugin())
    with pytest.raises(UnknownBackendError) as info:
        app.hook_select(1)
    assert info.value.name == "hook-not-installed"
    assert Plugin.seen == [app.hook_select.spec]
    Plugin.answer = "local-cuda"  # an alias of the local backend
    job = app.hook_select.spawn(2)
    assert job.result(timeout=WAIT) == 2
    assert job.backend == "local"
    with gpuflex.use("local"):  # gpuflex.use wins: the hook is not asked
        app.hook_select(3)
    assert len(Plugin.seen) == 2


def test_hook_bundle_ignore(register):
    roots: list[str] = []

    class Plugin:
        @hookimpl
        def gpuflex_bundle_ignore(self, root):
            roots.append(root)
            return ["tests/test_bundle.py", "*.md"]

    register(Plugin())
    files = app.hook_bundle()
    assert roots == [str(PROJECT_ROOT)]
    assert "tests/_gpuflex_app.py" in files
    assert "tests/test_hooks.py" in files
    assert "tests/test_bundle.py" not in files
    assert (PROJECT_ROOT / "README.md").exists()
    assert not [f for f in files if f.endswith(".md")]


def test_hook_deployed(register):
    deploys: list[tuple[EndpointSpec, Bundle, str]] = []

    class Plugin:
        @hookimpl
        def gpuflex_deployed(self, spec, bundle, backend):
            deploys.append((spec, bundle, backend))

    register(Plugin())
    assert app.hook_deployed("x") == "x"
    assert app.hook_deployed("y") == "y"
    ((spec, bundle, backend),) = deploys  # deployed once, before the first call
    assert spec == app.hook_deployed.spec
    assert backend == "local"
    assert isinstance(bundle, Bundle)
    assert "tests/_gpuflex_app.py" in {f.path for f in bundle.files}
    assert (bundle.root / "tests" / "_gpuflex_app.py").is_file()


# -- prices and budgets ------------------------------------------------------------------------------------------


def test_hook_price(register):
    seen: list[tuple[str, str, Price]] = []

    class Plugin:
        @hookimpl
        def gpuflex_price(self, spec, backend, default):
            seen.append((spec.name, backend, default))
            if spec.name == "hook_price":
                return Price(usd_per_hour=3600.0, billing="uptime", source="test plugin")
            return None

    register(Plugin())
    job = app.hook_price.spawn(0.1)
    assert job.result(timeout=WAIT) == 0.1
    assert job.run_time is not None and job.run_time >= 0.1
    assert job.cost.usd == pytest.approx(job.run_time, rel=1e-6)  # $3600/h is $1 per second
    (name, backend, default), *_ = seen
    assert (name, backend) == ("hook_price", "local")
    assert default.usd_per_hour == 0.0  # the local backend's own price, with no hourly_rate set
    assert gpuflex.costs()["hook_price"].cost.usd == pytest.approx(job.cost.usd)


def test_hook_check_budget(register):
    seen: list[tuple[str, Cost, str]] = []

    class Plugin:
        refuse = False

        @hookimpl
        def gpuflex_check_budget(self, spec, spent, backend):
            seen.append((spec.name, spent, backend))
            return "the team's GPU budget is spent" if Plugin.refuse else None

    register(Plugin())
    assert app.hook_budget(1) == 1  # allowed
    Plugin.refuse = True
    with pytest.raises(QuotaExceeded, match="the team's GPU budget is spent"):
        app.hook_budget(2)
    assert [(name, backend) for name, _, backend in seen] == [("hook_budget", "local")] * 2
    assert all(isinstance(spent, Cost) for _, spent, _ in seen)
    assert gpuflex.costs()["hook_budget"].calls == 1  # the refused job never ran


# -- job lifecycle ----------------------------------------------------------------------------------------------


def test_hook_job_submitted(register):
    seen: list[tuple[gpuflex.Job, JobStatus, int]] = []

    class Plugin:
        @hookimpl
        def gpuflex_job_submitted(self, job):
            seen.append((job, job.status, job.attempts))

    register(Plugin())
    job = app.hook_submitted.spawn("v")
    assert job.result(timeout=WAIT) == "v"
    assert seen == [(job, JobStatus.QUEUED, 0)]  # once, before the first attempt
    assert job.endpoint == "hook_submitted" and job.backend == "local"


def test_hook_job_started(register):
    seen: list[tuple[gpuflex.Job, JobStatus, str | None, float | None]] = []

    class Plugin:
        @hookimpl
        def gpuflex_job_started(self, job):
            seen.append((job, job.status, job.worker, job.started_at))

    register(Plugin())
    job = app.hook_started.spawn("v")
    job.result(timeout=WAIT)
    ((started_job, status, worker, started_at),) = seen
    assert started_job is job
    assert status is JobStatus.RUNNING
    assert worker is not None and worker == job.worker
    assert started_at is not None and job.submitted_at <= started_at <= job.finished_at


def test_hook_job_retrying(register, tmp_path):
    seen: list[tuple[gpuflex.Job, str, int]] = []

    class Plugin:
        @hookimpl
        def gpuflex_job_retrying(self, job, reason):
            seen.append((job, reason, job.attempts))

    register(Plugin())
    job = app.hook_retrying.spawn(str(tmp_path / "marker"))
    assert job.result(timeout=WAIT) == "second attempt"
    ((retried, reason, attempts),) = seen
    assert retried is job
    assert isinstance(reason, str) and reason
    assert attempts == 1  # called after the first attempt failed
    assert job.attempts == 2


def test_hook_job_finished(register):
    seen: list[tuple[str, JobStatus, bool, float | None]] = []
    done = threading.Event()

    class Plugin:
        @hookimpl
        def gpuflex_job_finished(self, job):
            seen.append((job.id, job.status, job.done(), job.finished_at))
            done.set()

    register(Plugin())
    ok = app.hook_finished.spawn(1)
    assert ok.result(timeout=WAIT) == 1
    failed = app.hook_raises.spawn("raised in the worker")
    with pytest.raises(RuntimeError, match="raised in the worker"):
        failed.result(timeout=WAIT)
    _wait_until(lambda: len(seen) == 2, "both finished hooks")
    by_id = {job_id: rest for job_id, *rest in seen}
    assert by_id[ok.id][0] is JobStatus.COMPLETED
    assert by_id[failed.id][0] is JobStatus.FAILED
    assert all(is_done and finished_at is not None for _, is_done, finished_at in by_id.values())
    assert len(seen) == 2  # exactly once per job


def test_hook_job_finished_for_refused_jobs(register):
    statuses: list[JobStatus] = []

    class Plugin:
        @hookimpl
        def gpuflex_check_budget(self):
            return "no budget"

        @hookimpl
        def gpuflex_job_finished(self, job):
            statuses.append(job.status)

    register(Plugin())
    with pytest.raises(QuotaExceeded):
        app.hook_finished(1)
    _wait_until(lambda: statuses, "the finished hook")
    assert statuses == [JobStatus.FAILED]


# -- worker lifecycle -----------------------------------------------------------------------------------------


def test_hook_worker_started(register):
    seen: list[tuple[WorkerInfo, str]] = []

    class Plugin:
        @hookimpl
        def gpuflex_worker_started(self, worker, backend):
            seen.append((attrs.evolve(worker), backend))

    register(Plugin())
    pid = app.hook_workers()
    ((worker, backend),) = seen
    assert backend == "local"
    assert worker.endpoint == "hook_workers"
    assert worker.pid == pid != os.getpid()
    assert worker.id


def test_hook_worker_stopped(register):
    started: list[str] = []
    stopped: list[tuple[str, int | None, str, str]] = []

    class Plugin:
        @hookimpl
        def gpuflex_worker_started(self, worker):
            started.append(worker.id)

        @hookimpl
        def gpuflex_worker_stopped(self, worker, backend, reason):
            stopped.append((worker.id, worker.pid, backend, reason))

    register(Plugin())
    pid = app.hook_workers()  # idle_timeout=0.2: the worker stops soon after
    _wait_until(lambda: stopped, "the idle worker to stop")
    ((worker_id, worker_pid, backend, reason),) = stopped
    assert started == [worker_id]
    assert worker_pid == pid
    assert backend == "local"
    assert isinstance(reason, str)


def test_hook_worker_output(register):
    seen: list[tuple[str, str, str, str, str]] = []

    class Plugin:
        @hookimpl
        def gpuflex_worker_output(self, endpoint, worker, stream, text, backend):
            seen.append((endpoint, worker, stream, text, backend))

    register(Plugin())
    quiet = logging.getLogger("gpuflex.worker")
    level, quiet.level = quiet.level, logging.CRITICAL  # the logger's level filters the log, not the hook
    try:
        job = app.hook_output.spawn("a line")
        assert job.result(timeout=WAIT) == "a line"
        _wait_until(lambda: len(seen) >= 2, "both lines")
    finally:
        quiet.setLevel(level)
    printed, logged = seen
    assert printed == ("hook_output", job.worker, "stdout", "a line", "local")
    assert logged[:3] == ("hook_output", job.worker, "log") and logged[4] == "local"
    assert logged[3].startswith("WARNING") and "logged a line" in logged[3]


# -- order, and every hook has a test -------------------------------------------------------------------------


def test_hook_order(register, tmp_path):
    events: list[str] = []

    class Everything:
        @hookimpl
        def gpuflex_endpoint_spec(self, spec):
            events.append("endpoint_spec")

        @hookimpl
        def gpuflex_select_backend(self, spec):
            events.append("select_backend")

        @hookimpl
        def gpuflex_bundle_ignore(self, root):
            events.append("bundle_ignore")

        @hookimpl
        def gpuflex_deployed(self, spec, bundle, backend):
            events.append("deployed")

        @hookimpl
        def gpuflex_price(self, spec, backend, default):
            events.append("price")

        @hookimpl
        def gpuflex_check_budget(self, spec, spent, backend):
            events.append("check_budget")

        @hookimpl
        def gpuflex_job_submitted(self, job):
            events.append("job_submitted")

        @hookimpl
        def gpuflex_job_started(self, job):
            events.append("job_started")

        @hookimpl
        def gpuflex_job_retrying(self, job, reason):
            events.append("job_retrying")

        @hookimpl
        def gpuflex_job_finished(self, job):
            events.append("job_finished")

        @hookimpl
        def gpuflex_worker_started(self, worker, backend):
            events.append("worker_started")

    register(Everything())
    job = app.hook_order.spawn(str(tmp_path / "marker"))
    assert job.result(timeout=WAIT) == "second attempt"
    _wait_until(lambda: "job_finished" in events, "the finished hook")
    lifecycle = [e for e in events if e.startswith("job_")]
    assert lifecycle == ["job_submitted", "job_started", "job_retrying", "job_started", "job_finished"]
    first = {name: events.index(name) for name in set(events)}
    assert first["select_backend"] < first["endpoint_spec"] < first["deployed"] < first["job_submitted"]
    assert first["bundle_ignore"] < first["deployed"]
    assert first["check_budget"] < first["job_submitted"]
    assert first["worker_started"] < first["job_started"]


def _hookspec_names() -> list[str]:
    return sorted(
        name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(fn, "gpuflex_spec")
    )


def test_every_hookspec_has_a_test():
    names = _hookspec_names()
    assert len(names) >= 13 and all(name.startswith("gpuflex_") for name in names)
    tests = {name for name, _ in inspect.getmembers(sys.modules[__name__], inspect.isfunction)}
    missing = [name for name in names if f"test_hook_{name.removeprefix('gpuflex_')}" not in tests]
    assert missing == []


def test_every_hook_test_names_a_hookspec():
    hooks = {name.removeprefix("gpuflex_") for name in _hookspec_names()}
    tests = [name for name, _ in inspect.getmembers(sys.modules[__name__], inspect.isfunction)
             if name.startswith("test_hook_") and name != "test_hook_order"]
    strays = [name for name in tests if not any(name.removeprefix("test_hook_").startswith(h) for h in hooks)]
    assert strays == []
