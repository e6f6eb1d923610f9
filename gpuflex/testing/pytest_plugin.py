"""pytest plugin shipped with gpuflex (entry point ``pytest11``).

* ``--backend NAME``: limit ``gpuflex_backend`` to one backend.
* ``--run-live``: allow tests marked ``live`` (real clouds, real credentials); skipped otherwise.
* ``gpuflex_backend``: a fixture parametrized over the installed backends, giving a factory of fresh instances.
* ``conformance_check``: parametrized over :data:`gpuflex.testing.CHECKS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from gpuflex._registry import get_registry

from ._conformance import CHECKS

if TYPE_CHECKING:
    from collections.abc import Callable

    from gpuflex.backend import Backend


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gpuflex")
    group.addoption("--backend", action="append", default=[], help="run gpuflex_backend tests on this backend only")
    group.addoption("--run-live", action="store_true", default=False,
                    help="run tests marked 'live' against real clouds (needs credentials)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "live: talks to a real cloud; runs only with --run-live")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-live"):
        return
    skip = pytest.mark.skip(reason="needs --run-live and real credentials")
    for item in items:
        if "live" in item.keywords:
            item.add_marker(skip)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "gpuflex_backend" in metafunc.fixturenames:
        names = metafunc.config.getoption("--backend") or get_registry().names()
        metafunc.parametrize("gpuflex_backend", names, indirect=True)
    if "conformance_check" in metafunc.fixturenames:
        metafunc.parametrize("conformance_check", CHECKS, ids=[c.__name__ for c in CHECKS])


@pytest.fixture
def gpuflex_backend(request: pytest.FixtureRequest) -> Callable[[], Backend]:
    """A factory of fresh instances of one installed backend (default options)."""
    cls = get_registry().get(request.param)

    def make() -> Backend:
        return cls()

    return make


@pytest.fixture
def conformance_check(request: pytest.FixtureRequest) -> Any:
    return request.param
