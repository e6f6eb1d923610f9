"""The dev server's live view: ``GET /`` (the dashboard page), ``GET /dashboard.js``, ``GET /stats`` (JSON, or
server-sent events while the page is open) and ``GET /metrics`` (Prometheus).

The page and its script are static files of gpuflex (no build step, nothing from a CDN) and hold no data: every
number comes from ``/stats``, which a token-protected server guards like its other routes. The page reads the token
from the URL's fragment (``/#token=...``, which browsers never send to the server, so it lands in no log) or asks for
it, keeps it in the tab's session storage, and sends it as ``Authorization: Bearer``.

While a page is open, the backends' own lists of their workers (``Backend.workers()``) are read every second: workers
still starting or stopping, which no hook reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import Request  # noqa: TC002 - FastAPI reads the annotation at run time
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .._collector import collector
from .._config import resolve_backend, use
from .._registry import get_registry
from ..client._session import get_session
from ._jobs import sse
from ._metrics import CONTENT_TYPE, metrics_text

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from fastapi import FastAPI

    from .._stats import Stats
    from ._state import ServerState

__all__ = ["OPEN_PATHS", "add_dashboard_routes", "poll_workers_forever"]

logger = logging.getLogger("gpuflex.server")
OPEN_PATHS = frozenset({"/health", "/", "/dashboard.js"})  # no data in them: no token needed
POLL_SECONDS = 1.0
THROTTLE_SECONDS = 0.25  # at most four snapshots a second per page
QUIET_SECONDS = 5.0  # a snapshot at least this often (it also keeps proxies from closing the stream)
_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _static(name: str) -> bytes:
    return importlib.resources.files("gpuflex.server").joinpath("_static", name).read_bytes()


def _snapshot() -> Stats:
    session = get_session()
    return collector().snapshot(spent_usd=session.meter.total().usd, budget_usd=session.budget.current_limit())


def _declared(state: ServerState) -> list[dict[str, Any]]:
    """The app's endpoints as declared, with the backend each runs on (before their first call too)."""
    out = []
    for name, ep in sorted(state.loaded.endpoints.items()):
        spec = ep.spec
        try:
            with use(state.backend) if state.backend else contextlib.nullcontext():
                backend = get_registry().get(resolve_backend(name, spec.backend, spec).name).name
        except Exception as exc:  # an unknown backend: the call will say so; the page shows why
            backend = f"? ({exc})"
        out.append({"endpoint": name, "backend": backend, "kind": spec.kind.value,
                    "gpu": str(spec.gpu) if spec.gpu else None,
                    "settings": {"min_workers": spec.min_workers, "max_workers": spec.max_workers,
                                 "concurrency": spec.concurrency, "max_batch_size": spec.max_batch_size,
                                 "idle_timeout": spec.idle_timeout, "timeout": spec.timeout,
                                 "retries": spec.retries}})
    return out


def server_stats(state: ServerState) -> dict[str, Any]:
    """``GET /stats``: :func:`gpuflex.stats`, the app's declared endpoints, and spend per endpoint (idle tails of
    per-second workers included, as ``gpuflex.costs()`` counts them)."""
    data = _snapshot().to_json()
    costs = get_session().meter.summary()
    data.update(app=state.loaded.path.name, reloads=state.reloads, declared=_declared(state), costs=[
        {"endpoint": name, "calls": c.calls, "cost_usd": c.cost.usd, "idle_usd": c.idle.usd, "bursts": c.bursts}
        for name, c in costs.items()])
    return data


async def poll_workers() -> None:
    """Merge each backend's list of its workers into the stats (workers still starting or stopping)."""
    session = get_session()
    backends = list(getattr(session, "_backends", {}).values())  # the session has no public list of them yet

    async def read() -> list[tuple[str, list[Any]]]:
        found = []
        for backend in backends:
            with contextlib.suppress(Exception), anyio.move_on_after(POLL_SECONDS):
                found.append((backend.name, await backend.workers()))
        return found

    with anyio.move_on_after(2 * POLL_SECONDS):
        for name, infos in await asyncio.wrap_future(session.submit(read())):
            collector().observe_workers(name, infos)


async def poll_workers_forever(state: ServerState) -> None:
    while True:
        if state.watchers:
            try:
                await poll_workers()
            except Exception as exc:  # never let the page's extras take the server down
                logger.debug("reading the backends' workers failed: %s", exc)
        await anyio.sleep(POLL_SECONDS)


async def _stats_events(state: ServerState) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()

    def changed() -> None:  # on the gpuflex loop thread
        if not wake.is_set():
            loop.call_soon_threadsafe(wake.set)

    unsubscribe = collector().subscribe(changed)
    state.watchers += 1
    state.wakers.add(changed)
    try:
        while not state.closing:
            wake.clear()
            yield sse(server_stats(state), event="stats")
            with anyio.move_on_after(QUIET_SECONDS):
                await wake.wait()
            if not state.closing:
                await anyio.sleep(THROTTLE_SECONDS)
    finally:
        state.watchers -= 1
        state.wakers.discard(changed)
        unsubscribe()


def add_dashboard_routes(app: FastAPI, state: ServerState) -> None:
    @app.get("/")
    async def dashboard() -> Response:
        return Response(_static("dashboard.html"), media_type="text/html; charset=utf-8",
                        headers={**_HEADERS, "Content-Security-Policy": _CSP})

    @app.get("/dashboard.js")
    async def dashboard_js() -> Response:
        return Response(_static("dashboard.js"), media_type="text/javascript; charset=utf-8", headers=_HEADERS)

    @app.get("/stats")
    async def stats(request: Request) -> Response:
        if "text/event-stream" in request.headers.get("accept", ""):
            return StreamingResponse(_stats_events(state), media_type="text/event-stream", headers=_HEADERS)
        return JSONResponse(server_stats(state), headers=_HEADERS)

    @app.get("/metrics")
    async def metrics() -> Response:
        with contextlib.suppress(Exception):
            await poll_workers()
        return Response(metrics_text(_snapshot()), media_type=CONTENT_TYPE, headers=_HEADERS)
