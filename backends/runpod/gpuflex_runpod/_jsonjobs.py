"""Plain JSON jobs on a deployed endpoint: ``POST /v2/<id>/run`` (or ``/runsync``) with ``{"input": {"prompt": ...}}``
from any HTTP client, no gpuflex needed.

The job's input is the function's arguments by name (a class endpoint's body names its method with ``"method"``),
validated against the schema the dev server publishes for the same function (:class:`gpuflex.worker.JsonCalls`,
built from its type hints); input that does not fit fails the job with ``{"error": "ValidationError", "message":
"steps: Input should be a valid integer", "detail": [...]}`` as the job's ``error`` (a JSON text, as RunPod's own
errors are). The code is the release the endpoint's template names (``$GPUFLEX_RELEASE``), which the boot script
fetched from the object store before the first job; the runtime runs the call as it runs gpuflex's own jobs. JSON
is only ever parsed, never unpickled.

This module rides in the jobs with the worker (see ``_bootstrap.runtime_ref``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from gpuflex import EndpointKind

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from gpuflex.worker import JsonCalls, WorkerRuntime

    from .worker import HandlerState

__all__ = ["is_json_job", "json_items", "json_result"]

RELEASE_ERROR_ENV = "GPUFLEX_RELEASE_ERROR"  # as in _boot: the release could not be fetched


def is_json_job(job: dict[str, Any]) -> bool:
    data = job.get("input")
    return not (isinstance(data, dict) and isinstance(data.get("gpuflex"), dict))


_manifest: dict[str, Any] = {}
_calls: dict[str, JsonCalls] = {}  # by bundle hash


def _error(error: str, message: str) -> dict[str, str]:
    return {"error": json.dumps({"error": error, "message": message})}


def _refusal() -> dict[str, str] | None:
    """Why this worker takes no JSON jobs (no release, or one it could not fetch); None when it does. Checked
    before anything needs pydantic, which only a deployed release's workers install."""
    if _manifest:
        return None
    error = os.environ.get(RELEASE_ERROR_ENV)
    if error:
        return _error("ReleaseUnavailable", f"this worker could not fetch the endpoint's code from the object "
                                            f"store: {error}")
    path = os.environ.get("GPUFLEX_RELEASE_MANIFEST")
    if not path:
        return _error("NotDeployed", "this endpoint takes gpuflex's own jobs only (a development endpoint): "
                                     "`gpuflex deploy` it to call it with plain JSON")
    with open(path) as f:
        _manifest.update(json.load(f))
    return None


async def json_items(state: HandlerState, job: dict[str, Any]) -> AsyncIterator[Any]:
    """A JSON job's outputs for a streaming handler: the result or each chunk, or one ``{"error": ...}``."""
    refusal = _refusal()
    if refusal is not None:
        yield refusal
        return
    from gpuflex.worker import JsonCallError

    try:
        async for value in _outputs(state, job):
            yield value
    except JsonCallError as exc:
        yield {"error": json.dumps(exc.body)}


async def json_result(state: HandlerState, job: dict[str, Any]) -> Any:
    """A JSON job's output for a plain handler: the result itself, or ``{"error": ...}``."""
    refusal = _refusal()
    if refusal is not None:
        return refusal
    from gpuflex.worker import JsonCallError

    try:
        values = [value async for value in _outputs(state, job)]
    except JsonCallError as exc:
        return {"error": json.dumps(exc.body)}
    return values[-1] if values else None


def _json_calls(runtime: WorkerRuntime, manifest: dict[str, Any]) -> JsonCalls:
    from gpuflex.worker import JsonCalls

    calls = _calls.get(manifest["bundle"])
    if calls is None:
        methods = {name: EndpointKind(kind) for name, kind in manifest["methods"].items()}
        calls = _calls[manifest["bundle"]] = JsonCalls(runtime.target, name=manifest["name"],
                                                       kind=EndpointKind(manifest["kind"]), methods=methods,
                                                       batched=manifest["batched"])
    return calls


def _to_log(state: HandlerState) -> None:
    """What the function printed during a JSON call goes to the worker's log (RunPod's console)."""
    lines, _ = state.take_output(1 << 30)
    for stream, text in lines:
        print(f"[{stream}] {text}", file=sys.__stderr__, flush=True)


async def _outputs(state: HandlerState, job: dict[str, Any]) -> AsyncIterator[Any]:
    """Run one JSON job: yield the result (or each chunk of a generator) as JSON; raise ``JsonCallError`` for input
    that does not fit or the function's exception."""
    from gpuflex.worker import JsonCallError, JsonCalls

    manifest = _manifest
    request = {"init": manifest["init"], "bundle": {"hash": manifest["bundle"]}}
    call_id = str(job["id"])
    inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    state.inboxes[call_id] = inbox
    try:
        failure = await state.ensure_loaded(request)
        if failure is not None:
            JsonCalls.answer(None, failure)  # raises the load failure (a setup() that raised...)
        runtime = state.runtime
        assert runtime is not None
        call, payload = _json_calls(runtime, manifest).prepare(job.get("input"))
        runtime.submit(call_id, payload)
        try:
            while True:
                message = await inbox.get()
                _to_log(state)
                if message[0] == "chunk":
                    yield JsonCalls.answer(call, message[2])
                elif message[0] == "done":
                    _, _, status, outcome = message
                    if status == "cancelled":
                        raise JsonCallError("JobCancelled", "the call was cancelled in the worker")
                    value = JsonCalls.answer(call, outcome)  # raises the function's exception
                    if not call.kind.streams:
                        yield value
                    return
        except asyncio.CancelledError:  # a stop signal: as for gpuflex's own jobs (see _calls.run_calls)
            runtime.cancel(call_id)
            if call.kind in (EndpointKind.FUNCTION, EndpointKind.GENERATOR):
                asyncio.get_running_loop().call_later(0.05, os._exit, 75)
            raise
    finally:
        state.inboxes.pop(call_id, None)
        _to_log(state)
