"""The dev server's dashboard in headless Chromium: it renders, a job submitted while it is open appears and
completes on it, worker output shows as text, and a token-protected server shows nothing without its token."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuflex.cli._report import usd
from gpuflex.testing import load_module, require

helpers = load_module(Path(__file__).with_name("_observe.py"))
TOKEN = "dashboard-s3cret"


@pytest.fixture
def browser(tmp_path):
    binary = helpers.chromium_binary()
    if binary is None:
        require("chromium", False, install="apt-get install -y chromium")
    page = helpers.Browser(binary, tmp_path / "profile")
    yield page
    page.close()


def _job_status(job_id: str) -> str:
    return f"document.querySelector('tr[data-job=\"{job_id}\"]')?.dataset.status"


def test_a_job_submitted_while_the_page_is_open_appears_and_completes(browser, tmp_path):
    root = helpers.project(tmp_path)
    srv = helpers.Server(root / "observe_app.py", tmp_path / "server.log", cwd=root)
    try:
        browser.goto(srv.url + "/")
        browser.wait_for("document.getElementById('conn')?.dataset.state === 'live'", "the page to go live")
        endpoints = browser.evaluate("[...document.querySelectorAll('#endpoints tr[data-endpoint]')]"
                                     ".map(r => r.dataset.endpoint)")
        assert endpoints == ["Warming", "broken", "doubled", "slow"]
        assert browser.evaluate("document.getElementById('app').textContent") == "observe_app.py"

        job_id = srv.client.post("/slow/jobs", json={"seconds": 1.5}).json()["id"]
        first = browser.wait_for(_job_status(job_id), "the job to appear")
        assert first in ("QUEUED", "RUNNING")  # it shows up while it waits or runs, not only once done
        browser.wait_for(f"{_job_status(job_id)} === 'COMPLETED'", "the job to complete on the page")
        assert srv.wait_job(job_id)["status"] == "COMPLETED"

        row = browser.evaluate(f"[...document.querySelectorAll('tr[data-job=\"{job_id}\"] td')]"
                               ".map(td => td.textContent)")
        assert row[1] == "slow" and row[2] == "COMPLETED" and row[3].startswith("slow-")
        assert row[8] == usd(srv.wait_job(job_id)["cost"]["usd"]) != "$0"  # at $1 a second, as the CLI writes it
        run = browser.evaluate(f"document.querySelector('tr[data-job=\"{job_id}\"] .timeline .run').style.width")
        assert run.endswith("%") and float(run[:-1]) > 0
        # the worker, its state and GPUs, and the line it printed: as text, markup and all
        browser.wait_for("document.querySelector('#workers tr[data-worker]')?.dataset.state === 'IDLE'",
                         "the worker to be idle")
        output = browser.evaluate("document.querySelector('#workers pre.output').textContent")
        assert "<b>slow</b> sleeping 1.5 s" in output
        assert browser.evaluate("document.querySelectorAll('#workers pre.output b').length") == 0
        assert "1 completed" in browser.evaluate(
            "document.querySelector('#endpoints tr[data-endpoint=\"slow\"]').textContent")
        assert "$" in browser.evaluate("document.getElementById('spent').textContent")
    finally:
        srv.stop()  # with the page still open: its stream ends rather than hold the server up
    assert "graceful shutdown exceeded" not in srv.output()


def test_a_token_protected_dashboard_shows_nothing_without_the_token(browser, tmp_path):
    root = helpers.project(tmp_path)
    srv = helpers.Server(root / "observe_app.py", tmp_path / "server.log", cwd=root, token=TOKEN)
    try:
        job_id = srv.client.post("/slow/jobs", json={"seconds": 0.01}).json()["id"]
        srv.wait_job(job_id)

        browser.goto(srv.url + "/")
        browser.wait_for("document.getElementById('conn')?.dataset.state === 'locked'", "the page to ask for it")
        text = browser.evaluate("document.documentElement.outerHTML")
        for secret in (job_id, "slow", "broken", "doubled", "observe_app"):
            assert secret not in text, f"{secret!r} shows on the page without the token"
        assert browser.evaluate("document.getElementById('main').hidden") is True
        for path in ("/stats", "/metrics", f"/jobs/{job_id}", "/openapi.json"):
            assert browser.evaluate(f"fetch('{path}').then(r => r.status)") == 401, path

        browser.goto(srv.url + f"/#token={TOKEN}")
        browser.wait_for("document.getElementById('conn')?.dataset.state === 'live'", "the page with the token")
        browser.wait_for(f"{_job_status(job_id)} === 'COMPLETED'", "the job on the page")
        assert browser.evaluate("location.hash") == ""  # the token left the address bar
        assert TOKEN not in srv.output()  # and reached no log
    finally:
        srv.stop()
