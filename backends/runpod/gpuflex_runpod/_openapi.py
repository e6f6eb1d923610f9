"""The OpenAPI paths of a deployed endpoint on RunPod: RunPod's own job API (``/v2/<id>/run``, ``/runsync``,
``/status``, ``/stream``, ``/cancel``, ``/health``), with the job's ``input`` and ``output`` described by the
function's schema (the one the dev server publishes). ``gpuflex openapi`` and ``gpuflex deploy`` put them into the
app's document."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

    from gpuflex.backend import DeployedEndpoint

__all__ = ["http_api"]

STATUSES = ["IN_QUEUE", "IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"]
_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
_REFUSED = {
    "400": "The body is not JSON, or its input is missing or empty.",
    "401": "The API key is missing or wrong (Authorization: Bearer <RunPod API key>).",
    "404": "No such endpoint or job (RunPod keeps a job's result 30 minutes after it ends).",
    "413": "The body is over RunPod's limit (10 MB for /run, 20 MB for /runsync).",
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: {"description": _REFUSED[code], "content": _json(_ERROR)} for code in codes}


def _job(output: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["id", "status"], "properties": {
        "id": {"type": "string"}, "status": {"enum": STATUSES},
        "output": output,
        "error": {"type": "string", "description": "Why the job FAILED: a JSON text {\"error\": type, \"message\": "
                                                   "...} (ValidationError names each field that does not fit)."},
        "delayTime": {"type": "integer"}, "executionTime": {"type": "integer"}, "workerId": {"type": "string"},
    }}


def _output(calls: list[Mapping[str, Any]], streamed: bool) -> dict[str, Any]:
    """What a completed job's ``output`` is: the result (a handler that streams answers the list of what it
    yielded: a generator's chunks, or a plain method's one result)."""
    shapes = []
    for call in calls:
        if call["streams"] or streamed:
            shapes.append({"type": "array", "items": call["output"]})
        else:
            shapes.append(call["output"])
    return shapes[0] if len(shapes) == 1 else {"anyOf": shapes}


def http_api(jobs_url: str, deployed: DeployedEndpoint, calls: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The path items of ``deployed``'s job API; ``calls[i]``: ``method``, ``streams``, ``output`` (schema), and
    one ``input`` schema (the job's input: a class endpoint's names its method) shared by all of them."""
    base = f"/{deployed.id}"
    tags = [deployed.name]
    servers = [{"url": jobs_url}]
    streamed = any(call["streams"] for call in calls)
    job = _job(_output(calls, streamed))
    # RunPod refuses an empty input (400): the arguments of a function whose parameters all have defaults are
    # sent as at least one of them
    request = {"required": True, "content": _json({
        "type": "object", "required": ["input"],
        "properties": {"input": {"allOf": [calls[0]["input"]], "minProperties": 1}}})}
    job_id = [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    links = {name: {"operationId": f"{op}_{deployed.name}", "parameters": {"job_id": "$response.body#/id"}}
             for name, op in (("Status", "status"), ("Stream", "stream"), ("Cancel", "cancel"))}
    summary = "; ".join(str(call.get("summary") or "") for call in calls if call.get("summary"))
    return {
        f"{base}/runsync": {"servers": servers, "post": {
            "tags": tags, "operationId": f"runsync_{deployed.name}", "summary": f"Call {deployed.name} and wait",
            "description": summary, "requestBody": request,
            "responses": {"200": {"description": "The job: COMPLETED with its output, FAILED with its error, or "
                                                 "still queued or running when the wait ran out.",
                                  "content": _json(job), "links": links},
                          **_errors("400", "401", "404", "413")}}},
        f"{base}/run": {"servers": servers, "post": {
            "tags": tags, "operationId": f"run_{deployed.name}", "summary": f"Start a job of {deployed.name}",
            "requestBody": request,
            "responses": {"200": {"description": "The job was queued.", "links": links, "content": _json({
                "type": "object", "required": ["id", "status"],
                "properties": {"id": {"type": "string"}, "status": {"enum": STATUSES}}})},
                **_errors("400", "401", "404", "413")}}},
        f"{base}/status/{{job_id}}": {"servers": servers, "get": {
            "tags": tags, "operationId": f"status_{deployed.name}", "summary": "A job's status, and its output "
                                                                              "once it completed",
            "parameters": job_id, "responses": {"200": {"description": "The job.", "content": _json(job)},
                                                **_errors("401", "404")}}},
        f"{base}/stream/{{job_id}}": {"servers": servers, "get": {
            "tags": tags, "operationId": f"stream_{deployed.name}",
            "summary": "What the job yielded since the last read (a generator's chunks, as they come)",
            "parameters": job_id, "responses": {
                "200": {"description": "New items.", "content": _json({
                    "type": "object", "required": ["status"], "properties": {
                        "status": {"enum": STATUSES},
                        "stream": {"type": "array", "items": {"type": "object", "properties": {"output": {}}}}}})},
                **_errors("401", "404")}}},
        f"{base}/cancel/{{job_id}}": {"servers": servers, "post": {
            "tags": tags, "operationId": f"cancel_{deployed.name}", "summary": "Cancel a job", "parameters": job_id,
            "responses": {"200": {"description": "The job's status after the request.", "content": _json({
                "type": "object", "required": ["id", "status"],
                "properties": {"id": {"type": "string"}, "status": {"enum": STATUSES}}})},
                **_errors("401", "404")}}},
        f"{base}/health": {"servers": servers, "get": {
            "tags": tags, "operationId": f"health_{deployed.name}", "summary": "Job and worker counts",
            "responses": {"200": {"description": "The endpoint's health.", "content": _json({
                "type": "object", "properties": {"jobs": {"type": "object"}, "workers": {"type": "object"}}})},
                **_errors("401", "404")}}},
    }
