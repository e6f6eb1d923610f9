"""Many small calls on the serverless backend: while an endpoint's queue is long its calls travel packed, several
to a RunPod job, each with its own result, exception and cancellation (issue 12 §2)."""

from __future__ import annotations

import collections
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from gpuflex import JobStatus, errors
from gpuflex.client._session import get_session
from gpuflex.testing import backend_in_use, wait_until

sys.path.insert(0, str(Path(__file__).parent))  # workers import _runpod_app by reference, from the bundle
import _runpod_app as app  # noqa: E402


def _runs(marks: Path) -> collections.Counter[int]:
    """How many times each call started."""
    return collections.Counter(int(path.name.split("-")[1]) for path in marks.glob("ran-*"))


def test_a_burst_shares_jobs_each_call_with_its_own_outcome_and_cancellation(make_backend, tmp_path):
    with backend_in_use(make_backend) as backend:
        assert app.packed(0, str(tmp_path)) == 0  # deployed, warm
        before = get_session().run(backend.health("rp_packed"))["jobs"]["completed"]
        (tmp_path / "hold").touch()
        first = app.packed.spawn(100, str(tmp_path))  # holds the only worker
        wait_until(lambda: _runs(tmp_path)[100], "the first call to start")
        jobs = [app.packed.spawn(i, str(tmp_path)) for i in range(1, 41)]
        wait_until(lambda: all(job._handle for job in jobs), "the calls to be accepted")
        for job in jobs[30:]:  # waiting on the lane: never sent
            job.cancel()
        (tmp_path / "hold").unlink()
        assert first.result(timeout=60) == 200
        for i, job in enumerate(jobs[:30], start=1):
            if i == 13:
                with pytest.raises(ValueError, match="thirteen"):
                    job.result(timeout=60)
            else:
                assert job.result(timeout=60) == i * 2
        for job in jobs[30:]:
            wait_until(job.done, "a cancelled call to end")
            assert job.status is JobStatus.CANCELLED
        assert _runs(tmp_path) == {i: 1 for i in (0, 100, *range(1, 31))}, \
            "cancelled calls must not run, the others exactly once"
        jobs_run = get_session().run(backend.health("rp_packed"))["jobs"]["completed"] - before
        assert jobs_run <= 10, f"30 calls took {jobs_run} RunPod jobs: they were not packed"


def test_packed_calls_feed_the_workers_batcher(make_backend):
    with backend_in_use(make_backend):
        app.batch_sizes(0)  # deployed, warm
        sizes = [job.result(timeout=60) for job in [app.batch_sizes.spawn(i) for i in range(48)]]
    assert max(sizes) > 1 and all(size <= 8 for size in sizes), sizes


def test_a_pack_whose_worker_dies_fails_the_started_call_and_reruns_the_others(make_backend, emulator_url,
                                                                                  emulator_key, tmp_path):
    with backend_in_use(make_backend):
        assert app.packed(0, str(tmp_path)) == 0  # deployed, warm
        (tmp_path / "hold").touch()
        jobs = [app.packed.spawn(i, str(tmp_path)) for i in range(1, 9)]  # one worker, one pack
        wait_until(lambda: jobs[0].status is JobStatus.RUNNING, "the pack's first call to start")
        assert all(job.status is JobStatus.QUEUED for job in jobs[1:])
        with httpx.Client(base_url=emulator_url, headers={"Authorization": f"Bearer {emulator_key}"}) as admin:
            (worker,) = [w for w in admin.get("/_emulator/workers").json()["workers"]
                         if w["name"] == "gpuflex-dev-rp_packed" and w["jobs"]]
        os.kill(worker["pid"], signal.SIGKILL)
        with pytest.raises(errors.WorkerLost):
            jobs[0].result(timeout=60)
        (tmp_path / "hold").unlink()
        assert [job.result(timeout=120) for job in jobs[1:]] == [i * 2 for i in range(2, 9)]
    assert _runs(tmp_path) == {i: 1 for i in range(9)}, "the calls the dead worker had not started ran once"


def test_cancelling_the_running_call_of_a_pack_stops_it_and_the_rest_runs_elsewhere(make_backend, tmp_path):
    with backend_in_use(make_backend):
        assert app.packed(0, str(tmp_path)) == 0  # deployed, warm
        (tmp_path / "hold").touch()
        jobs = [app.packed.spawn(i, str(tmp_path)) for i in range(1, 9)]  # one worker, one pack
        wait_until(lambda: jobs[0].status is JobStatus.RUNNING, "the pack's first call to start")
        jobs[0].cancel()
        wait_until(jobs[0].done, "the cancelled call to end")
        assert jobs[0].status is JobStatus.CANCELLED
        (tmp_path / "hold").unlink()
        assert [job.result(timeout=120) for job in jobs[1:]] == [i * 2 for i in range(2, 9)]
    assert _runs(tmp_path) == {i: 1 for i in range(9)}, "each call ran once: the cancelled one was stopped"
