"""The OpenAPI path of a deployed endpoint on Modal: its web endpoint (``POST <web URL>/<name>``, which ``POST /``
answers too), with the body and the answer described by the function's schema (the one the dev server publishes).
``gpuflex openapi`` and ``gpuflex deploy`` put it into the app's document; each path names its own server, the
endpoint's web URL."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

    from gpuflex.backend import DeployedEndpoint

__all__ = ["http_api"]

_ERROR = {"type": "object", "required": ["error", "message"],
          "properties": {"error": {"type": "string"}, "message": {"type": "string"}, "detail": {"type": "array"}}}
_REFUSED = {
    "400": "The body is not JSON (or names no method of a class endpoint).",
    "401": "The proxy-auth token is missing or wrong (Modal-Key and Modal-Secret headers); Modal's proxy answers.",
    "404": "The path is not the endpoint's, or (Modal's proxy, in text) the app is stopped.",
    "409": "The call was cancelled in the container.",
    "413": "The body is over 64 MiB.",
    "422": "The arguments do not fit the function's signature; the message names each field.",
    "500": "The result has no JSON form, or (Modal's proxy, in text) the container failed.",
    "502": "The function raised: its exception's type and message.",
    "503": "The container has not finished loading the endpoint.",
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _content(code: str) -> dict[str, Any]:
    """An error's body: gpuflex's JSON error, or the text Modal's proxy answers itself (401; 404 and 500 too)."""
    text = {"text/plain": {"schema": {"type": "string"}}}
    if code == "401":
        return text
    return {**_json(_ERROR), **text} if code in ("404", "500") else _json(_ERROR)


def http_api(url: str | None, deployed: DeployedEndpoint, calls: list[Mapping[str, Any]], *,
             proxy_auth: bool) -> dict[str, Any]:
    """The path item of ``deployed``'s web endpoint at ``url``; ``calls[i]``: ``method``, ``streams``, ``output``
    (schema), and one ``input`` schema (a class endpoint's names its method) shared by all of them."""
    if url is None:
        return {}
    shapes = [{"type": "array", "items": c["output"]} if c["streams"] else c["output"] for c in calls]
    output = shapes[0] if len(shapes) == 1 else {"anyOf": shapes}
    content = _json(output)
    if any(c["streams"] for c in calls):
        content["text/event-stream"] = {"schema": {"type": "string", "description": (
            "With Accept: text/event-stream, one event per chunk as produced (data: the chunk as JSON), then "
            "`event: end`; a failure is `event: error`.")}}
    codes = ["400", "404", "409", "413", "422", "500", "502", "503"] + (["401"] if proxy_auth else [])
    parameters = [{"name": header, "in": "header", "required": True, "schema": {"type": "string"},
                   "description": "A Modal proxy-auth token (create one in Modal's dashboard)."}
                  for header in ("Modal-Key", "Modal-Secret")] if proxy_auth else []
    summary = "; ".join(str(c.get("summary") or "") for c in calls if c.get("summary"))
    operation: dict[str, Any] = {
        "tags": [deployed.name], "operationId": f"call_{deployed.name}", "summary": f"Call {deployed.name}",
        "description": summary, "security": [],
        "requestBody": {"required": True, "content": _json(calls[0]["input"])},
        "responses": {"200": {"description": "The result (a generator's: the list of its chunks).",
                              "content": content},
                      **{code: {"description": _REFUSED[code], "content": _content(code)} for code in sorted(codes)}},
    }
    describe: dict[str, Any] = {
        "tags": [deployed.name], "operationId": f"describe_{deployed.name}", "security": [],
        "summary": f"Which code {deployed.name} runs",
        "responses": {"200": {"description": "The endpoint's name, kind, methods and code hash.", "content": _json({
            "type": "object", "required": ["name", "kind", "bundle", "methods"], "properties": {
                "name": {"type": "string"}, "kind": {"type": "string"}, "bundle": {"type": "string"},
                "methods": {"type": "array", "items": {"type": "string"}}}})},
            **{code: {"description": _REFUSED[code], "content": _content(code)} for code in
               (["401"] if proxy_auth else []) + ["404"]}},
    }
    if parameters:
        operation["parameters"] = describe["parameters"] = parameters
    return {f"/{deployed.name}": {"servers": [{"url": url.rstrip("/")}], "post": operation, "get": describe}}
