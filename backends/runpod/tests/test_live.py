"""Against a real RunPod account: what only the real service can show. Opt-in (``--run-live``, as ``nox -s live``
runs them) and skipped without ``RUNPOD_API_KEY``. Each test deploys CPU endpoints under its own name prefix and
deletes every endpoint with that prefix afterwards, whatever happened. Workers start from RunPod's public image
(no image of ours), so the first call of each test includes an image pull and the bootstrap: minutes, not seconds.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from pathlib import Path

import anyio
import pytest
from gpuflex_runpod import RunPodBackend, RunPodConfig

from gpuflex import errors
from gpuflex.client._session import get_session
from gpuflex.testing import backend_in_use

sys.path.insert(0, str(Path(__file__).parent))  # workers import _runpod_app by reference, from the bundle
import _runpod_app as app  # noqa: E402

pytestmark = [
    pytest.mark.live,
    pytest.mark.timeout(1800),
    pytest.mark.skipif(not os.environ.get("RUNPOD_API_KEY"), reason="needs RUNPOD_API_KEY"),
]


@pytest.fixture
def live_backend():
    """Backends on the real service under a fresh prefix; every endpoint with it is deleted afterwards."""
    prefix = f"gpuflex-live-{secrets.token_hex(3)}-"

    def make(**options):
        return RunPodBackend(RunPodConfig(name_prefix=prefix, queue_timeout=900, **options))

    try:
        yield make
    finally:
        async def sweep():
            backend = make()
            try:
                await backend.teardown(None)
            finally:
                await backend.aclose()

        anyio.run(sweep)


def test_live_first_call_from_runpods_public_image(live_backend):
    """No image of ours: RunPod's runpod/base image, the start command bootstraps RunPod's SDK and the job brings
    gpuflex's runtime; the SDK's free-memory check passes on the default 4 GB flavour."""
    with backend_in_use(live_backend):
        assert app.cold() > 0
        assert app.cold() > 0  # warm: the same worker or another one, with the runtime by hash


def test_live_small_flavour_passes_the_memory_check(live_backend):
    with backend_in_use(lambda: live_backend(cpu_instance="cpu3c-1-2")):
        assert app.cold() > 0


def test_live_stream_and_result_caps(live_backend):
    """RunPod's 1 MB per streamed item and ~10 MB per job: parts arrive whole, and an oversize result fails at
    once with PayloadTooLarge (if RunPod's real caps are lower than ours, this fails instead of hanging)."""
    with backend_in_use(live_backend):
        assert app.blob(3_000_000) == b"x" * 3_000_000
        assert [len(c) for c in app.chunks([10, 2_000_000, 5])] == [10, 2_000_000, 5]
        with pytest.raises(errors.PayloadTooLarge):
            app.blob(9_000_000)


def test_live_worker_output_reaches_the_caller(live_backend, caplog):
    caplog.set_level(logging.INFO, logger="gpuflex.worker")
    with backend_in_use(live_backend):
        assert get_session().run(app.talk(["live line"])) == 1
    assert any(r.getMessage().endswith("live line") for r in caplog.records if r.name == "gpuflex.worker")
