"""The core client: the ``@endpoint`` decorator and the session that binds endpoints to
backends and drives each job through retries, deadlines, streaming, cost accounting and hooks."""

from ._endpoint import Endpoint, RemoteInstance, endpoint
from ._session import Session, get_session, shutdown

__all__ = ["Endpoint", "RemoteInstance", "Session", "endpoint", "get_session", "shutdown"]
