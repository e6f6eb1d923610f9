"""Modal credentials, found the way Modal's own client finds them (``modal/config.py``, ``Client.from_env``).

Each setting is ``MODAL_<KEY>`` from the environment, else the active profile's value in ``MODAL_CONFIG_PATH``
(default ``~/.modal.toml``). The active profile is ``MODAL_PROFILE``, else the one marked ``active = true``, else
``default``. Token credentials (``token_id``/``token_secret``) and OAuth ones (``oauth_refresh_token``,
``oauth_client_id`` and one of ``oauth_client_secret``/``oauth_jwt_key``) are both accepted, never both at once.
The file is read on each lookup (Modal's client reads it once, at import), so a test or a long-lived process sees
edits. Secret values never appear in a ``repr`` or an error.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import attrs

from gpuflex.errors import AuthenticationError, ConfigError

__all__ = ["DEFAULT_SERVER_URL", "ModalCredentials", "missing_token", "modal_credentials"]

DEFAULT_SERVER_URL = "https://api.modal.com"


@attrs.frozen(kw_only=True)
class ModalCredentials:
    token: tuple[str, str] | None = attrs.field(default=None, repr=False)
    oauth: dict[str, str] | None = attrs.field(default=None, repr=False)  # _OAuthCredentials' fields
    server_url: str = DEFAULT_SERVER_URL
    environment: str | None = None
    profile: str = "default"
    source: str = ""  # where they came from, for messages


def _config_path() -> Path:
    return Path(os.environ.get("MODAL_CONFIG_PATH") or Path.home() / ".modal.toml").expanduser()


def _profiles(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read Modal's config file {path}: {exc}") from None
    return {name: values for name, values in data.items() if isinstance(values, dict)}


def _active_profile(path: Path, profiles: dict[str, dict[str, Any]]) -> str:
    """Modal's ``_profile`` and its ``_check_config``: at most one active profile, and one must be chosen when
    there are several."""
    active = [name for name, values in profiles.items() if values.get("active") is True]
    if len(active) > 1:
        raise ConfigError(f"more than one Modal profile is active in {path} ({', '.join(active)}): run "
                          "`modal profile activate NAME` or edit the file")
    profile = os.environ.get("MODAL_PROFILE") or (active[0] if active else "default")
    if len(profiles) > 1 and not active and profile == "default":
        raise ConfigError(f"no Modal profile is active in {path} (it has {', '.join(profiles)}): run "
                          "`modal profile activate NAME` or set MODAL_PROFILE")
    return profile


def modal_credentials() -> ModalCredentials | None:
    """Modal's credentials, or ``None`` when none are configured."""
    path = _config_path()
    profiles = _profiles(path)
    profile = _active_profile(path, profiles)
    values = profiles.get(profile, {})

    def get(key: str) -> str | None:
        value = os.environ.get(f"MODAL_{key.upper()}")
        if value is None:
            value = values.get(key)
        return str(value) if value not in (None, "") else None

    token_id, token_secret = get("token_id"), get("token_secret")
    oauth = {key: value for key in ("refresh_token", "client_id", "client_secret", "jwt_key")
             if (value := get(f"oauth_{key}")) is not None}
    server_url = get("server_url") or DEFAULT_SERVER_URL
    common: dict[str, Any] = {"server_url": server_url, "environment": get("environment"), "profile": profile,
              "source": f"profile {profile!r} of {path}" if values else "the environment"}
    if (token_id or token_secret) and oauth:
        raise ConfigError("Modal token credentials and OAuth credentials are both configured; keep one "
                          "(MODAL_TOKEN_* or token_id/token_secret, or MODAL_OAUTH_* / oauth_*)")
    if oauth:
        if "refresh_token" not in oauth or "client_id" not in oauth or \
                ("client_secret" in oauth) == ("jwt_key" in oauth):
            raise ConfigError("Modal OAuth credentials need a refresh token, a client id, and exactly one of a "
                              "client secret or a JWT key (MODAL_OAUTH_* or oauth_* in your profile)")
        return ModalCredentials(oauth=oauth, **common)
    if token_id and token_secret:
        return ModalCredentials(token=(token_id, token_secret), **common)
    if os.environ.get("MODAL_PROFILE") and profile not in profiles:
        raise AuthenticationError(f"the Modal profile {profile!r} (MODAL_PROFILE) is not in {path}: run "
                                  f"`modal profile list`, or `modal token new --profile {profile}`")
    return None


def missing_token() -> AuthenticationError:
    return AuthenticationError("no Modal credentials: run `modal token new` (or `modal setup`), or set "
                               "MODAL_TOKEN_ID and MODAL_TOKEN_SECRET; gpuflex reads them, your ~/.modal.toml "
                               "profiles and OAuth settings the way Modal's client does")


async def open_client(credentials: ModalCredentials, server_url: str, connect_timeout: float) -> Any:
    """A connected Modal client that the server has greeted (``ClientHello``: a bad token fails here)."""
    import anyio
    from modal.client import Client, _OAuthCredentials
    from modal_proto import api_pb2

    from gpuflex.errors import BackendUnavailable

    oauth = _OAuthCredentials(**credentials.oauth) if credentials.oauth else None
    client: Any = Client(server_url, api_pb2.CLIENT_TYPE_CLIENT, credentials.token, oauth_credentials=oauth)
    try:
        with anyio.fail_after(connect_timeout):
            await client.__aenter__()
            await client.hello.aio()
    except TimeoutError:
        await _close(client)
        raise BackendUnavailable(f"Modal's API at {server_url} did not answer within {connect_timeout:g} s; check the "
                                 "network (connect_timeout= waits longer)") from None
    except Exception as exc:
        await _close(client)
        if type(exc).__name__ == "AuthError":
            raise AuthenticationError(f"Modal refused the credentials from {credentials.source}: {exc}. Run "
                                      "`modal token new`, or check MODAL_TOKEN_ID / MODAL_TOKEN_SECRET") from None
        raise BackendUnavailable(f"cannot reach Modal's API at {server_url}: {exc}") from None
    return client


async def _close(client: Any) -> None:
    import contextlib

    with contextlib.suppress(Exception):
        await client.__aexit__(None, None, None)
