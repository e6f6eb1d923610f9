"""What the dev server's routes serve: the app's current endpoints (swapped by hot reload) and the jobs started."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from .._config import use
from ._jobs import JobTable
from ._schema import Route, routes_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import TaskGroup
    from pydantic import BaseModel

    from .._apps import LoadedApp
    from .._job import Job

__all__ = ["ServerState"]


class ServerState:
    """What the routes serve: the app's current endpoints (swapped by hot reload) and the jobs started."""

    def __init__(self, loaded: LoadedApp, backend: str | None) -> None:
        self.loaded = loaded
        self.backend = backend
        self.routes: list[Route] = [r for ep in loaded.endpoints.values() for r in routes_for(ep)]
        self.jobs = JobTable()
        self.called: set[str] = set()  # endpoints called since start: hot reload redeploys them right away
        self.reloads = 0
        self.tasks: TaskGroup | None = None  # the server's own tasks, while it runs (set by its lifespan)
        self.watchers = 0  # dashboard pages open (GET /stats as server-sent events)
        self.closing = False  # the server is shutting down: live streams end rather than hold it up
        self.wakers: set[Callable[[], None]] = set()  # wake each live stream (to end it)

    def close_streams(self) -> None:
        """End the dashboard's live streams (the server is stopping; may be called from a signal handler)."""
        self.closing = True
        for wake in list(self.wakers):
            wake()

    def spawn(self, route: Route, body: BaseModel | None) -> Job:
        with use(self.backend) if self.backend else contextlib.nullcontext():
            job = route.spawn(body)
        self.called.add(route.endpoint.name)
        return job
