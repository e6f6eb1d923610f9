"""What travels inside a RunPod job, both ways: the job ``input`` the backend sends and the items the worker's
handler yields. Shared by the client (``_backend``) and the worker (``worker``); JSON only, bytes as base64.

Job input (never empty, so RunPod never drops it)::

    {"gpuflex": {"version": 1, "init": <worker init, JSON-safe>, "bundle": {"hash", "zip" | "path"},
                 "dependencies": [...], "payload": <base64 call envelope, which names the method>}}

Handler items (the handler is an async generator; with ``return_aggregate_stream`` the job's output is the
list of every item, and each item is also posted to ``/stream``)::

    {"chunk": <base64>}            one chunk of a generator endpoint
    {"result": <base64>}           the call's return value, last
    {"error": "<JSON string>"}     ends the job FAILED; the JSON holds {"gpuflex_outcome": <base64>, "message"}
                                   for the user's exception (or a worker start failure), or
                                   {"gpuflex_bundle_missing": <hash>} when the job named the bundle by hash only
                                   and this worker lacks it (the client resubmits the call with the bundle inline)
"""

from __future__ import annotations

import base64
import io
import json
import os
import zipfile
from typing import TYPE_CHECKING, Any

from gpuflex.backend import Payload

if TYPE_CHECKING:
    from gpuflex import Bundle

__all__ = [
    "PROTOCOL_VERSION",
    "b64decode_payload",
    "b64encode_payload",
    "init_from_json",
    "init_to_json",
    "missing_bundle",
    "parse_error",
    "zip_bundle",
]

PROTOCOL_VERSION = 1
OUTCOME_KEY = "gpuflex_outcome"
MISSING_KEY = "gpuflex_bundle_missing"


def b64encode_payload(payload: Payload) -> str:
    return base64.b64encode(payload.to_bytes()).decode("ascii")


def b64decode_payload(text: str) -> Payload:
    return Payload.from_bytes(base64.b64decode(text))


def init_to_json(init: dict[str, Any]) -> dict[str, Any]:
    """The worker ``init`` message as JSON: a target held by value (cloudpickle bytes) becomes base64."""
    target = dict(init["target"])
    if target.get("pickled") is not None:
        target["pickled"] = base64.b64encode(target["pickled"]).decode("ascii")
    return {**init, "target": target}


def init_from_json(data: dict[str, Any]) -> dict[str, Any]:
    target = dict(data["target"])
    if target.get("pickled") is not None:
        target["pickled"] = base64.b64decode(target["pickled"])
    return {**data, "target": target}


def zip_bundle(bundle: Bundle) -> bytes:
    """The bundle's files as one zip archive (the inline transport for small bundles)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for entry in bundle.files:
            source = bundle.root / entry.path
            info = zipfile.ZipInfo(entry.path)
            info.compress_type = zipfile.ZIP_DEFLATED
            mode = os.stat(source).st_mode
            info.external_attr = (mode & 0o777) << 16
            archive.writestr(info, source.read_bytes())
    return out.getvalue()


def missing_bundle(error: Any) -> str | None:
    """The hash a worker asked for, when a job failed only because it named a bundle the worker lacks."""
    try:
        data = json.loads(error) if isinstance(error, str) else error
    except ValueError:
        return None
    value = data.get(MISSING_KEY) if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def parse_error(error: Any) -> tuple[Payload | None, str]:
    """Split a FAILED job's ``error`` into the gpuflex outcome (the user's exception, when the handler sent one)
    and a readable message. An error without an outcome is an infrastructure failure."""
    text = error if isinstance(error, str) else json.dumps(error)
    try:
        data = json.loads(text)
    except ValueError:
        return None, text
    if isinstance(data, dict) and isinstance(data.get(OUTCOME_KEY), str):
        return b64decode_payload(data[OUTCOME_KEY]), str(data.get("message", ""))
    if isinstance(data, dict) and "error_message" in data:  # the runpod SDK's own shape for a handler crash
        return None, f"{data.get('error_type', 'error')}: {data['error_message']}"
    return None, text
