"""A map's calls reach the backend in the order they were made, also on an endpoint's first call, when each of
them waits for the project's bundle (built in a thread, and threads return in any order under load). A backend
queues calls as they are submitted: out of order, a map's first results wait behind its later calls."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any, ClassVar

from gpuflex_local import LocalBackend

from gpuflex.client._session import Session, get_session
from gpuflex.testing import _endpoints as ep
from gpuflex.testing import backend_in_use


class RecordingBackend(LocalBackend):
    name = "submit-order"
    submitted: ClassVar[list[str]] = []

    async def submit(self, call: Any) -> str:
        self.submitted.append(call.job_id)
        return await super().submit(call)


def test_first_map_submits_its_calls_in_order(monkeypatch):
    session = get_session()
    session.invalidate_bundles()
    build = Session.bundle_for
    ranks = itertools.count()
    asked: list[int] = []

    def builder(session: Session) -> Any:
        """Each call's build, ranked as the calls ask for it on the loop: the last to ask returns first, the others
        once a call was submitted (in order, they would wait for the first build)."""
        rank = next(ranks)
        asked.append(rank)

        def build_last_first(endpoint: Any) -> Any:
            fence = threading.Event()  # every call starts in one turn of the loop: past it, all have asked
            session.loop.call_soon_threadsafe(fence.set)
            fence.wait()
            if rank != asked[-1]:
                deadline = time.monotonic() + 60
                while not RecordingBackend.submitted and time.monotonic() < deadline:
                    time.sleep(0.01)
            return build(session, endpoint)
        return build_last_first

    monkeypatch.setattr(Session, "bundle_for", property(builder))
    RecordingBackend.submitted.clear()
    with backend_in_use(RecordingBackend):
        assert list(ep.echo.map(range(6))) == list(range(6))
    submitted = RecordingBackend.submitted
    made = sorted(submitted, key=lambda job: (len(job), job))  # job ids count up, in hex
    assert submitted == made, f"the map's calls reached the backend out of order: {submitted}"
