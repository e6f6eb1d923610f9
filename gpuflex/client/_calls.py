"""A call belongs to the caller waiting for it: what the endpoint's call forms share to wait for jobs, to cancel
what a caller stopped waiting for, and to check arguments against the signature before anything is sent."""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import inspect
from typing import TYPE_CHECKING, Any

from .._models import EndpointKind

if TYPE_CHECKING:
    import collections
    from collections.abc import AsyncIterator, Iterable, Iterator

    from .._job import Job

__all__ = ["abandon", "async_stream", "call_signature", "first_done", "owned_result", "sync_stream"]

_CANCEL_WAIT_SECONDS = 5.0  # how long an interrupted sync caller waits for its cancel requests to be sent


def abandon(jobs: Iterable[Job], *, wait: bool) -> None:
    """The caller stopped waiting for ``jobs`` (an interrupt, a ``break``, a closed or collected iterator, a
    cancelled task): cancel those that have not ended, on their backends. ``wait``: block until the requests are
    sent (a sync caller; bounded), else only hand them to the gpuflex loop, which sends them before any later call."""
    open_jobs = [job for job in jobs if not job.done()]
    if not open_jobs or open_jobs[0]._cancel_many is None:
        return
    request = open_jobs[0]._cancel_many(open_jobs)  # the jobs of one call or map share their session
    if wait and request is not None:
        with contextlib.suppress(Exception):
            request.result(timeout=_CANCEL_WAIT_SECONDS)


async def owned_result(job: Job) -> Any:
    """Await a call's value; if the awaiting task is cancelled, the call is cancelled with it."""
    try:
        return await job.aresult()
    except BaseException:
        abandon([job], wait=False)
        raise


def call_signature(obj: Any, method: str | None, kind: EndpointKind) -> inspect.Signature | None:
    """The signature a remote call must match, or None when it cannot be read (a builtin, a C extension)."""
    try:
        if kind is EndpointKind.CLASS:
            member = inspect.getattr_static(obj, method or "__call__")
            if isinstance(member, staticmethod):
                return inspect.signature(member.__func__)
            bound = getattr(obj, method or "__call__")
            if isinstance(member, classmethod):
                return inspect.signature(bound)
            return inspect.signature(functools.partial(bound, None))  # the instance fills ``self``
        return inspect.signature(obj)
    except (TypeError, ValueError, AttributeError):
        return None


def first_done(pending: collections.deque[Job]) -> Job:
    done, _ = concurrent.futures.wait([j._future for j in pending], return_when=concurrent.futures.FIRST_COMPLETED)
    for job in pending:
        if job._future in done:
            pending.remove(job)
            return job
    raise AssertionError("unreachable")


def sync_stream(job: Job) -> Iterator[Any]:
    try:
        yield from job.iter_chunks()
    finally:
        if not job.done():
            job.cancel()


async def async_stream(job: Job) -> AsyncIterator[Any]:
    try:
        async for chunk in job.aiter_chunks():
            yield chunk
    finally:
        if not job.done():
            await job.acancel()
