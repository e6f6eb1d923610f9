"""``gpuflex costs --compare`` against hand-computed figures: a fixed ledger and a fixed load, priced on two
backends with fixed prices (the seeds' H100 figures: $2.69 per GPU-hour for a pod, $0.00116 per second serverless),
plus the table, the JSON, the plot, and the ledger's new ``gpu`` column."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from typing import ClassVar

import pytest
from typer.testing import CliRunner

from gpuflex import Price
from gpuflex._ledger import _INSERT, _connect, _row, read_ledger
from gpuflex._plugins import get_plugin_manager, hookimpl
from gpuflex._registry import reset_registry
from gpuflex.backend import Backend
from gpuflex.cli._compare import serverless_hourly
from gpuflex.cli._main import app

runner = CliRunner()
POD, SECOND = 2.69, 0.00116  # $ per GPU-hour, $ per GPU-second


class _PriceOnly(Backend):
    """A backend that only prices (nothing here runs jobs)."""

    async def deploy(self, endpoint, bundle):
        raise NotImplementedError

    async def submit(self, call):
        raise NotImplementedError

    async def status(self, handle):
        raise NotImplementedError

    async def cancel(self, handle):
        raise NotImplementedError

    async def aclose(self):
        pass


class HourlyTest(_PriceOnly):
    name: ClassVar[str] = "hourly-test"

    def price(self, endpoint):
        if endpoint.gpu is None:
            return Price(usd_per_hour=0.10, billing="uptime")
        return Price(usd_per_hour=POD * endpoint.gpu.count, billing="uptime", source="a pod")


class SecondsTest(_PriceOnly):
    name: ClassVar[str] = "seconds-test"

    def price(self, endpoint):
        if endpoint.gpu is None:
            return Price(billing="unknown", source="no CPU price")
        return Price(usd_per_hour=SECOND * 3600 * endpoint.gpu.count, billing="per-second", increment=1.0,
                     tail_seconds=5.0, source="serverless")


class Plugin:
    @hookimpl
    def gpuflex_register_backends(self):
        return [HourlyTest, SecondsTest]


@pytest.fixture
def priced():
    pm = get_plugin_manager()
    plugin = Plugin()
    pm.register(plugin)
    reset_registry()
    yield
    pm.unregister(plugin)
    reset_registry()


def _record(n, endpoint, *, submitted, started, finished, gpu="H100", gpus=1, cost=0.01):
    return {"id": f"j{n}", "endpoint": endpoint, "backend": "local", "status": "COMPLETED", "submitted_at": submitted,
            "started_at": started, "finished_at": finished, "queue_time": started - submitted,
            "run_time": finished - started, "attempts": 1, "worker": "w1", "gpus": gpus, "cost_usd": cost,
            "billed_seconds": finished - started, "billing": "uptime", "tail_usd": 0.0, "tail_seconds": 0.0,
            "gpu": gpu}


LEDGER = [  # four H100 jobs of one worker (runs 0.5, 1.2, 2 and 30 s over 130 s), one CPU job, one unnamed GPU
    _record(1, "embed", submitted=1000.0, started=1000.5, finished=1001.0),
    _record(2, "embed", submitted=1002.0, started=1002.0, finished=1003.2),
    _record(3, "embed", submitted=1010.0, started=1010.0, finished=1012.0),
    _record(4, "embed", submitted=1100.0, started=1100.0, finished=1130.0),
    _record(5, "prep", submitted=1200.0, started=1200.0, finished=1204.0, gpu=None, gpus=0, cost=0.0),
    _record(6, "old", submitted=900.0, started=900.0, finished=901.0, gpu=None, gpus=1),
]


@pytest.fixture
def home(tmp_path):
    db = _connect(tmp_path / "jobs.db")
    db.executemany(_INSERT, [_row(r) for r in LEDGER])
    db.close()
    return tmp_path


def _invoke(home, *args):
    result = runner.invoke(app, ["costs", "--compare", *args], env={"GPUFLEX_HOME": str(home), "COLUMNS": "200"})
    return result


def _json(home, *args):
    result = _invoke(home, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _backend(group, name):
    return next(b for b in group["backends"] if b["backend"] == name)


def test_the_ledger_repriced_by_hand(priced, home):
    data = _json(home)
    assert data["mode"] == "ledger"
    groups = {g["label"]: g for g in data["groups"]}
    assert sorted(groups) == ["CPU", "H100"]  # the job on an unnamed GPU is left out
    h100 = groups["H100"]
    assert h100["endpoints"] == ["embed"] and h100["jobs"] == 4
    assert h100["busy_seconds"] == pytest.approx(33.7) and h100["span_seconds"] == pytest.approx(130.0)
    assert h100["utilisation"] == pytest.approx(33.7 / 130)
    assert h100["recorded"] == {"local": pytest.approx(0.04)}
    # per second: runs rounded up (1 + 2 + 2 + 30 s) and idle tails: 1 s (cut short by the next call), then
    # three full 5 s tails: 51 s at $0.00116
    assert _backend(h100, "seconds-test")["usd"] == pytest.approx(51 * SECOND)
    # by the hour: a pod up from the first job submitted to the last finished, 130 s
    assert _backend(h100, "hourly-test")["usd"] == pytest.approx(130 / 3600 * POD)
    (even,) = [b for b in h100["break_even"] if (b["pod"], b["serverless"]) == ("hourly-test", "seconds-test")]
    assert even["busy_only"] == pytest.approx(POD / (SECOND * 3600))  # 64.4%
    # with idle tails, at the jobs' mean of 8.425 s per call (billed 9 s, then a 5 s tail):
    # 3600 u / 8.425 x 14 s x $0.00116 = $2.69  =>  u = 2.69 x 8.425 / (3600 x 14 x 0.00116)
    assert even["seconds_per_call"] == pytest.approx(8.425)
    assert even["with_tails"] == pytest.approx(POD * 8.425 / (3600 * 14 * SECOND), abs=1e-6)
    cpu = groups["CPU"]
    assert cpu["endpoints"] == ["prep"] and _backend(cpu, "seconds-test")["usd"] is None
    assert _backend(cpu, "hourly-test")["usd"] == pytest.approx(4 / 3600 * 0.10)
    assert not [b for b in cpu["break_even"] if b["serverless"] == "seconds-test"]  # its CPU price is unknown


def test_a_gpu_given_prices_every_job_on_it(priced, home):
    (group,) = _json(home, "--gpu", "A100-80GB:2")["groups"]
    assert group["label"] == "A100-80GB:2" and group["jobs"] == 6
    assert _backend(group, "hourly-test")["usd_per_hour"] == pytest.approx(2 * POD)
    assert _backend(group, "seconds-test")["usd_per_hour"] == pytest.approx(2 * SECOND * 3600)


def test_a_load_priced_per_hour_by_hand(priced, home):
    (group,) = _json(home, "--gpu", "H100", "--calls-per-hour", "360", "--seconds-per-call", "2")["groups"]
    assert group["jobs"] == 0 and group["utilisation"] == pytest.approx(0.2)
    # 360 calls of 2 s, 8 s apart: each billed 2 s, then its full 5 s tail: 360 x 7 s x $0.00116
    sls = _backend(group, "seconds-test")
    assert sls["usd"] == pytest.approx(360 * 7 * SECOND) and sls["usd_per_month"] == pytest.approx(730 * 360 * 7
                                                                                                     * SECOND)
    assert _backend(group, "hourly-test")["usd"] == pytest.approx(POD)
    (even,) = [b for b in group["break_even"] if b["pod"] == "hourly-test" and b["serverless"] == "seconds-test"]
    assert even["with_tails"] == pytest.approx(POD * 2 / (3600 * 7 * SECOND), abs=1e-6)  # 18.4%


def test_a_pod_rate_adds_a_pod_and_the_seed_figures(priced, home):
    data = _json(home, "--gpu", "H100", "--calls-per-hour", "3600", "--pod-rate", "2.69")
    (group,) = data["groups"]
    pod = _backend(group, "pod at $2.69/GPU-h")
    assert pod["billing"] == "uptime" and pod["usd"] == pytest.approx(POD)
    # calls back to back (100% busy): serverless bills every second, $4.18 an hour: the pod is cheaper
    assert _backend(group, "seconds-test")["usd"] == pytest.approx(3600 * SECOND)
    if "gpuflex_runpod" in sys.modules or _importable("gpuflex_runpod"):  # RunPod's own table: the seed figure
        assert _backend(group, "serverless")["usd_per_hour"] == pytest.approx(SECOND * 3600)


def _importable(name):
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_serverless_never_dearer_than_the_pod_has_no_break_even():
    cheap = Price(usd_per_hour=1.0, billing="per-second", increment=1.0)
    assert serverless_hourly(cheap, 1.0, 1.0) == pytest.approx(1.0)
    assert serverless_hourly(cheap, 0.0, 1.0) == 0.0


def test_the_table(priced, home):
    result = _invoke(home)
    assert result.exit_code == 0, result.output
    text = result.output
    assert "H100: 4 job(s) of embed, 33.7 s busy over 2.17 min = 25.92% of one worker" in text
    assert "break-even hourly-test ($2.69/h) vs seconds-test ($4.18/h): pod cheaper above 64.4% busy (busy " \
           "seconds only), 38.8% with idle tails at 8.425 s per call" in " ".join(text.split())
    assert "ran on local: $0.04 recorded" in text
    assert "x1.48" in text  # seconds-test: $0.0592 against $0.04 where they ran


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_the_plot(priced, home, tmp_path, suffix):
    pytest.importorskip("matplotlib")
    path = tmp_path / f"compare{suffix}"
    result = _invoke(home, "--gpu", "H100", "--calls-per-hour", "360", "-s", "2", "--plot", str(path))
    assert result.exit_code == 0, result.output
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in data[:2000]
    assert "plot written to" in result.output


def test_plot_errors(priced, home, tmp_path, monkeypatch):
    result = _invoke(home, "--plot", str(tmp_path / "compare.txt"))
    assert result.exit_code == 2 and "PNG or SVG" in result.output
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    result = _invoke(home, "--plot", str(tmp_path / "compare.png"))
    assert result.exit_code == 2 and "pip install 'gpuflex[plot]'" in result.output


def test_compare_options_need_compare(home):
    result = runner.invoke(app, ["costs", "--gpu", "H100"], env={"GPUFLEX_HOME": str(home)})
    assert result.exit_code == 2 and "--gpu go(es) with --compare" in result.output
    result = _invoke(home, "--app", __file__)
    assert result.exit_code == 2 and "--calls-per-hour" in result.output


def test_an_older_ledger_gains_the_gpu_column(tmp_path):
    path = tmp_path / "jobs.db"
    with sqlite3.connect(path) as db:  # the schema before the gpu column
        db.execute("CREATE TABLE jobs (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, endpoint TEXT NOT NULL, "
                   "backend TEXT NOT NULL, status TEXT NOT NULL, finished_at REAL NOT NULL, gpus INTEGER)")
        db.execute("INSERT INTO jobs (id, endpoint, backend, status, finished_at, gpus) "
                   "VALUES ('a', 'e', 'local', 'COMPLETED', 5.0, 1)")
    (record,) = read_ledger(path)
    assert record["id"] == "a" and record["gpu"] is None and record["gpus"] == 1


def test_a_load_on_each_endpoint_of_an_app(priced, home):
    app_file = str(__import__("pathlib").Path(__file__).parent / "apps" / "observe_app.py")
    data = _json(home, "--app", app_file, "--gpu", "L4", "--calls-per-hour", "10")
    assert [g["label"] for g in data["groups"]] == ["Warming (L4)", "broken (L4)", "doubled (L4)", "slow (L4)"]
    assert all(g["gpu"] == "L4" and g["seconds_per_call"] == 1.0 for g in data["groups"])


def test_the_ledger_records_the_gpu_an_endpoint_asked_for(tmp_path):
    from pathlib import Path

    from gpuflex import Bundle, Cost, EndpointKind, EndpointSpec, JobStatus, Resources
    from gpuflex._ledger import JobLedger
    from gpuflex._models import FunctionRef
    from gpuflex.gpus import GPU

    class Job:
        id, endpoint, backend, status, attempts, worker, reason = "j", "e", "local", JobStatus.COMPLETED, 1, "w", None
        finished_at = time.time()  # kept by the ledger's retention (30 days)
        submitted_at = started_at = finished_at - 1.0
        queue_time, run_time = 0.0, 1.0
        cost, tail = Cost(usd=0.1, billed_seconds=1.0, rule="uptime"), Cost()

    ledger = JobLedger(tmp_path / "jobs.db")
    spec = EndpointSpec(name="e", kind=EndpointKind.FUNCTION, target=FunctionRef(module="m", qualname="e"),
                        resources=Resources(gpu=GPU("H100", 2)))
    ledger.gpuflex_deployed(spec=spec, bundle=Bundle(hash="h", root=Path(tmp_path), files=()), backend="local")
    ledger.gpuflex_job_finished(job=Job())
    ledger.close()
    (record,) = read_ledger(tmp_path / "jobs.db")
    assert (record["gpu"], record["gpus"]) == ("H100:2", 2)
