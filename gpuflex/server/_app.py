"""``gpuflex serve``: a FastAPI dev server exposing every endpoint of an app file over JSON.

Routes (``<name>`` is the endpoint's name; a class endpoint's methods are ``/<name>/<method>``):

* ``POST /<name>``: call it; the JSON body holds the arguments by name, validated against the type hints
  (``bytes`` as base64). The response is the JSON result (a list of chunks for a generator endpoint, or
  server-sent events when the request accepts ``text/event-stream``).
* ``POST /<name>/jobs`` -> ``{"id": ...}`` (202); ``GET /jobs/<id>``; ``GET /jobs/<id>/stream`` (server-sent
  events: one ``data:`` line of JSON per chunk, then ``event: end`` or ``event: error``); ``POST /jobs/<id>/cancel``.
* ``GET /health``; OpenAPI at ``/openapi.json`` and ``/docs``.

Bad input gets 422 naming the field; an unknown job 404. Errors of accepted calls are listed in
:mod:`gpuflex.server._jobs` (502 when the endpoint's own code raised). Only JSON comes in: never pickle.
Bound to anything but loopback, the server needs a token, and every route but ``/health`` then requires
``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import contextlib
import hmac
import inspect
import ipaddress
import os
from typing import TYPE_CHECKING, Annotated, Any

import anyio
from fastapi import Body, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRouter
from pydantic import BaseModel

from .._apps import load_app
from ..errors import ConfigError
from ._jobs import error_body, error_status, job_json, sse
from ._schema import Route, to_jsonable
from ._state import ServerState

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from rich.console import Console
    from starlette.types import ASGIApp, Receive, Scope, Send

    from .._job import Job

__all__ = ["create_app", "is_loopback"]


class JobId(BaseModel):
    id: str


def _error(exc: BaseException) -> JSONResponse:
    return JSONResponse(error_body(exc), status_code=error_status(exc))


def _not_found(job_id: str) -> JSONResponse:
    return JSONResponse({"error": "NotFound", "message": f"no job {job_id!r} on this server"}, status_code=404)


async def _events(job: Job, *, cancel_on_close: bool) -> AsyncIterator[str]:
    try:
        async for chunk in job.aiter_chunks():
            yield sse(to_jsonable(chunk))
    except Exception as exc:
        yield sse(error_body(exc), event="error")
        return
    finally:
        if cancel_on_close and not job.done():
            await job.acancel()
    yield sse({"status": job.status.value}, event="end")


def _body_param(route: Route) -> inspect.Parameter:
    if route.body_required:
        return inspect.Parameter("body", inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[route.model, Body()])
    return inspect.Parameter("body", inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[route.model | None, Body()])


def _with_body(handler: Any, route: Route) -> Any:
    request = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request)
    handler.__signature__ = inspect.Signature([request, _body_param(route)], return_annotation=Response)
    return handler


def _call_handler(state: ServerState, route: Route) -> Any:
    async def call(request: Request, body: BaseModel | None = None) -> Response:
        try:
            job = state.spawn(route, body)
        except Exception as exc:
            return _error(exc)
        if route.kind.streams:
            if "text/event-stream" in request.headers.get("accept", ""):
                return StreamingResponse(_events(job, cancel_on_close=True), media_type="text/event-stream")
            try:
                return JSONResponse([to_jsonable(chunk) async for chunk in job.aiter_chunks()])
            except Exception as exc:
                return _error(exc)
        try:
            return JSONResponse(to_jsonable(await job.aresult()))
        except Exception as exc:
            return _error(exc)

    return _with_body(call, route)


def _submit_handler(state: ServerState, route: Route) -> Any:
    async def submit(request: Request, body: BaseModel | None = None) -> Response:
        try:
            job = state.spawn(route, body)
        except Exception as exc:
            return _error(exc)
        state.jobs.add(job, route)
        return JSONResponse({"id": job.id}, status_code=202)

    return _with_body(submit, route)


def _response_model(route: Route) -> Any:
    if route.result_type is Any:
        return None
    return list[route.result_type] if route.kind.streams else route.result_type  # type: ignore[name-defined]


def bind_routes(app: FastAPI, state: ServerState, static: list[Any]) -> None:
    """Point the app's endpoint routes at ``state.routes`` (at start, and after each hot reload)."""
    router = APIRouter()
    for route in state.routes:
        tag = route.endpoint.name
        summary = f"Call {route.label} ({route.kind.value})"
        router.add_api_route(route.path, _call_handler(state, route), methods=["POST"], tags=[tag],
                             summary=summary, description=route.doc or "", name=f"call_{route.label}",
                             response_model=_response_model(route))
        router.add_api_route(f"{route.path}/jobs", _submit_handler(state, route), methods=["POST"], tags=[tag],
                             summary=f"Start {route.label} as a job", name=f"submit_{route.label}",
                             response_model=JobId, status_code=202)
    app.router.routes = [*static, *router.routes]  # one assignment: requests see the old or the new set
    app.openapi_schema = None


class _TokenGuard:
    """Every route but /health requires ``Authorization: Bearer <token>``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                response = JSONResponse({"error": "Unauthorized", "message": "send Authorization: Bearer <token>"},
                                        status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _JsonBodies:
    """Read every POST body as JSON whatever its content type (``curl -d`` sends form encoding): this server
    takes nothing else, and a body that is not JSON still gets a 422."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    parts = []
    for error in errors:
        loc = [str(x) for x in error.get("loc", ()) if x != "body"]
        if error.get("type") == "json_invalid":
            reason = error.get("ctx", {}).get("error", "")
            parts.append(f"body: malformed JSON at position {'.'.join(loc) or '0'}: {reason}")
        else:
            parts.append(f"{'.'.join(loc) or 'body'}: {error.get('msg', 'invalid')}")
    body = {"error": "ValidationError", "message": "; ".join(parts), "detail": jsonable_encoder(errors)}
    return JSONResponse(body, status_code=422)


def create_app(module_path: str | Path, *, token: str | None = None, backend: str | None = None,
               reload: bool = False, console: Console | None = None) -> FastAPI:
    """The dev server's ASGI app for the endpoints in ``module_path``; ``reload`` watches the project."""
    state = ServerState(load_app(module_path), backend)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not reload:
            yield
            return
        from ._reload import Reloader

        reloader = Reloader(state, lambda: bind_routes(app, state, static), console)
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(reloader.watch, stop)
            yield
            stop.set()

    app = FastAPI(title=f"gpuflex: {state.loaded.path.name}", lifespan=lifespan,
                  description="Endpoints of a gpuflex app. Errors raised by an endpoint's code answer 502 with "
                  '{"error": type, "message": ...}.')
    app.state.gpuflex = state
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(_JsonBodies)
    if token:
        app.add_middleware(_TokenGuard, token=token)

    @app.get("/health", tags=["server"])
    async def health() -> dict[str, Any]:
        return {"status": "ok", "app": str(state.loaded.path), "backend": state.backend or "default",
                "endpoints": sorted(state.loaded.endpoints), "routes": [r.path for r in state.routes],
                "reloads": state.reloads, "pid": os.getpid()}

    @app.get("/jobs/{job_id}", tags=["jobs"])
    async def get_job(job_id: str) -> Response:
        entry = state.jobs.get(job_id)
        return _not_found(job_id) if entry is None else JSONResponse(job_json(entry))

    @app.get("/jobs/{job_id}/stream", tags=["jobs"])
    async def stream_job(job_id: str) -> Response:
        entry = state.jobs.get(job_id)
        if entry is None:
            return _not_found(job_id)
        if not entry.route.kind.streams or entry.streamed:
            message = "already being streamed" if entry.streamed else "not a generator endpoint: GET /jobs/<id>"
            return JSONResponse({"error": "Conflict", "message": f"job {job_id}: {message}"}, status_code=409)
        entry.streamed = True
        return StreamingResponse(_events(entry.job, cancel_on_close=False), media_type="text/event-stream")

    @app.post("/jobs/{job_id}/cancel", tags=["jobs"])
    async def cancel_job(job_id: str) -> Response:
        entry = state.jobs.get(job_id)
        if entry is None:
            return _not_found(job_id)
        await entry.job.acancel()
        return JSONResponse({"id": job_id, "status": entry.job.status.value})

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
