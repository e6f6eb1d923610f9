"""The dev server's view of jobs: the ones it started (kept alive here, since the session only holds weak
references), their JSON form, and how errors map to HTTP statuses.

Statuses for a call that was accepted but did not produce a result (the body is always
``{"error": <type name>, "message": ...}``):

* 502: the endpoint's own code raised (the exception's type name); a class's ``setup()`` that raised says so in
  the message.
* 504: the job ran past the endpoint's timeout (``JobTimeout``).
* 409: the job was cancelled (``JobCancelled``).
* 402: the budget (``--max-cost``) refused it (``QuotaExceeded``).
* 413: the arguments are over the backend's payload limit (``PayloadTooLarge``).
* 500: the result cannot be sent back: it does not pickle (``SerializationError``), or it has no JSON form (NaN,
  infinity, an object JSON cannot carry: ``NotJsonable``).
* 503: gpuflex or the backend could not run it (a lost worker, a backend that is down, a bad configuration).

Bad input never reaches a backend: it gets a 400 (not JSON) or a 422 (JSON that does not fit) naming the field.
"""

from __future__ import annotations

import collections
import json
import re
from typing import TYPE_CHECKING, Any

import attrs

from ..errors import (
    GpuflexError,
    JobCancelled,
    JobTimeout,
    PayloadTooLarge,
    QuotaExceeded,
    RemoteError,
    RemoteTraceback,
    SerializationError,
)
from ._schema import NotJsonable

if TYPE_CHECKING:
    from .._job import Job
    from ._schema import Route

__all__ = ["JobEntry", "JobTable", "error_body", "error_status", "job_json", "remote_traceback", "sse"]


@attrs.define(eq=False)
class JobEntry:
    job: Job
    route: Route
    streamed: bool = False


class JobTable:
    """Jobs started through the server, by id; the oldest finished ones are forgotten past ``limit``."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._entries: collections.OrderedDict[str, JobEntry] = collections.OrderedDict()

    def add(self, job: Job, route: Route) -> JobEntry:
        entry = self._entries[job.id] = JobEntry(job, route)
        if len(self._entries) > self.limit:
            for job_id, old in list(self._entries.items()):
                if len(self._entries) <= self.limit:
                    break
                if old.job.done():
                    del self._entries[job_id]
        return entry

    def get(self, job_id: str) -> JobEntry | None:
        return self._entries.get(job_id)

    def __len__(self) -> int:
        return len(self._entries)


def error_status(exc: BaseException) -> int:
    if isinstance(exc, PayloadTooLarge):
        return 413
    if isinstance(exc, NotJsonable | SerializationError):
        return 500
    if isinstance(exc, JobTimeout):
        return 504
    if isinstance(exc, JobCancelled):
        return 409
    if isinstance(exc, QuotaExceeded):
        return 402
    if isinstance(exc, GpuflexError) and not isinstance(exc, RemoteError):
        return 503
    return 502  # the endpoint's code raised


def remote_traceback(exc: BaseException) -> str | None:
    """The traceback of a remote exception, as the worker formatted it."""
    cause = exc.__cause__
    return cause.tb if isinstance(cause, RemoteTraceback) else None


_FRAME = re.compile(r'^  File "(?P<file>[^"]*)", line \d+, in (?P<name>\S+)$', re.MULTILINE)
_RUNTIME = re.compile(r"gpuflex[/\\](?:runtime|workerpool)[/\\]")


def raised_in_setup(exc: BaseException) -> bool:
    """Whether a remote exception came out of a class endpoint's ``setup()``: the outermost frame of the user's
    code (below the worker runtime's, if the traceback shows them) is ``setup``."""
    tb = remote_traceback(exc)
    if tb is None:
        return False
    user = [m["name"] for m in _FRAME.finditer(tb) if not _RUNTIME.search(m["file"])]
    return bool(user) and user[0] == "setup"


def error_body(exc: BaseException, endpoint: str | None = None) -> dict[str, str]:
    if isinstance(exc, RemoteError):
        name, message = exc.type_name.rsplit(".", 1)[-1], exc.remote_message
    else:
        name, message = type(exc).__name__, str(exc)
    if raised_in_setup(exc):
        where = f"{endpoint}.setup()" if endpoint else "setup()"
        message = f"{where} raised {name}: {message} (setup() runs once per worker, before its first call)"
    return {"error": name, "message": message}


def job_json(entry: JobEntry) -> dict[str, Any]:
    job = entry.job
    data: dict[str, Any] = {
        "id": job.id, "endpoint": job.endpoint, "method": entry.route.method, "backend": job.backend,
        "status": job.status.value, "streaming": entry.route.kind.streams, "attempts": job.attempts,
        "worker": job.worker, "submitted_at": job.submitted_at, "started_at": job.started_at,
        "finished_at": job.finished_at, "queue_time": job.queue_time, "run_time": job.run_time,
        "cost": {"usd": job.cost.usd, "billed_seconds": job.cost.billed_seconds, "rule": job.cost.rule},
        "reason": job.reason,
    }
    if job.done():
        try:
            value = job.result(timeout=0)
        except Exception as exc:
            data["error"] = error_body(exc, job.endpoint)
        else:
            if not entry.route.kind.streams:
                try:
                    data["result"] = entry.route.call.to_json(value)
                except NotJsonable as exc:
                    data["error"] = error_body(exc)
    return data


def sse(data: Any, event: str | None = None) -> str:
    """One server-sent event carrying ``data`` as JSON."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n"
