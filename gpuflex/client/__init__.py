"""The core client: the ``@endpoint`` decorator and the session that binds endpoints to
backends and drives each job through retries, deadlines, streaming, cost accounting and hooks."""

from __future__ import annotations

import typing as _typing

from ._endpoint import Endpoint, RemoteInstance, endpoint

if _typing.TYPE_CHECKING:
    from ._session import Session, get_session, shutdown

__all__ = ["Endpoint", "RemoteInstance", "Session", "endpoint", "get_session", "shutdown"]


def __getattr__(name: str) -> _typing.Any:
    """The session (its event loop, plugins and backends) loads on first use: a worker that imports an endpoint's
    module never needs it."""
    if name in ("Session", "get_session", "shutdown"):
        from . import _session

        return getattr(_session, name)
    raise AttributeError(f"module 'gpuflex.client' has no attribute {name!r}")
