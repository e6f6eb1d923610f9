"""The dev server's OpenAPI document: every route with every status it can answer and the schema of each body.

It is written here rather than inferred by FastAPI, because the endpoint routes read and validate their bodies
themselves (strictly, as JSON: see :mod:`gpuflex.server._schema`), and because the statuses of a call come from
:func:`gpuflex.server._jobs.error_status`, which FastAPI cannot see. ``tests/test_server.py`` fuzzes a
server with schemathesis against this document.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from .._models import JobStatus  # noqa: TC001 - pydantic reads the annotations at run time
from .._version import __version__
from ._stats_schema import MODELS as STATS_MODELS
from ._stats_schema import stats_paths

if TYPE_CHECKING:
    from ._schema import Route

__all__ = ["CancelAnswer", "ErrorBody", "Health", "JobId", "JobInfo", "build_openapi"]


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(_Closed):
    """Every answer that is not a success."""

    error: str = Field(description="The exception's type name (ValueError, JobTimeout...), or NotFound, "
                                   "Unauthorized, MalformedJSON, ValidationError, Conflict.")
    message: str
    detail: list[dict[str, Any]] | None = Field(None, description="400 and 422 only: pydantic's list of errors.")


class JobId(_Closed):
    id: str


class JobCost(_Closed):
    usd: float
    billed_seconds: float
    rule: str


class JobInfo(_Closed):
    id: str
    endpoint: str
    method: str | None
    backend: str
    status: JobStatus
    streaming: bool
    attempts: int
    worker: str | None
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    queue_time: float | None
    run_time: float | None
    cost: JobCost
    reason: str | None
    result: Any = Field(None, description="The result, once the job COMPLETED (not for generator jobs).")
    error: ErrorBody | None = Field(None, description="Why the job ended without a result.")


class CancelAnswer(_Closed):
    id: str
    status: JobStatus


class Health(_Closed):
    status: Literal["ok"]
    app: str
    backend: str
    endpoints: list[str]
    routes: list[str]
    reloads: int
    pid: int


# what each status means, in the words the docs use (docs/how-to/dev-server.md)
STATUS_TEXT = {
    400: "The body is not JSON.",
    401: "The Authorization: Bearer token is missing or wrong.",
    402: "The budget (--max-cost) refused the call.",
    404: "No such job on this server.",
    409: "The job was cancelled.",
    413: "The arguments are over the backend's payload limit.",
    422: "The body is JSON, but an argument is missing, unexpected or of the wrong type; the message names it.",
    500: "The result cannot be sent back: it does not pickle, or it has no JSON form (NaN, infinity...).",
    502: "The endpoint's own code raised (a class's setup() included): the exception's type and message.",
    503: "gpuflex or the backend could not run the call (a lost worker, a backend that is down, a bad "
         "configuration).",
    504: "The job ran past the endpoint's timeout.",
}
CALL_ERRORS = (400, 402, 409, 413, 422, 500, 502, 503, 504)
SUBMIT_ERRORS = (400, 402, 413, 422, 503)
STREAM_CONFLICT = "The job is not a generator's, or its chunks are already being streamed (they go out once)."
SSE = {"schema": {  # one event (OpenAPI 3.1 has no itemSchema yet)
    "type": "object", "required": ["data"],
    "description": "Server-sent events: one `data:` line of JSON per chunk, then `event: end` with "
                   '{"status": ...}, or `event: error` with an error body.',
    "properties": {"event": {"enum": ["message", "end", "error"]},
                   "data": {"type": "string", "contentMediaType": "application/json"}},
}}


def _json(ref: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": ref}}


def _errors(statuses: tuple[int, ...], error_ref: dict[str, Any], token: bool) -> dict[str, Any]:
    codes = sorted({*statuses, *((401,) if token else ())})
    return {str(code): {"description": STATUS_TEXT[code], "content": _json(error_ref)} for code in codes}


def _job_links() -> dict[str, Any]:
    param = {"job_id": "$response.body#/id"}
    return {name: {"operationId": op, "parameters": param}
            for name, op in (("GetJob", "get_job"), ("StreamJob", "stream_job"), ("CancelJob", "cancel_job"))}


def _endpoint_paths(route: Route, refs: dict[Any, dict[str, Any]], token: bool) -> dict[str, Any]:
    error = refs["ErrorBody"]
    body = {"required": route.body_required, "content": _json(refs[("in", route.path)])}
    result = refs[("out", route.path)]
    ok: dict[str, Any] = {"description": "The result."}
    if route.kind.streams:
        ok = {"description": "The generator's chunks: a JSON list, or server-sent events when the request "
                             "accepts text/event-stream.",
              "content": {**_json({"type": "array", "items": result}), "text/event-stream": SSE}}
    else:
        ok["content"] = _json(result)
    tags = [route.endpoint.name]
    call = {"tags": tags, "summary": f"Call {route.label} ({route.kind.value})", "description": route.doc or "",
            "operationId": f"call_{route.label}", "requestBody": body,
            "responses": {"200": ok, **_errors(CALL_ERRORS, error, token)}}
    submit = {"tags": tags, "summary": f"Start {route.label} as a job", "operationId": f"submit_{route.label}",
              "requestBody": body,
              "responses": {"202": {"description": "The job was accepted.", "content": _json(refs["JobId"]),
                                    "links": _job_links()},
                            **_errors(SUBMIT_ERRORS, error, token)}}
    return {route.path: {"post": call}, f"{route.path}/jobs": {"post": submit}}


def _job_paths(refs: dict[Any, dict[str, Any]], token: bool) -> dict[str, Any]:
    error = refs["ErrorBody"]
    param = [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    tags = ["jobs"]
    return {
        "/jobs/{job_id}": {"get": {
            "tags": tags, "summary": "A job's status, timings and cost; its result or error once done",
            "operationId": "get_job", "parameters": param,
            "responses": {"200": {"description": "The job.", "content": _json(refs["JobInfo"])},
                          **_errors((404,), error, token)}}},
        "/jobs/{job_id}/stream": {"get": {
            "tags": tags, "summary": "A generator job's chunks as server-sent events", "operationId": "stream_job",
            "parameters": param,
            "responses": {"200": {"description": "The chunks.", "content": {"text/event-stream": SSE}},
                          **_errors((404,), error, token),
                          "409": {"description": STREAM_CONFLICT, "content": _json(error)}}}},
        "/jobs/{job_id}/cancel": {"post": {
            "tags": tags, "summary": "Cancel a job", "operationId": "cancel_job", "parameters": param,
            "responses": {"200": {"description": "The job's status after the request.",
                                  "content": _json(refs["CancelAnswer"])},
                          **_errors((404,), error, token)}}},
    }


_OPEN = {("get", "/health"), ("get", "/"), ("get", "/dashboard.js")}  # no data in them: no token needed


def build_openapi(*, title: str, description: str, routes: list[Route], token: bool) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a server serving ``routes`` (with a bearer token when ``token``)."""
    inputs: list[tuple[Any, Literal["validation", "serialization"], TypeAdapter[Any]]] = [
        (name, "serialization", TypeAdapter(model))
        for name, model in (("ErrorBody", ErrorBody), ("JobId", JobId), ("JobInfo", JobInfo),
                            ("CancelAnswer", CancelAnswer), ("Health", Health), *STATS_MODELS.items())
    ]
    for route in routes:
        inputs.append((("in", route.path), "validation", TypeAdapter(route.model)))
        inputs.append((("out", route.path), "serialization", TypeAdapter(route.result_type)))
    keyed, defs = TypeAdapter.json_schemas(inputs, ref_template="#/components/schemas/{model}")
    refs = {key: schema for (key, _mode), schema in keyed.items()}
    paths: dict[str, Any] = {"/health": {"get": {
        "tags": ["server"], "summary": "Liveness, the app, its backend, endpoints and routes", "operationId": "health",
        "responses": {"200": {"description": "The server is up.", "content": _json(refs["Health"])}}}}}
    paths.update(stats_paths(refs, _errors((), refs["ErrorBody"], token)))
    for route in routes:  # an endpoint named like a route of the server's (``stats``) adds its POST beside the GET
        for path, operations in _endpoint_paths(route, refs, token).items():
            paths.setdefault(path, {}).update(operations)
    paths.update(_job_paths(refs, token))
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": __version__, "description": description},
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {})},
    }
    if token:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        for path, item in paths.items():
            for method, operation in item.items():
                if (method, path) not in _OPEN:
                    operation["security"] = [{"bearer": []}]
    return document
