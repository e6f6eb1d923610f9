"""What every check shares: the backend factory type, installing a backend for a block, skips, waiting."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import gpuflex
from gpuflex.backend import Backend
from gpuflex.client._session import get_session

__all__ = ["WAIT", "BackendFactory", "Check", "CheckSkipped", "backend_in_use", "needs", "tmp_dir", "wait_until"]

BackendFactory = Callable[[], Backend]
Check = Callable[[BackendFactory], None]
WAIT = 60.0
#: pytest sessions running in this process (counted by gpuflex's pytest plugin): a skip is pytest's only then
pytest_sessions = 0


class CheckSkipped(Exception):
    """The backend declares it lacks what this check needs."""


@contextlib.contextmanager
def backend_in_use(make_backend: BackendFactory) -> Iterator[Backend]:
    """Install a fresh backend from the factory, route every endpoint called inside the block to it, and close
    it afterwards."""
    backend = make_backend()
    session = get_session()
    session.install_backend(backend)
    try:
        with gpuflex.use(backend.name):
            yield backend
    finally:
        session.run(session.remove_backend(backend))


def needs(backend: Backend, *features: str) -> None:
    for feature in features:
        reason = backend.live_capabilities().get(feature)
        if reason:
            raise CheckSkipped(f"{backend.name} lacks {feature}: {reason}")


def wait_until(predicate: Callable[[], bool], what: str, limit: float = WAIT) -> None:
    """Poll ``predicate`` until it holds; fail the check (AssertionError) after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {limit} s waiting for {what}")
        time.sleep(0.02)


def tmp_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="gpuflex-conformance-"))
