"""OpenTelemetry spans per job, checked with the SDK's in-memory exporter; off by default, and then never imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import gpuflex
from gpuflex._plugins import get_plugin_manager
from gpuflex._tracing import PLUGIN_NAME, install_tracing
from gpuflex.testing import load_module

APP = Path(__file__).resolve().parent / "apps" / "observe_app.py"


app = load_module(APP)


@pytest.fixture
def spans():
    gpuflex.shutdown()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    pm = get_plugin_manager()
    tracer = install_tracing(pm, tracer_provider=provider)
    yield exporter
    gpuflex.shutdown()
    pm.unregister(tracer)


def _trace_of(exporter, job_id):
    found = [s for s in exporter.get_finished_spans() if s.attributes.get("gpuflex.job_id") == job_id]
    return {s.name: s for s in found}, found


def test_a_job_is_one_trace_submit_queue_run_result(spans):
    job = app.slow.spawn(0.1)
    assert job.result(timeout=60) == "done"
    gpuflex.shutdown()  # every hook has run once the session is closed
    by_name, found = _trace_of(spans, job.id)
    assert sorted(by_name) == ["gpuflex.job slow", "gpuflex.queue", "gpuflex.result", "gpuflex.run",
                               "gpuflex.submit"]
    root = by_name["gpuflex.job slow"]
    assert root.parent is None
    assert {s.context.trace_id for s in found} == {root.context.trace_id}
    assert all(s.parent.span_id == root.context.span_id for s in found if s is not root)
    for span in found:
        assert span.attributes["gpuflex.endpoint"] == "slow" and span.attributes["gpuflex.backend"] == "local"
    assert root.attributes["gpuflex.worker"] == job.worker == by_name["gpuflex.run"].attributes["gpuflex.worker"]
    assert root.attributes["gpuflex.status"] == "COMPLETED" and root.attributes["gpuflex.attempts"] == 1
    assert root.status.status_code is StatusCode.UNSET
    submit, queue, run, result = (by_name[f"gpuflex.{n}"] for n in ("submit", "queue", "run", "result"))
    # one after the other, on the job's own clock
    assert root.start_time == submit.start_time == int(job.submitted_at * 1e9)
    assert submit.end_time <= queue.start_time and queue.end_time == run.start_time == int(job.started_at * 1e9)
    assert run.end_time == int(job.finished_at * 1e9) == result.start_time <= result.end_time <= root.end_time
    assert (run.end_time - run.start_time) / 1e9 == pytest.approx(job.run_time, abs=1e-6)
    assert (run.end_time - run.start_time) / 1e9 >= 0.1


def test_a_failed_job_ends_its_trace_in_error(spans):
    job = app.broken.spawn()
    with pytest.raises(ValueError):
        job.result(timeout=60)
    gpuflex.shutdown()
    by_name, _ = _trace_of(spans, job.id)
    root = by_name["gpuflex.job broken"]
    assert root.status.status_code is StatusCode.ERROR
    assert root.attributes["gpuflex.status"] == "FAILED"
    assert "gpuflex.run" in by_name


SCRIPT = textwrap.dedent('''
    import json, sys

    import gpuflex


    @gpuflex.endpoint(name="traced")
    def traced(x: int) -> int:
        return x + 1


    if __name__ == "__main__":
        exporter = None
        if "--sdk" in sys.argv:
            from opentelemetry import trace
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

            exporter = InMemorySpanExporter()
            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            trace.set_tracer_provider(provider)
            sys.modules.pop("opentelemetry", None)  # only gpuflex's own import counts below
        assert traced(1) == 2
        gpuflex.shutdown()
        from gpuflex._plugins import get_plugin_manager

        print(json.dumps({
            "registered": get_plugin_manager().get_plugin("gpuflex-tracing") is not None,
            "imported": "opentelemetry" in sys.modules,
            "spans": sorted(s.name for s in exporter.get_finished_spans()) if exporter else None,
        }))
''')


def _run(tmp_path, *args, tracing: str | None):
    script = tmp_path / "traced.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "GPUFLEX_HOME": str(tmp_path / "home")}
    env.pop("GPUFLEX_TRACING", None)
    if tracing is not None:
        env["GPUFLEX_TRACING"] = tracing
    done = subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=110)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_tracing_is_off_by_default_and_imports_nothing(tmp_path):
    assert _run(tmp_path, tracing=None) == {"registered": False, "imported": False, "spans": None}
    assert _run(tmp_path, tracing="0") == {"registered": False, "imported": False, "spans": None}


def test_gpuflex_tracing_turns_it_on_with_the_applications_provider(tmp_path):
    seen = _run(tmp_path, "--sdk", tracing="1")
    assert seen["registered"] and seen["imported"]
    assert seen["spans"] == ["gpuflex.job traced", "gpuflex.queue", "gpuflex.result", "gpuflex.run",
                             "gpuflex.submit"]


def test_an_existing_tracer_is_replaced_not_doubled():
    pm = get_plugin_manager()
    first = install_tracing(pm, tracer_provider=TracerProvider())
    second = install_tracing(pm, tracer_provider=TracerProvider())
    try:
        assert pm.get_plugin(PLUGIN_NAME) is second and not pm.is_registered(first)
    finally:
        pm.unregister(second)
