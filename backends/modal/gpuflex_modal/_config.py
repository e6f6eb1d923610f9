"""Options of the Modal backend (``gpuflex.use("modal", ...)`` or ``[tool.gpuflex.backends.modal]``)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import attrs

__all__ = ["ModalConfig", "default_app_name"]


def _positive(inst: object, attr: attrs.Attribute[Any], value: float | None) -> None:
    if value is None and attr.name == "build_timeout":
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"{attr.name} must be a positive number, got {value!r}")


def _app_name(inst: object, attr: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value):
        raise ValueError(f"app_name {value!r}: Modal app names take letters, digits, '-', '_' and '.', at most 64")


def default_app_name(start: Path | None = None) -> str:
    """``gpuflex-<project>``: the ``[project] name`` of the nearest pyproject.toml above ``start`` (default: the
    working directory), else the name of the directory holding the nearest gpuflex.toml or pyproject.toml, else
    the working directory's own name. Two projects never share an app (and redeploy over each other)."""
    here = (start or Path.cwd()).resolve()
    name = here.name
    for directory in (here, *here.parents):
        pyproject, toml = directory / "pyproject.toml", directory / "gpuflex.toml"
        if pyproject.is_file():
            try:
                project = tomllib.loads(pyproject.read_text()).get("project", {}).get("name")
            except (OSError, tomllib.TOMLDecodeError):
                project = None
            name = project if isinstance(project, str) and project else directory.name
            break
        if toml.is_file():
            name = directory.name
            break
    slug = re.sub(r"[^a-z0-9_.-]+", "-", name.lower()).strip("-.") or "app"
    return f"gpuflex-{slug}"[:64]


@attrs.frozen(kw_only=True)
class ModalConfig:
    """
    :param app_name: the ``modal.App`` every endpoint joins and ``gpuflex deploy`` deploys under (default:
        ``gpuflex-<project>``, from the project's name; see :func:`default_app_name`).
    :param environment: the Modal environment (default: ``MODAL_ENVIRONMENT`` or your profile's).
    :param secrets_from: ``"modal"``: each name in an endpoint's ``secrets`` is a Modal Secret of that name,
        holding a key of that name; ``"local"``: the values are read from this machine's environment and sent as
        an ephemeral secret.
    :param server_url: Modal's API address (default: ``MODAL_SERVER_URL``, your profile's, or Modal's own); tests
        point it at a fake server on 127.0.0.1.
    :param connect_timeout: seconds to wait for Modal's API to answer (and accept the credentials) before failing;
        Modal's client alone retries for about a minute when the network is down.
    :param startup_timeout: seconds a container may take to start (image pull, imports, a class's ``setup()``)
        before Modal stops it: Modal's ``startup_timeout``, separate from the endpoint's ``timeout``, which bounds
        each call's run only.
    :param build_timeout: seconds to wait for the app to be created, image builds included (default: no limit; a
        first build of a CUDA image can take well over ten minutes).
    :param stream_output: forward what containers print, setup() tracebacks and image build logs to the
        ``gpuflex.worker`` logger as they happen (Modal's log stream).
    :param python_version: the containers' Python (default: this interpreter's major.minor; they must match).
    :param web_auth: who may call the web endpoints ``gpuflex deploy`` makes: ``"proxy"`` (default) only callers
        sending a Modal proxy-auth token (``Modal-Key`` and ``Modal-Secret`` headers; Modal's
        ``requires_proxy_auth``), ``"public"`` anyone with the URL.
    """

    app_name: str | None = attrs.field(default=None, validator=_app_name)
    environment: str | None = None
    secrets_from: str = attrs.field(default="modal", validator=attrs.validators.in_(("modal", "local")))
    server_url: str | None = None
    connect_timeout: float = attrs.field(default=10.0, validator=_positive)
    startup_timeout: float = attrs.field(default=1200.0, validator=_positive)
    build_timeout: float | None = attrs.field(default=None, validator=_positive)
    stream_output: bool = True
    python_version: str | None = None
    web_auth: str = attrs.field(default="proxy", validator=attrs.validators.in_(("proxy", "public")))

    def app(self) -> str:
        """The app name in effect."""
        return self.app_name or default_app_name()
