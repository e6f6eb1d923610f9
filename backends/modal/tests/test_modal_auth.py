"""Credentials found as Modal's client finds them: tokens or OAuth settings, from the environment or the active
profile of ~/.modal.toml (MODAL_CONFIG_PATH), with Modal's own checks on profiles; the fake accepts only what it
is told to, as Modal's server would."""

from __future__ import annotations

import _modal_app as app
import pytest
from gpuflex_modal import ModalBackend, ModalConfig
from gpuflex_modal._auth import modal_credentials

from gpuflex import errors
from gpuflex.client._session import get_session
from gpuflex.testing import backend_in_use

PROFILES = """
[personal]
token_id = "ak-personal"
token_secret = "as-personal"

[work]
token_id = "ak-work"
token_secret = "as-work-secret"
active = true
"""


@pytest.fixture
def no_env_token(monkeypatch):
    for name in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "MODAL_PROFILE"):
        monkeypatch.delenv(name, raising=False)


def connect(fake, **options):
    """Run the app (no call: no container) with a fresh backend: the credentials are used and checked."""
    with backend_in_use(lambda: ModalBackend(ModalConfig(server_url=fake.url, **options))) as backend:
        session = get_session()
        session.run(backend.deploy(app.small.spec, session.bundle_for(app.small)))
        session.run(backend.ensure_running())


def test_the_active_profile_of_the_config_file_is_used(fake_modal, no_env_token, tmp_path, monkeypatch):
    config = tmp_path / "modal.toml"
    config.write_text(PROFILES)
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(config))
    fake_modal.servicer.tokens = {("ak-work", "as-work-secret")}
    connect(fake_modal)
    assert fake_modal.servicer.of("ClientHello"), "the server greeted the client (a bad token fails there)"
    monkeypatch.setenv("MODAL_PROFILE", "personal")
    with pytest.raises(errors.AuthenticationError, match="refused") as caught:
        connect(fake_modal)
    assert "as-personal" not in str(caught.value)


def test_oauth_credentials_are_accepted(fake_modal, no_env_token, monkeypatch):
    monkeypatch.setenv("MODAL_OAUTH_REFRESH_TOKEN", "rt-test")
    monkeypatch.setenv("MODAL_OAUTH_CLIENT_ID", "client-1")
    monkeypatch.setenv("MODAL_OAUTH_CLIENT_SECRET", "oauth-secret-value")
    credentials = modal_credentials()
    assert credentials is not None and credentials.oauth is not None and credentials.token is None
    assert "rt-test" not in repr(credentials) and "oauth-secret-value" not in repr(credentials)
    connect(fake_modal)


@pytest.mark.parametrize(("text", "profile", "error", "match"), [
    ('[a]\ntoken_id = "x"\n[b]\ntoken_id = "y"\n', None, errors.ConfigError, "no Modal profile is active"),
    ('[a]\nactive = true\n[b]\nactive = true\n', None, errors.ConfigError, "more than one Modal profile"),
    ('[a]\ntoken_id = "x"\ntoken_secret = "y"\nactive = true\n', "missing", errors.AuthenticationError,
     "'missing'"),
])
def test_profile_mistakes_are_named(no_env_token, tmp_path, monkeypatch, text, profile, error, match):
    config = tmp_path / "modal.toml"
    config.write_text(text)
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(config))
    if profile:
        monkeypatch.setenv("MODAL_PROFILE", profile)
    with pytest.raises(error, match=match):
        modal_credentials()


def test_token_and_oauth_together_are_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "none.toml"))
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-x")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-x")
    monkeypatch.setenv("MODAL_OAUTH_REFRESH_TOKEN", "rt-x")
    with pytest.raises(errors.ConfigError, match="both"):
        modal_credentials()
