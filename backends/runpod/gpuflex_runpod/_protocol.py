"""What travels inside a RunPod job, both ways: the job ``input`` the backend sends and the items the worker's
handler yields. Shared by the client (``_backend``, ``_jobs``) and the worker (``worker``, ``_calls``); JSON only,
bytes as base64.

Job input (never empty, so RunPod never drops it). One job carries one call or, while an endpoint's queue is long,
a pack of several (see ``_jobs``)::

    {"gpuflex": {"version": 3, "init": <worker init, JSON-safe>, "bundle": {"hash", "zip" | "path"},
                 "runtime": {"hash", "zip"?}, "calls": [<base64 call envelope, which names the method>, ...],
                 "blocking": <bool: a sync callable, which a stop signal cannot interrupt>}}

``runtime`` is gpuflex's own code (see ``_bootstrap.runtime_ref``): inline in the same jobs as an inline bundle.

Handler items (the handler is an async generator; with ``return_aggregate_stream`` the job's output is the list of
every item, and each item is also posted to ``/stream``, whose items RunPod caps at 1 MB each and whose aggregate
it caps at ~10 MB, so data is cut into parts of ``PART_BYTES``, an item holds at most ``ITEM_BYTES`` and a job's
items stay under ``AGGREGATE_BUDGET``)::

    {"events": [[call, kind, data, seconds], ...], "lines": [[stream, text], ...], "worker": id}
        ``call`` is the index in ``calls``; either key may be missing. ``lines``: what the worker printed or logged
        ("stdout", "stderr", "log"). Event kinds:
        "started"                       the call began (a pack runs ``GPUFLEX_CONCURRENCY`` calls at once)
        "chunk_part", ..., "chunk"      one chunk of a generator call (parts, then the last; data base64)
        "result_part", ..., "result"    the call's return value (its run time in ``seconds``)
        "failed"                        the call's outcome is an exception (data: the base64 outcome): the user's,
                                        or PayloadTooLarge for a result that no job could hold
        "cancelled"                     the runtime cancelled the call
        "skipped"                       never started: too little of the job's result budget was left, or the
                                        worker is exiting (a stopped sync call): the client sends it again
        "rerun"                         ran, but its result does not fit in what is left of this pack's budget
                                        (it would in a job of its own): the client sends it again, alone
    {"error": "<JSON string>"}     ends the job FAILED, for every call in it; the JSON holds
                                   {"gpuflex_outcome": <base64>, "message"} when the worker could not load the
                                   endpoint (the outcome is every call's), or
                                   {"gpuflex_bundle_missing": <hash>} when the job named the bundle or the runtime
                                   by hash only and this worker lacks it (the client resubmits with both inline), or
                                   {"gpuflex_version_mismatch": {"caller", "worker"}} from a worker without the
                                   caller's Python
"""

from __future__ import annotations

import base64
import io
import json
import os
import zipfile
from typing import TYPE_CHECKING, Any

from gpuflex.backend import Payload
from gpuflex.errors import PayloadTooLarge, VersionMismatch

if TYPE_CHECKING:
    from gpuflex import Bundle

__all__ = [
    "AGGREGATE_BUDGET",
    "ITEM_BYTES",
    "PART_BYTES",
    "PROTOCOL_VERSION",
    "ResultTooLarge",
    "WorkerPythonMismatch",
    "join_parts",
    "b64decode_payload",
    "b64encode_payload",
    "init_from_json",
    "init_to_json",
    "missing_bundle",
    "parse_error",
    "zip_bundle",
]

PROTOCOL_VERSION = 3
OUTCOME_KEY = "gpuflex_outcome"
MISSING_KEY = "gpuflex_bundle_missing"
MISMATCH_KEY = "gpuflex_version_mismatch"
STREAM_ITEM_LIMIT = 1_000_000  # RunPod: "Maximum size for a single streamed payload chunk is 1 MB"
AGGREGATE_LIMIT = 10_000_000  # RunPod: the aggregated output is held to the 10 MB payload limit
PART_BYTES = 512 * 1024  # raw bytes per streamed part (base64: ~700 KB, under the stream cap)
ITEM_BYTES = 900_000  # what one yielded item may hold (its events and lines), under the stream cap
AGGREGATE_BUDGET = AGGREGATE_LIMIT - 500_000  # what one job's items may use, leaving room for the JSON around them
OUTPUT_BUDGET = 1_000_000  # printed output forwarded per call; the rest stays in the worker's log


class ResultTooLarge(PayloadTooLarge):
    """What a job yields is over RunPod's cap on a job's result (a ``PayloadTooLarge`` that survives pickling)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.size, self.limit, self.backend)


class WorkerPythonMismatch(VersionMismatch):
    """The image has no interpreter of the caller's Python (a ``VersionMismatch`` that survives pickling)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.what, self.local, self.remote)


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


def join_parts(items: list[Any], key: str) -> tuple[list[bytes], list[Any]]:
    """Reassemble ``key`` values cut into ``<key>_part`` items; also return the items that are neither."""
    values: list[bytes] = []
    others: list[Any] = []
    pending: list[str] = []
    for item in items:
        if isinstance(item, dict) and f"{key}_part" in item:
            pending.append(item[f"{key}_part"])
        elif isinstance(item, dict) and key in item:
            values.append(base64.b64decode("".join([*pending, item[key]])))
            pending = []
        else:
            others.append(item)
    return values, others


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
    if isinstance(data, dict) and isinstance(data.get(MISMATCH_KEY), dict):
        from gpuflex.worker import encode_error

        found = data[MISMATCH_KEY]
        error = WorkerPythonMismatch("Python", str(found.get("caller")), f"{found.get('worker')} (the RunPod image "
                                     "has no interpreter of the caller's version, nor uv to install one)")
        return encode_error(error), str(data.get("message"))
    if isinstance(data, dict) and "error_message" in data:  # the runpod SDK's own shape for a handler crash
        return None, f"{data.get('error_type', 'error')}: {data['error_message']}"
    return None, text
