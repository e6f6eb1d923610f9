"""The public conformance suite against the Modal backend, offline: the real Modal client talks to the fake control
plane (tests/_fake_modal.py), which runs each call the way a container would, in this process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from gpuflex_modal import ModalBackend, ModalConfig

import gpuflex
from gpuflex.testing import CHECKS, run_check

sys.path.insert(0, str(Path(__file__).parent))
from _fake_modal import FakeModalServer  # noqa: E402


@pytest.fixture(scope="module")
def fake_modal():
    server = FakeModalServer()
    yield server
    server.close()


OFFLINE_LIMITS = {
    # the fake runs every "container" in this one process: a module imported once stays imported, where a new
    # Modal container after a redeploy imports the new bundle afresh. Against real Modal: --run-live.
    "check_hot_reload": "the fake control plane runs containers in the test process (no fresh import per run)",
}


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
def test_conformance(check, fake_modal, monkeypatch):
    if check.__name__ in OFFLINE_LIMITS:
        pytest.skip(OFFLINE_LIMITS[check.__name__])
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-test")
    try:
        run_check(check, lambda: ModalBackend(ModalConfig(server_url=fake_modal.url)))
    finally:
        gpuflex.shutdown()
