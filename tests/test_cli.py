"""The ``gpuflex`` command. Commands that run jobs or read project config from the working directory run in a
subprocess (a fresh session, its own cwd); the others through typer's CliRunner."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
from typer.testing import CliRunner

from gpuflex import Cost, JobStatus
from gpuflex._costs import summarize
from gpuflex._ledger import JobLedger, Retention, read_ledger
from gpuflex.cli import app
from gpuflex.errors import ConfigError

runner = CliRunner()

COMMANDS = ["serve", "run", "backends", "plan", "deploy", "teardown", "versions", "rollback", "call", "openapi",
            "jobs", "costs"]

SCRIPT = '''
import sys

import gpuflex


@gpuflex.endpoint(min_workers=2, max_workers=3, idle_timeout=30, dependencies=["attrs"])
def shout(word: str) -> str:
    return word.upper()


@gpuflex.endpoint(gpu="A100-80GB")
def on_gpu(x: int) -> int:
    return x


if __name__ == "__main__":
    print("RESULT", [shout(word) for word in sys.argv[1:]], flush=True)
'''


@pytest.fixture
def project(tmp_path):
    """A project with an app and ``hourly_rate = 3.6`` for the local backend ($0.001 per second)."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "pyproject.toml").write_text('[tool.gpuflex.backends.local]\nhourly_rate = 3.6\n')
    (root / "app.py").write_text(SCRIPT)
    return root


def gpuflex(*args, cwd, home):
    env = {**os.environ, "GPUFLEX_HOME": str(home), "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    env.pop("GPUFLEX_BACKEND", None)
    env.pop("GPUFLEX_MAX_COST", None)
    return subprocess.run([sys.executable, "-m", "gpuflex.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=110)


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_everywhere(command):
    result = runner.invoke(app, [command, "--help"] if command else ["--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and "gpuflex" in result.output


def test_backends_lists_local_with_capabilities():
    result = runner.invoke(app, ["backends"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "local" in result.output and "local-cuda" in result.output
    assert "streaming" in result.output


def test_unknown_backend_is_refused(project):
    result = runner.invoke(app, ["plan", str(project / "app.py"), "--backend", "nosuch"], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "unknown backend 'nosuch'" in result.output


def test_plan_shows_hardware_workers_and_costs(project, tmp_path):
    result = gpuflex("plan", "app.py", "--backend", "local", "--seconds-per-call", "2", cwd=project,
                     home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "shout on local" in text and "on_gpu on local" in text
    assert "min 2, max 3" in text and "idle timeout 30 s" in text
    assert "attrs" in text  # dependencies
    assert "A100-80GB" in text  # the GPU, normalised
    assert "$3.60/hour per worker, billed uptime (local hourly_rate)" in text
    assert "$7.20/hour (2 warm worker(s))" in text  # 2 min workers x $3.60
    assert "$0.002 (2 s billed for 2 s of work, by uptime)" in text  # one call: 2 s x $0.001/s
    assert "$2.00 (at 2 s per call)" in text  # 1,000 calls x 2 s x $0.001/s
    assert "idle tail" not in text  # uptime billing has none
    assert "Nothing was created" in text
    assert not (tmp_path / "home" / "jobs.db").exists()


def test_run_script_with_args_records_jobs_and_costs(project, tmp_path):
    home = tmp_path / "home"
    empty = gpuflex("jobs", cwd=project, home=home)
    assert empty.returncode == 0 and "No jobs recorded yet" in empty.stdout
    assert "No jobs recorded yet" in gpuflex("costs", cwd=project, home=home).stdout

    result = gpuflex("run", "app.py", "--backend", "local", "--", "hello", "world", "--loud", cwd=project, home=home)
    assert result.returncode == 0, result.stderr
    assert "RESULT ['HELLO', 'WORLD', '--LOUD']" in result.stdout

    records = read_ledger(home / "jobs.db")
    assert [r["endpoint"] for r in records] == ["shout"] * 3
    assert all(r["status"] == "COMPLETED" and r["backend"] == "local" for r in records)
    assert all(r["billing"] == "uptime" and r["cost_usd"] == pytest.approx(r["billed_seconds"] * 0.001)
               for r in records)

    jobs = gpuflex("jobs", cwd=project, home=home)
    assert jobs.returncode == 0
    assert sum("shout" in line and "COMPLETED" in line for line in jobs.stdout.splitlines()) == 3

    costs = gpuflex("costs", cwd=project, home=home)
    assert costs.returncode == 0
    (row,) = summarize(records)
    assert row.calls == 3
    line = next(line for line in costs.stdout.splitlines() if "shout" in line)
    assert " 3 " in line and "local" in line


def test_run_exit_code_and_gpuflex_errors(project, tmp_path):
    (project / "exits.py").write_text("import sys\nsys.exit(3)\n")
    assert gpuflex("run", "exits.py", cwd=project, home=tmp_path).returncode == 3
    (project / "raises.py").write_text("raise RuntimeError('bad input')\n")
    result = gpuflex("run", "raises.py", cwd=project, home=tmp_path)
    assert result.returncode == 1
    assert "RuntimeError: bad input" in result.stderr and "runpy" not in result.stderr


def test_max_cost_refuses_new_work(project, tmp_path):
    (project / "pyproject.toml").write_text('[tool.gpuflex.backends.local]\nhourly_rate = 36.0\n')
    (project / "spend.py").write_text(textwrap.dedent('''
        import time

        import gpuflex


        @gpuflex.endpoint
        def work() -> str:
            time.sleep(0.6)
            return "done"


        if __name__ == "__main__":
            print("first", work(), flush=True)
            print("second", work(), flush=True)
    '''))
    result = gpuflex("run", "spend.py", "--max-cost", "0.01", cwd=project, home=tmp_path / "home")
    assert "first done" in result.stdout  # under budget: runs, and costs $0.006 at $0.01/s
    # the second is expected to cost as much again: $0.012 would pass the budget, so it is refused before it runs
    assert "second" not in result.stdout
    assert result.returncode == 1
    assert "QuotaExceeded" in result.stderr and "budget" in result.stderr
    statuses = [r["status"] for r in read_ledger(tmp_path / "home" / "jobs.db")]
    assert statuses == ["COMPLETED", "FAILED"]


def test_deploy_and_teardown_local(project, tmp_path):
    (project / "small.py").write_text("import gpuflex\n\n\n@gpuflex.endpoint\ndef one() -> int:\n    return 1\n")
    result = gpuflex("deploy", "small.py", "--backend", "local", cwd=project, home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "one" in result.stdout and "live only while" in result.stdout and "gpuflex serve" in result.stdout
    result = gpuflex("deploy", "small.py", "--backend", "local", "--json", cwd=project, home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["endpoints"] == [{"name": "one", "backend": "local", "env": None,
                                                       "action": "deploy", "id": None, "url": None, "version": None}]
    for command in (["versions", "one"], ["rollback", "one"], ["call", "one"]):
        result = gpuflex(*command, "--backend", "local", cwd=project, home=tmp_path)
        assert result.returncode == 1 and "keeps no deployments" in result.stderr, result.stderr
    result = gpuflex("teardown", "--backend", "local", cwd=project, home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "local" in result.stdout


def test_app_import_error_is_reported(project, tmp_path):
    (project / "broken.py").write_text("def oops(:\n")
    result = gpuflex("plan", "broken.py", cwd=project, home=tmp_path)
    assert result.returncode == 1
    assert "SyntaxError" in result.stderr


class FakeJob:
    """What the ledger reads from a finished job."""

    def __init__(self, n, *, endpoint="ep", finished_at=None, reason=None, status=JobStatus.COMPLETED):
        self.id, self.endpoint, self.backend, self.status = f"j{n}", endpoint, "local", status
        self.finished_at = time.time() if finished_at is None else finished_at
        self.submitted_at = self.started_at = self.finished_at - 0.25
        self.queue_time, self.run_time = 0.0, 0.25
        self.attempts, self.worker, self.reason = 1, "w", reason
        self.cost = Cost(usd=0.5, billed_seconds=2.0, rule="uptime")
        self.tail = Cost()


def test_ledger_buffers_and_flushes_on_close(tmp_path):
    path = tmp_path / "jobs.db"
    ledger = JobLedger(path)
    writes = []
    real_flush = ledger.flush

    def counting_flush():
        writes.append(1)
        real_flush()

    ledger.flush = counting_flush
    for n in range(200):
        ledger.gpuflex_job_finished(job=FakeJob(n))
    ledger.close()
    records = read_ledger(path)
    assert len(records) == 200
    assert len(writes) < 20  # batched, not one write per job
    assert records[0]["cost_usd"] == 0.5 and records[0]["id"] == "j0"
    (row,) = summarize(records)
    assert row.calls == 200 and row.usd == pytest.approx(100.0)


def test_ledger_is_sqlite_in_wal_mode_indexed_by_endpoint_and_time(tmp_path):
    path = tmp_path / "jobs.db"
    ledger = JobLedger(path)
    ledger.gpuflex_job_finished(job=FakeJob(0))
    ledger.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        plan = db.execute("EXPLAIN QUERY PLAN SELECT * FROM jobs WHERE endpoint = 'ep' ORDER BY finished_at DESC "
                          "LIMIT 20").fetchall()
        assert "jobs_by_endpoint" in str(plan)
        plan = db.execute("EXPLAIN QUERY PLAN SELECT * FROM jobs WHERE finished_at < 5").fetchall()
        assert "jobs_by_time" in str(plan)


WRITER = """
import sys, time
from gpuflex import Cost, JobStatus
from gpuflex._ledger import JobLedger

class Job:
    def __init__(self, n):
        self.id, self.endpoint, self.backend = f"{sys.argv[2]}-{n}", sys.argv[2], "local"
        self.status = JobStatus.COMPLETED
        self.submitted_at = self.started_at = self.finished_at = time.time()
        self.queue_time = self.run_time = 0.0
        self.attempts, self.worker, self.reason = 1, None, None
        self.cost, self.tail = Cost(usd=0.01, billed_seconds=1.0, rule="uptime"), Cost()

ledger = JobLedger(__import__("pathlib").Path(sys.argv[1]))
for n in range(200):
    ledger.gpuflex_job_finished(job=Job(n))
    if n % 20 == 0:
        ledger.flush()  # many small transactions, interleaved with the other writers'
ledger.close()
"""


def test_several_processes_write_at_once(tmp_path):
    path = tmp_path / "jobs.db"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"writer{i}"]) for i in range(4)]
    assert [w.wait(timeout=100) for w in writers] == [0, 0, 0, 0]
    records = read_ledger(path)
    assert len(records) == 800
    assert {r["endpoint"] for r in records} == {"writer0", "writer1", "writer2", "writer3"}
    assert len({r["id"] for r in records}) == 800


def test_retention_keeps_recent_days_and_at_most_n_jobs(tmp_path):
    path = tmp_path / "jobs.db"
    ledger = JobLedger(path, Retention(keep_days=1, keep_jobs=50))
    old = time.time() - 2 * 86400
    for n in range(10):
        ledger.gpuflex_job_finished(job=FakeJob(n, finished_at=old))
    ledger.flush()
    for n in range(10, 110):
        ledger.gpuflex_job_finished(job=FakeJob(n))
    ledger.close()
    records = read_ledger(path)
    assert [r["id"] for r in records] == [f"j{n}" for n in range(60, 110)]


def test_retention_defaults_and_project_setting(tmp_path):
    from gpuflex._config import load_project_config

    assert Retention() == Retention(keep_days=30, keep_jobs=100_000)
    (tmp_path / "pyproject.toml").write_text("[tool.gpuflex.ledger]\nkeep_days = 7\nkeep_jobs = 0\n")
    assert Retention.from_config(load_project_config(tmp_path)) == Retention(keep_days=7, keep_jobs=0)
    for bad in ("keep_days = -1", "keep_jobs = 1.5", "keep_jobs = true", "forever = 1"):
        other = tmp_path / bad.split()[0] / "p"
        other.mkdir(parents=True, exist_ok=True)
        (other / "gpuflex.toml").write_text(f"[ledger]\n{bad}\n")
        with pytest.raises(ConfigError, match="ledger"):
            Retention.from_config(load_project_config(other))


def test_an_existing_jsonl_is_imported_once(tmp_path):
    legacy = tmp_path / "jobs.jsonl"
    lines = [json.dumps({"id": f"old{n}", "endpoint": "ep", "backend": "local", "status": "COMPLETED",
                         "finished_at": time.time() - 60 + n, "cost_usd": 0.25, "billed_seconds": 1.0, "gpus": 1})
             for n in range(3)]
    legacy.write_text("\n".join(lines) + '\n{"id": "cut sh')  # the last line cut short by a killed process
    records = read_ledger(tmp_path / "jobs.db")
    assert [r["id"] for r in records] == ["old0", "old1", "old2"]
    assert not legacy.exists() and (tmp_path / "jobs.jsonl.imported").exists()
    legacy.write_text(lines[0] + "\n")  # an old version still running writes it again: never imported twice
    ledger = JobLedger(tmp_path / "jobs.db")
    ledger.gpuflex_job_finished(job=FakeJob(7))
    ledger.close()
    assert [r["id"] for r in read_ledger(tmp_path / "jobs.db")] == ["old0", "old1", "old2", "j7"]


@pytest.fixture
def busy_home(tmp_path):
    """A ledger with long endpoint names and reasons: what made every cell wrap onto 4 lines."""
    home = tmp_path / "home"
    ledger = JobLedger(home / "jobs.db")
    for n in range(5):
        failed = n % 2 == 1
        ledger.gpuflex_job_finished(job=FakeJob(
            n, endpoint=f"generate_image_with_a_long_descriptive_name_{n % 2}",
            status=JobStatus.FAILED if failed else JobStatus.COMPLETED,
            reason="worker generate-91bce82c (pid 4242) died while running the job: it was killed by SIGKILL"
            if failed else None))
    ledger.close()
    return home


@pytest.mark.parametrize("command", ["jobs", "costs"])
def test_jobs_and_costs_fit_80_columns_in_a_pipe(busy_home, tmp_path, command):
    env = {**os.environ, "GPUFLEX_HOME": str(busy_home), "COLUMNS": "80"}
    result = subprocess.run([sys.executable, "-m", "gpuflex.cli", command], env=env, capture_output=True,
                            text=True, timeout=60, cwd=tmp_path)  # stdout is a pipe: not a TTY
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, result.stdout
    if command == "jobs":
        assert sum(line.startswith("j") for line in lines) == 5, result.stdout  # one line per job
        assert any("FAILED" in line and "worker generate" in line for line in lines), result.stdout
    else:
        assert sum("generate_image" in line for line in lines) == 2, result.stdout  # one line per endpoint
        assert "$2.50" in result.stdout  # the total


def test_jobs_and_costs_take_json(busy_home, tmp_path):
    env = {"GPUFLEX_HOME": str(busy_home), "COLUMNS": "80"}
    jobs = runner.invoke(app, ["jobs", "--json", "--limit", "3"], env=env)
    assert jobs.exit_code == 0, jobs.output
    records = json.loads(jobs.output)
    assert [r["id"] for r in records] == ["j2", "j3", "j4"]
    assert records[1]["status"] == "FAILED" and "SIGKILL" in records[1]["reason"]
    only = json.loads(runner.invoke(app, ["jobs", "--json", "--endpoint",
                                          "generate_image_with_a_long_descriptive_name_1"], env=env).output)
    assert [r["id"] for r in only] == ["j1", "j3"]
    costs = json.loads(runner.invoke(app, ["costs", "--json"], env=env).output)
    assert costs["total"] == {"calls": 5, "failed": 2, "unpriced_calls": 0, "usd": 2.5, "idle_usd": 0.0}
    assert {e["endpoint"] for e in costs["endpoints"]} == {"generate_image_with_a_long_descriptive_name_0",
                                                          "generate_image_with_a_long_descriptive_name_1"}
    assert runner.invoke(app, ["jobs", "--json"], env={"GPUFLEX_HOME": str(tmp_path / "empty")}).output == "[]\n"


def test_costs_show_cpu_seconds_for_an_endpoint_that_fell_back_to_the_cpu(project, tmp_path, monkeypatch):
    monkeypatch.setenv("GPUFLEX_LOCAL_NO_GPU", "1")  # as on a machine without CUDA, whatever this one has
    home = tmp_path / "home"
    (project / "gpu.py").write_text(SCRIPT.replace('print("RESULT", [shout(word) for word in sys.argv[1:]]',
                                                   'print("RESULT", [on_gpu(n) for n in range(2)]'))
    result = gpuflex("run", "gpu.py", "--backend", "local", cwd=project, home=home)
    assert "RESULT [0, 1]" in result.stdout, result.stderr
    (record, _) = read_ledger(home / "jobs.db")
    assert record["gpus"] == 0  # no CUDA device here: the worker ran on the CPU
    costs = gpuflex("costs", cwd=project, home=home)
    line = next(line for line in costs.stdout.splitlines() if "on_gpu" in line)
    assert "CPU-s" in line and "GPU-s" not in line


def test_plan_shows_the_idle_tail_once_per_burst_beside_a_realistic_per_call_figure(project):
    """A per-second backend with a 20 s idle tail (RunPod's flex workers bill one): a 0.077 s call costs one
    billed second, and the tail is its own line, not 21 s in every call."""
    from rich.console import Console

    from gpuflex import Price
    from gpuflex._apps import load_app
    from gpuflex._plugins import get_plugin_manager, hookimpl
    from gpuflex.cli._report import plan, plan_table

    class PerSecond:
        @hookimpl
        def gpuflex_price(self, spec, backend, default):
            return Price(usd_per_hour=3.6, billing="per-second", increment=1.0, tail_seconds=20.0)

    plugin = PerSecond()
    get_plugin_manager().register(plugin)
    try:
        rows = plan(load_app(project / "app.py"), "local", 0.077)
    finally:
        get_plugin_manager().unregister(plugin)
    row = next(r for r in rows if r.spec.name == "shout")  # max_workers=3
    assert row.per_call.billed_seconds == 1.0 and row.per_call.usd == pytest.approx(0.001)
    assert row.tail.billed_seconds == 20.0
    assert row.usd_per_1000_calls == pytest.approx(1.0 + 3 * 0.02)  # one burst: a tail per worker
    assert row.worst_per_1000_calls == pytest.approx(21.0)  # every call alone
    console = Console(width=100, record=True, file=io.StringIO())
    console.print(plan_table(row, 0.077))
    text = " ".join(console.export_text().split())
    assert "$0.001 (1 s billed for 0.077 s of work, per second (1 s increments))" in text
    assert text.count("idle tail") == 2  # its own line, and in the per-1,000 line
    assert "$0.02 once per burst, not per call" in text
    assert "$1.06 in one burst" in text and "worst case $21.00 if every call comes alone" in text


def _render(table, width=80):
    from rich.console import Console

    console = Console(width=width, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text()


def test_no_published_price_is_shown_as_unknown_never_as_free(project):
    from gpuflex import Price
    from gpuflex._apps import load_app
    from gpuflex._plugins import get_plugin_manager, hookimpl
    from gpuflex.cli._report import costs_table, jobs_table, plan, plan_table

    class Unpriced:
        @hookimpl
        def gpuflex_price(self, spec, backend, default):
            return Price(billing="unknown", source="no published price for CPU workers")

    plugin = Unpriced()
    get_plugin_manager().register(plugin)
    try:
        row = plan(load_app(project / "app.py"), "local", 1.0)[0]
    finally:
        get_plugin_manager().unregister(plugin)
    text = _render(plan_table(row, 1.0), width=120)
    assert "unknown: no published price for CPU workers" in text and "$0" not in text
    unknown = {"endpoint": "cpu", "backend": "runpod", "status": "COMPLETED", "finished_at": 1.0, "billing": "unknown",
               "cost_usd": 0.0, "billed_seconds": 2.0, "id": "j1"}
    priced = {**unknown, "endpoint": "gpu", "billing": "per-second", "cost_usd": 0.004, "id": "j2"}
    text = _render(costs_table([unknown, priced]))
    assert next(line for line in text.splitlines() if line.startswith("cpu")).rstrip().endswith("unknown")
    assert "$0.004 + ?" in text  # the total: some calls not counted
    assert "unknown" in _render(jobs_table([unknown]))
