"""The plain-HTTP side of a deployed endpoint, inside its Modal container: an ASGI app that Modal serves as the
class's web endpoint (``@modal.asgi_app``), beside the generator method gpuflex's own client calls.

``POST /`` (or ``POST /<endpoint>``) with a JSON object of the function's arguments by name (a class endpoint's
names its method with ``"method"``) answers the result as JSON, validated against the schema the dev server
publishes for the same function (:class:`gpuflex.worker.JsonCalls`, from its type hints). A generator answers the
list of its chunks, or, when the request accepts ``text/event-stream``, each chunk as a server-sent event as it is
produced (then ``event: end``), as the dev server does. Errors are ``{"error": type, "message": ...}``: 400 for a
body that is not JSON, 422 naming each field that does not fit, 502 for the function's exception, 500 for a result
JSON cannot carry. ``GET /`` describes the endpoint (its name, kind, methods and the code's hash). JSON is only ever
parsed, never unpickled. The call runs in the container's gpuflex runtime, as gpuflex's own calls do.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from gpuflex import EndpointKind

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from gpuflex.worker import JsonCalls

    from ._runner import EndpointRunner

__all__ = ["MAX_BODY_BYTES", "JsonWebApp"]

MAX_BODY_BYTES = 64 * 2**20  # gpuflex's bound on a JSON body; larger inputs belong in gpuflex's own calls


class _BadJson(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _BadJson(f"{name} is not JSON")


class JsonWebApp:
    """The ASGI app of one deployed endpoint. ``runner``: the container's runner (None until ``@modal.enter`` has
    loaded the endpoint); ``manifest``: the endpoint's name, kind, methods, batching and bundle hash."""

    def __init__(self, runner: Callable[[], EndpointRunner | None], manifest: dict[str, Any]) -> None:
        self._runner = runner
        self.manifest = manifest
        self._calls: JsonCalls | None = None

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        name = self.manifest["name"]
        if scope["path"].rstrip("/") not in ("", f"/{name}"):
            await _json(send, 404, {"error": "NotFound", "message": f"POST / (or /{name}) calls {name!r}"})
            return
        if scope["method"] == "GET":
            await _json(send, 200, {"name": name, "kind": self.manifest["kind"], "bundle": self.manifest["bundle"],
                                    "methods": sorted(self.manifest["methods"])})
            return
        if scope["method"] != "POST":
            await _json(send, 405, {"error": "MethodNotAllowed", "message": "call the endpoint with POST"},
                        [(b"allow", b"GET, POST")])
            return
        body = await _body(receive)
        if body is None:
            await _json(send, 413, {"error": "PayloadTooLarge",
                                    "message": f"the body is over {MAX_BODY_BYTES} bytes"})
            return
        sse = any(key.lower() == b"accept" and b"text/event-stream" in value for key, value in scope["headers"])
        await self._call(body, send, sse)

    def _json_calls(self, runner: EndpointRunner) -> JsonCalls:
        if self._calls is None:
            from gpuflex.worker import JsonCalls

            assert runner.runtime is not None
            methods = {m: EndpointKind(k) for m, k in self.manifest["methods"].items()}
            self._calls = JsonCalls(runner.runtime.target, name=self.manifest["name"],
                                    kind=EndpointKind(self.manifest["kind"]), methods=methods,
                                    batched=self.manifest["batched"])
        return self._calls

    async def _call(self, raw: bytes, send: Callable[[dict[str, Any]], Awaitable[None]], sse: bool) -> None:
        from gpuflex.worker import JsonCallError, JsonCalls

        runner = self._runner()
        if runner is None or runner.runtime is None:
            await _json(send, 503, {"error": "NotReady", "message": "the endpoint has not finished loading"})
            return
        try:
            data = json.loads(raw, parse_constant=_no_constant) if raw.strip() else {}
        except (ValueError, RecursionError) as exc:
            await _json(send, 400, {"error": "MalformedJSON", "message": f"the body is not JSON: {exc}"})
            return
        try:
            call, payload = self._json_calls(runner).prepare(data)
        except JsonCallError as exc:
            await _json(send, 422 if exc.body["error"] == "ValidationError" else 400, exc.body)
            return
        chunks: list[Any] = []
        started = False
        try:
            async for message in runner.call(payload):
                if message[0] == "chunk":
                    value = JsonCalls.answer(call, message[1])
                    if sse:
                        if not started:
                            await _start(send, 200, b"text/event-stream")
                            started = True
                        await _event(send, value)
                    else:
                        chunks.append(value)
                elif message[0] == "done":
                    if message[1] == "cancelled":
                        raise JsonCallError("JobCancelled", "the call was cancelled in the container")
                    value = JsonCalls.answer(call, message[2])  # raises the function's exception
                    if not call.kind.streams:
                        await _json(send, 200, value)
                    elif sse:
                        if not started:
                            await _start(send, 200, b"text/event-stream")
                        await _event(send, {"status": "COMPLETED"}, "end", last=True)
                    else:
                        await _json(send, 200, chunks)
                    return
        except JsonCallError as exc:
            status = {"NotJsonable": 500, "JobCancelled": 409}.get(exc.body["error"], 502)
            if started:
                await _event(send, exc.body, "error", last=True)
            else:
                await _json(send, status, exc.body)


async def _body(receive: Callable[[], Awaitable[dict[str, Any]]]) -> bytes | None:
    parts, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        parts.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(parts)


async def _start(send: Callable[[dict[str, Any]], Awaitable[None]], status: int, media_type: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", media_type), (b"cache-control", b"no-store")]})


async def _json(send: Callable[[dict[str, Any]], Awaitable[None]], status: int, value: Any,
                headers: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(value, separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *(headers or ())]})
    await send({"type": "http.response.body", "body": data})


async def _event(send: Callable[[dict[str, Any]], Awaitable[None]], value: Any, event: str | None = None, *,
                 last: bool = False) -> None:
    head = f"event: {event}\n" if event else ""
    text = f"{head}data: {json.dumps(value, separators=(',', ':'))}\n\n"
    await send({"type": "http.response.body", "body": text.encode(), "more_body": not last})
