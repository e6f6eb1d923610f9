"""Options of the Modal backend (``gpuflex.use("modal", ...)`` or ``[tool.gpuflex.backends.modal]``)."""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["ModalConfig"]


def _positive(inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"{attr.name} must be a positive number, got {value!r}")


@attrs.frozen(kw_only=True)
class ModalConfig:
    """
    :param app_name: the ``modal.App`` every endpoint joins (deployed under this name by ``gpuflex deploy``).
    :param environment: the Modal environment (default: your profile's).
    :param secrets_from: ``"modal"``: each name in an endpoint's ``secrets`` is a Modal Secret of that name;
        ``"local"``: the values are read from this machine's environment and sent as an ephemeral secret.
    :param server_url: Modal's API address (default: ``MODAL_SERVER_URL`` or Modal's own); tests point it at a
        fake server on 127.0.0.1.
    :param connect_timeout: seconds to wait for Modal's API before failing (Modal's client alone retries for
        about a minute when the network is down).
    :param python_version: the containers' Python (default: this interpreter's major.minor; they must match).
    """

    app_name: str = "gpuflex"
    environment: str | None = None
    secrets_from: str = attrs.field(default="modal", validator=attrs.validators.in_(("modal", "local")))
    server_url: str | None = None
    connect_timeout: float = attrs.field(default=10.0, validator=_positive)
    python_version: str | None = None
