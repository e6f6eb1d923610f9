"""The ``gpuflex`` command. Commands that run jobs or read project config from the working directory run in a
subprocess (a fresh session, its own cwd); the others through typer's CliRunner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from gpuflex._ledger import JobLedger, read_ledger, summarize
from gpuflex.cli import app

runner = CliRunner()

COMMANDS = ["serve", "run", "backends", "plan", "deploy", "teardown", "jobs", "costs"]

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
    assert "$2.00 (at 2 s per call)" in text  # 1,000 calls x 2 s x $0.001/s
    assert "Nothing was created" in text
    assert not (tmp_path / "home" / "jobs.jsonl").exists()


def test_run_script_with_args_records_jobs_and_costs(project, tmp_path):
    home = tmp_path / "home"
    empty = gpuflex("jobs", cwd=project, home=home)
    assert empty.returncode == 0 and "No jobs recorded yet" in empty.stdout
    assert "No jobs recorded yet" in gpuflex("costs", cwd=project, home=home).stdout

    result = gpuflex("run", "app.py", "--backend", "local", "--", "hello", "world", "--loud", cwd=project, home=home)
    assert result.returncode == 0, result.stderr
    assert "RESULT ['HELLO', 'WORLD', '--LOUD']" in result.stdout

    records = read_ledger(home / "jobs.jsonl")
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
    (project / "pyproject.toml").write_text('[tool.gpuflex.backends.local]\nhourly_rate = 36000.0\n')
    (project / "spend.py").write_text(textwrap.dedent('''
        import time

        import gpuflex


        @gpuflex.endpoint
        def work() -> str:
            time.sleep(0.05)
            return "done"


        if __name__ == "__main__":
            print("first", work(), flush=True)
            print("second", work(), flush=True)
    '''))
    result = gpuflex("run", "spend.py", "--max-cost", "0.01", cwd=project, home=tmp_path / "home")
    assert "first done" in result.stdout  # under budget: runs, and costs $0.50 at $10/s
    assert "second" not in result.stdout
    assert result.returncode == 1
    assert "QuotaExceeded" in result.stderr and "budget" in result.stderr
    statuses = [r["status"] for r in read_ledger(tmp_path / "home" / "jobs.jsonl")]
    assert statuses == ["COMPLETED", "FAILED"]


def test_deploy_and_teardown_local(project, tmp_path):
    (project / "small.py").write_text("import gpuflex\n\n\n@gpuflex.endpoint\ndef one() -> int:\n    return 1\n")
    result = gpuflex("deploy", "small.py", "--backend", "local", cwd=project, home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "one" in result.stdout and "live only while" in result.stdout and "gpuflex serve" in result.stdout
    result = gpuflex("teardown", "--backend", "local", cwd=project, home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "local" in result.stdout


def test_app_import_error_is_reported(project, tmp_path):
    (project / "broken.py").write_text("def oops(:\n")
    result = gpuflex("plan", "broken.py", cwd=project, home=tmp_path)
    assert result.returncode == 1
    assert "SyntaxError" in result.stderr


def test_ledger_buffers_and_flushes_on_close(tmp_path):
    class FakeJob:
        def __init__(self, n):
            from gpuflex import Cost, JobStatus

            self.id, self.endpoint, self.backend, self.status = f"j{n}", "ep", "local", JobStatus.COMPLETED
            self.submitted_at = self.started_at = self.finished_at = 1.0
            self.queue_time = self.run_time = 0.0
            self.attempts, self.worker, self.reason = 1, "w", None
            self.cost = Cost(usd=0.5, billed_seconds=2.0, rule="uptime")

    path = tmp_path / "jobs.jsonl"
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
    lines = path.read_text().splitlines()
    assert len(lines) == 200
    assert len(writes) < 20  # batched, not one write per job
    assert json.loads(lines[0])["cost_usd"] == 0.5
    (row,) = summarize(read_ledger(path))
    assert row.calls == 200 and row.usd == pytest.approx(100.0)
