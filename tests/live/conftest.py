"""After every live run, interrupted ones included, tear down whatever the backends' name prefixes still hold."""

from __future__ import annotations

import anyio
import pytest

from gpuflex._registry import get_registry

from .test_live_conformance import TARGETS


async def _sweep(name: str) -> None:
    _, options = TARGETS[name]
    cls = get_registry().get(name)
    backend = cls(cls.config_cls(**options))
    try:
        await backend.teardown(None)  # every endpoint this backend's prefix names, leftovers of killed runs too
    finally:
        await backend.aclose()


@pytest.fixture(scope="session", autouse=True)
def _sweep_after_the_run(request: pytest.FixtureRequest):
    yield
    if not request.config.getoption("--run-live"):
        return
    for name, (available, _) in TARGETS.items():
        if available:
            anyio.run(_sweep, name)
