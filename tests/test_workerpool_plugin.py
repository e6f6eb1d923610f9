"""A ``WorkerPoolBackend`` subclass written from docs/plugins/writing-a-backend.md alone, with nothing private:
the base class gives it the endpoint's ``env`` and ``secrets``, tells it when a worker goes idle, and it passes the
conformance checks that interrupt calls and read the environment."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, ClassVar

from gpuflex.testing import run_check, wait_until
from gpuflex.testing._conformance import check_endpoint_env, check_interrupt
from gpuflex.testing._endpoints import echo
from gpuflex.testing._harness import backend_in_use
from gpuflex.worker import worker_command
from gpuflex.workerpool import Placement, WorkerPoolBackend, WorkerProcess

if TYPE_CHECKING:
    from gpuflex import EndpointSpec


class DocsPoolBackend(WorkerPoolBackend):
    """Workers are local processes started from ``worker_command()``, as the docs' table describes."""

    name: ClassVar[str] = "docs-pool"
    capabilities: ClassVar[dict[str, str | None]] = {"cancel": None, "streaming": None, "classes": None}

    def __init__(self, config: Any = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.idle: list[str] = []

    def place_worker(self, spec: EndpointSpec, worker_id: str) -> Placement | None:
        return Placement()

    async def worker_command(self, spec: EndpointSpec, worker: WorkerProcess) -> tuple[list[str], dict[str, str]]:
        return worker_command(), {"PATH": os.environ.get("PATH", "")}  # not the caller's environment

    def worker_idle(self, worker: WorkerProcess) -> None:
        self.idle.append(worker.id)


def test_env_and_secrets_reach_workers_of_a_subclass():
    run_check(check_endpoint_env, DocsPoolBackend)


def test_calls_a_caller_abandons_are_cancelled_on_a_subclass():
    run_check(check_interrupt, DocsPoolBackend)


def test_a_subclass_hears_when_a_worker_goes_idle():
    with backend_in_use(DocsPoolBackend) as backend:
        assert isinstance(backend, DocsPoolBackend)
        assert echo(1) == 1
        wait_until(lambda: len(backend.idle) == 1, "worker_idle once the call is done")
        assert echo(2) == 2
        wait_until(lambda: len(backend.idle) == 2, "worker_idle once the second call is done")
        assert len(set(backend.idle)) == 1, "the same worker ran both calls and went idle after each"
