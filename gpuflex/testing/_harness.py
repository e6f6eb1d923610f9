"""What every check shares: the backend factory type, installing a backend for a block, skips, waiting."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import gpuflex
from gpuflex.backend import Backend
from gpuflex.client._session import get_session

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["WAIT", "BackendFactory", "Check", "CheckSkipped", "backend_in_use", "load_module", "needs", "tmp_dir",
           "wait_until"]

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


def load_module(path: str | Path, name: str | None = None) -> ModuleType:
    """Import the file ``path`` as the top-level module ``name`` (default: the file's stem), once per process.

    Endpoints a test defines must be importable by workers under the same name as in the test process. Under
    pytest's ``--import-mode=importlib`` a test module is named after its package (``tests.test_x``), which a
    worker may resolve to another ``tests`` package; an app loaded with this keeps its own top-level name, and its
    folder is the import root inside the bundle."""
    path = Path(path).resolve()
    name = name or path.stem
    module = sys.modules.get(name)
    if module is not None and Path(getattr(module, "__file__", "") or "").resolve() == path:
        return module
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
