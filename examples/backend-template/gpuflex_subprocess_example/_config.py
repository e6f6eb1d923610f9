"""Options of the backend: ``gpuflex.use("subprocess-example", start_timeout=30)`` or, in pyproject.toml,
``[tool.gpuflex.backends.subprocess-example]``.

The core builds this class from the user's options (``config_cls(**options)``); validate here, at the boundary,
so a typo fails when the backend is chosen rather than in the middle of a job.
"""

from __future__ import annotations

import attrs


def _positive(inst: object, attr: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"{attr.name} must be a positive number of seconds, got {value!r}")


@attrs.frozen(kw_only=True)
class SubprocessConfig:
    """
    :param python: the interpreter that runs workers (default: the caller's). It needs the same Python minor
        version and the same gpuflex version as the caller; the worker refuses to start otherwise.
    :param start_timeout: how long a worker may take to import the endpoint's module before its job fails.
    """

    python: str | None = None
    start_timeout: float = attrs.field(default=60.0, validator=_positive)
