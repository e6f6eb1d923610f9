"""Fixtures of the Modal backend's tests: a fake of Modal's control plane per test (tests/_fake_modal.py), whose
containers are processes running Modal's own container entrypoint, and a gpuflex session that starts fresh."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import gpuflex

sys.path.insert(0, str(Path(__file__).parent))
from _fake_modal import FakeModalServer  # noqa: E402


@pytest.fixture
def fake_modal(monkeypatch, tmp_path):
    """The fake on 127.0.0.1, with a token in the environment and no ~/.modal.toml of the machine's."""
    server = FakeModalServer()
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-test-secret-value")
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "no-modal.toml"))
    for name in ("MODAL_PROFILE", "MODAL_SERVER_URL", "MODAL_ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)
    yield server
    gpuflex.shutdown()
    server.close()


@pytest.fixture(autouse=True)
def _fresh_session():
    gpuflex.shutdown()
    yield
    gpuflex.shutdown()
