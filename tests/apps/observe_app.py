"""Endpoints for the tests of what gpuflex observes: ``gpuflex.stats()`` (tests/test_stats.py), ``/metrics``
(tests/test_metrics.py), spans (tests/test_tracing.py) and the dashboard (tests/test_dashboard.py).

Only the standard library and gpuflex are imported, to keep worker start-up fast.
"""

from __future__ import annotations

import time

import gpuflex


@gpuflex.endpoint(name="slow")
def slow(seconds: float) -> str:
    """Prints a line with markup in it (the dashboard must show it as text), then sleeps."""
    print(f"<b>slow</b> sleeping {seconds} s", flush=True)
    time.sleep(seconds)
    return "done"


@gpuflex.endpoint(name="broken")
def broken() -> None:
    raise ValueError("broken on purpose")


@gpuflex.endpoint(name="doubled", max_batch_size=4, batch_wait_ms=1000, max_workers=1)
def doubled(xs: list[int]) -> list[int]:
    """Batched: a full batch of 4 runs at once; fewer wait a second for more."""
    return [2 * x for x in xs]


@gpuflex.endpoint(name="Warming")
class Warming:
    """A class whose setup() takes a while: its worker is seen STARTING."""

    def setup(self) -> None:
        time.sleep(2.0)

    def __call__(self) -> str:
        return "warm"

