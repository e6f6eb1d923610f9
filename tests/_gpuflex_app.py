"""Endpoints for the core's tests that run real jobs on the local backend (test_costs, test_hooks).

Module-level, so workers import them by reference. They live here rather than in the test files because pytest
runs with ``--import-mode=importlib`` and names test modules ``tests.test_x``: a worker importing ``tests.test_x``
would find whichever regular ``tests`` package is on ``sys.path`` first (the installed backend template has one)
instead of this directory. Test files load this module by path under its own top-level name (``_load_app``), so
the endpoints' import path is ``tests/`` inside the bundle and workers import ``_gpuflex_app`` directly.
Only the standard library and gpuflex are imported here, to keep worker start-up fast.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import gpuflex

if TYPE_CHECKING:
    from collections.abc import Iterator

# -- test_costs ------------------------------------------------------------------------------------------------


@gpuflex.endpoint(name="costs_nap")
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@gpuflex.endpoint(name="costs_budget")
def budget_nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@gpuflex.endpoint(name="costs_fails")
def fails(seconds: float) -> None:
    time.sleep(seconds)
    raise ValueError("charged anyway")


# -- test_hooks (one endpoint per test: the session caches specs and prices per endpoint) -------------------------


def _echo(value: object) -> object:
    return value


hook_register = gpuflex.endpoint(name="hook_register")(_echo)
hook_select = gpuflex.endpoint(name="hook_select")(_echo)
hook_deployed = gpuflex.endpoint(name="hook_deployed")(_echo)
hook_budget = gpuflex.endpoint(name="hook_budget")(_echo)
hook_submitted = gpuflex.endpoint(name="hook_submitted")(_echo)
hook_started = gpuflex.endpoint(name="hook_started")(_echo)
hook_finished = gpuflex.endpoint(name="hook_finished")(_echo)


@gpuflex.endpoint(name="hook_env")
def hook_env(key: str) -> str | None:
    return os.environ.get(key)


@gpuflex.endpoint(name="hook_price")
def hook_price(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@gpuflex.endpoint(name="hook_raises")
def hook_raises(message: str) -> None:
    raise RuntimeError(message)


def _fail_first_time(marker: str) -> str:
    """Raise on the first attempt (no marker file yet), succeed on the next."""
    if not os.path.exists(marker):
        Path(marker).write_text("attempted")
        raise RuntimeError("first attempt fails")
    return "second attempt"


hook_retrying = gpuflex.endpoint(name="hook_retrying", retries=1)(_fail_first_time)
hook_order = gpuflex.endpoint(name="hook_order", retries=1)(_fail_first_time)


def _pid() -> int:
    return os.getpid()


hook_workers = gpuflex.endpoint(name="hook_workers", idle_timeout=0.2)(_pid)


@gpuflex.endpoint(name="hook_output")
def hook_output(text: str) -> str:
    import logging

    print(text, flush=True)
    logging.getLogger("hook_output").warning("logged %s", text)
    return text


@gpuflex.endpoint(name="hook_bundle")
def hook_bundle() -> list[str]:
    """The files of the bundle this worker runs from (this module sits in its ``tests/``)."""
    root = Path(__file__).parent.parent
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# -- test_outcomes -------------------------------------------------------------------------------------------------


@gpuflex.endpoint(name="outcome_unsendable")
def unsendable() -> object:
    import threading

    return threading.Lock()


@gpuflex.endpoint(name="outcome_unsendable_chunk")
def unsendable_chunks() -> Iterator[object]:
    import threading

    yield 1
    yield threading.Lock()


@gpuflex.endpoint(name="outcome_raises")
def raises(message: str) -> None:
    raise ValueError(message)


@gpuflex.endpoint(name="outcome_setup_fails", max_workers=1)
class SetupFails:
    def setup(self) -> None:
        self.ratio = 1 / 0

    def __call__(self) -> float:
        return self.ratio


@gpuflex.endpoint(name="outcome_signature")
def takes_two(a: int, b: int, *, c: int = 0) -> int:
    return a + b + c


@gpuflex.endpoint(name="outcome_methods")
class Methods:
    def add(self, a: int, b: int) -> int:
        return a + b

    @staticmethod
    def double(value: int) -> int:
        return 2 * value


# -- test_budget ---------------------------------------------------------------------------------------------------


@gpuflex.endpoint(name="budget_parallel", max_workers=3)
def budget_parallel(seconds: float) -> float:
    time.sleep(seconds)
    return seconds
