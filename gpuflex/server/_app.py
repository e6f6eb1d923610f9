"""``gpuflex serve``: a FastAPI dev server exposing every endpoint of an app file over JSON.

Routes (``<name>`` is the endpoint's name; a class endpoint's methods are ``/<name>/<method>``):

* ``POST /<name>``: call it; the JSON body holds the arguments by name, validated against the type hints
  (``bytes`` as base64). The response is the JSON result (a list of chunks for a generator endpoint, or
  server-sent events when the request accepts ``text/event-stream``).
* ``POST /<name>/jobs`` -> ``{"id": ...}`` (202); ``GET /jobs/<id>``; ``GET /jobs/<id>/stream`` (server-sent
  events: one ``data:`` line of JSON per chunk, then ``event: end`` or ``event: error``); ``POST /jobs/<id>/cancel``.
* ``GET /health``; OpenAPI at ``/openapi.json`` and ``/docs``.
* ``GET /``: a live dashboard (endpoints, workers, jobs, spend); ``GET /stats``: the same numbers as JSON, or as
  server-sent events; ``GET /metrics``: Prometheus (see :mod:`gpuflex.server._dashboard`).

A body that is not JSON gets 400; JSON that does not fit the signature (validated strictly: a boolean is not a
number) 422 naming the field; an unknown job 404. Errors of accepted calls are listed in
:mod:`gpuflex.server._jobs` (502 when the endpoint's own code raised); :mod:`gpuflex.server._openapi` writes every
status into the OpenAPI document. Failures that answer a 5xx are logged (``gpuflex.server``) with the remote
traceback. Only JSON comes in: never pickle.
Bound to anything but loopback, the server needs a token, and every route but ``/health`` and the dashboard's
static page and script (which hold no data) then requires ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import os
import traceback
from typing import TYPE_CHECKING, Any

import anyio
import pydantic
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRouter
from starlette.exceptions import HTTPException

from .._apps import load_app
from .._jsoncall import NotJson, validation_errors
from ..errors import ConfigError, GpuflexError
from ._dashboard import OPEN_PATHS, add_dashboard_routes, poll_workers_forever
from ._jobs import error_body, error_status, job_json, remote_traceback, sse
from ._openapi import build_openapi
from ._state import ServerState

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from rich.console import Console
    from starlette.types import ASGIApp, Receive, Scope, Send

    from .._job import Job
    from ._schema import Route

__all__ = ["create_app", "is_loopback"]

logger = logging.getLogger("gpuflex.server")
DESCRIPTION = ("Endpoints of a gpuflex app. Bodies are JSON, validated strictly against each function's type hints "
               "(bytes as base64). Every answer that is not a success is {\"error\": type, \"message\": ...}.")


def _server_logger() -> logging.Logger:
    """``gpuflex.server`` on stderr when the app configured no logging of its own (``gpuflex serve``)."""
    if not logger.handlers and not logging.getLogger().handlers and not getattr(logger, "_gpuflex_default", False):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:    [gpuflex] %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
        logger._gpuflex_default = True  # type: ignore[attr-defined]
    return logger


def log_failure(what: str, exc: BaseException, status: int) -> None:
    """Log a call that answered a 5xx: with the remote traceback when the endpoint's code raised."""
    if status < 500:
        return
    tb = remote_traceback(exc)
    if tb is None and status in (500, 502):
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    body = error_body(exc)
    text = f"{what} answered {status} {body['error']}: {body['message']}"
    _server_logger().error(text + (f"\nRemote traceback:\n{tb.rstrip()}" if tb else ""))


def _error(exc: BaseException, route: Route, job: Job | None = None) -> JSONResponse:
    status = error_status(exc)
    log_failure(f"POST {route.path}" + (f" (job {job.id})" if job is not None else ""), exc, status)
    return JSONResponse(error_body(exc, route.endpoint.name), status_code=status)


def _not_found(job_id: str) -> JSONResponse:
    return JSONResponse({"error": "NotFound", "message": f"no job {job_id!r} on this server"}, status_code=404)


def _bad_body(exc: pydantic.ValidationError) -> JSONResponse:
    """422 for JSON that does not fit the signature; the message names each field."""
    message, errors = validation_errors(exc)
    return JSONResponse({"error": "ValidationError", "message": message, "detail": errors}, status_code=422)


async def _events(job: Job, route: Route, *, cancel_on_close: bool) -> AsyncIterator[str]:
    try:
        async for chunk in job.aiter_chunks():
            yield sse(route.call.to_json(chunk))
    except Exception as exc:
        yield sse(error_body(exc, job.endpoint), event="error")
        return
    finally:
        if cancel_on_close and not job.done():
            await job.acancel()
    yield sse({"status": job.status.value}, event="end")


async def _start(state: ServerState, route: Route, request: Request) -> Job | Response:
    try:
        body = route.parse(await request.body())
    except NotJson as exc:
        return JSONResponse({"error": "MalformedJSON", "message": f"the body is not JSON: {exc}"}, status_code=400)
    except pydantic.ValidationError as exc:
        return _bad_body(exc)
    try:
        return state.spawn(route, body)
    except GpuflexError as exc:
        return _error(exc, route)
    except TypeError as exc:  # the arguments do not bind to the signature (checked before sending)
        return JSONResponse({"error": "ValidationError", "message": str(exc)}, status_code=422)


def _call_handler(state: ServerState, route: Route) -> Any:
    async def call(request: Request) -> Response:
        job = await _start(state, route, request)
        if isinstance(job, Response):
            return job
        if route.kind.streams:
            if "text/event-stream" in request.headers.get("accept", ""):
                return StreamingResponse(_events(job, route, cancel_on_close=True), media_type="text/event-stream")
            try:
                return JSONResponse([route.call.to_json(chunk) async for chunk in job.aiter_chunks()])
            except Exception as exc:
                return _error(exc, route, job)
        try:
            return JSONResponse(route.call.to_json(await job.aresult()))
        except Exception as exc:
            return _error(exc, route, job)

    return call


async def _log_when_failed(job: Job, route: Route) -> None:
    """A job started through ``/jobs``: log its failure as a call's would be."""
    try:
        await job.aresult()
    except Exception as exc:
        log_failure(f"job {job.id} of {route.label}", exc, error_status(exc))


def _submit_handler(state: ServerState, route: Route) -> Any:
    async def submit(request: Request) -> Response:
        job = await _start(state, route, request)
        if isinstance(job, Response):
            return job
        state.jobs.add(job, route)
        if state.tasks is not None:
            state.tasks.start_soon(_log_when_failed, job, route)
        return JSONResponse({"id": job.id}, status_code=202)

    return submit


def bind_routes(app: FastAPI, state: ServerState, static: list[Any]) -> None:
    """Point the app's endpoint routes at ``state.routes`` (at start, and after each hot reload)."""
    router = APIRouter()
    for route in state.routes:
        router.add_api_route(route.path, _call_handler(state, route), methods=["POST"],
                             name=f"call_{route.label}")
        router.add_api_route(f"{route.path}/jobs", _submit_handler(state, route), methods=["POST"],
                             name=f"submit_{route.label}")
    app.router.routes = [*static, *router.routes]  # one assignment: requests see the old or the new set
    app.openapi_schema = None


class _TokenGuard:
    """Every route but /health and the dashboard's page and script requires ``Authorization: Bearer <token>``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = JSONResponse({"error": "Unauthorized", "message": "send Authorization: Bearer <token>"},
                                        status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


_HTTP_ERRORS = {404: "NotFound", 405: "MethodNotAllowed"}


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own answers (no such route, a method the route does not take) in the server's error shape."""
    assert isinstance(exc, HTTPException)
    name = _HTTP_ERRORS.get(exc.status_code, "HTTPError")
    message = f"no route {request.method} {request.url.path}" if exc.status_code in (404, 405) else str(exc.detail)
    if exc.status_code == 405:
        message += f"; it takes {exc.headers.get('Allow', '') if exc.headers else ''}"
    return JSONResponse({"error": name, "message": message}, status_code=exc.status_code, headers=exc.headers)


def create_app(module_path: str | Path, *, token: str | None = None, backend: str | None = None,
               reload: bool = False, console: Console | None = None) -> FastAPI:
    """The dev server's ASGI app for the endpoints in ``module_path``; ``reload`` watches the project."""
    state = ServerState(load_app(module_path), backend)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            state.tasks = tg
            stop = anyio.Event()
            tg.start_soon(poll_workers_forever, state)
            if reload:
                from ._reload import Reloader

                reloader = Reloader(state, lambda: bind_routes(app, state, static), console)
                tg.start_soon(reloader.watch, stop)
            try:
                yield
            finally:
                stop.set()
                state.tasks = None
                tg.cancel_scope.cancel()

    title = f"gpuflex: {state.loaded.path.name}"
    app = FastAPI(title=title, lifespan=lifespan, description=DESCRIPTION)
    app.state.gpuflex = state
    app.add_exception_handler(HTTPException, _http_error)
    if token:
        app.add_middleware(_TokenGuard, token=token)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(title=title, description=DESCRIPTION, routes=state.routes,
                                               token=bool(token))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/health")
    async def health() -> Response:
        return JSONResponse({
            "status": "ok", "app": str(state.loaded.path), "backend": state.backend or "default",
            "endpoints": sorted(state.loaded.endpoints), "routes": [r.path for r in state.routes],
            "reloads": state.reloads, "pid": os.getpid()})

    @app.get("/jobs/{job_id}")
    async def get_job(job_id: str) -> Response:
        entry = state.jobs.get(job_id)
        return _not_found(job_id) if entry is None else JSONResponse(job_json(entry))

    @app.get("/jobs/{job_id}/stream")
    async def stream_job(job_id: str) -> Response:
        entry = state.jobs.get(job_id)
        if entry is None:
            return _not_found(job_id)
        if not entry.route.kind.streams or entry.streamed:
            message = "already being streamed" if entry.streamed else "not a generator endpoint: GET /jobs/<id>"
            return JSONResponse({"error": "Conflict", "message": f"job {job_id}: {message}"}, status_code=409)
        entry.streamed = True
        return StreamingResponse(_events(entry.job, entry.route, cancel_on_close=False), media_type="text/event-stream")

    @app.post("/jobs/{job_id}/cancel")
    async def cancel_job(job_id: str) -> Response:
        entry = state.jobs.get(job_id)
        if entry is None:
            return _not_found(job_id)
        await entry.job.acancel()
        return JSONResponse({"id": job_id, "status": entry.job.status.value})

    add_dashboard_routes(app, state)
    static = list(app.router.routes)
    bind_routes(app, state, static)
    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"refusing to serve on {host} without a token: anyone who can reach it could run code on your "
            "backends. Pass --token (or set GPUFLEX_TOKEN), or bind 127.0.0.1"
        )
