"""The public conformance suite against the Modal backend, offline: the real Modal client talks to the fake control
plane (tests/_fake_modal.py), which runs every container as a process of its own with Modal's own container
entrypoint (tests/_fake_workers.py), so a new run imports the new bundle, as on Modal."""

from __future__ import annotations

import pytest
from _fake_modal import FakeModalServer
from gpuflex_modal import ModalBackend, ModalConfig

import gpuflex
from gpuflex.testing import CHECKS, run_check


@pytest.fixture(scope="module")
def shared_fake():
    server = FakeModalServer()
    yield server
    server.close()


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
def test_conformance(check, shared_fake, monkeypatch, tmp_path):
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-test")
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "no-modal.toml"))
    try:
        run_check(check, lambda: ModalBackend(ModalConfig(server_url=shared_fake.url, secrets_from="local")))
    finally:
        gpuflex.shutdown()
