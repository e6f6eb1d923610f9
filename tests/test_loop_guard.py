"""A blocking call made on gpuflex's own loop thread (from a hook or a backend) fails with a clear error instead of
deadlocking the loop that would finish it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import gpuflex
from gpuflex.client._session import get_session

sys.path.insert(0, str(Path(__file__).parent))
import _gpuflex_app as app  # noqa: E402


def test_blocking_call_on_the_loop_thread_is_refused_not_deadlocked():
    async def from_the_loop():
        return app.nap(0.0)  # a sync endpoint called where only `await ...aio(...)` can work

    try:
        with pytest.raises(RuntimeError, match="event loop thread.*aio"):
            get_session().run(from_the_loop())
        assert app.nap(0.0) == 0.0, "the loop still serves calls made the right way"
    finally:
        gpuflex.shutdown()
