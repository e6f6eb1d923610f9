"""pytest plugin shipped with gpuflex (entry point ``pytest11``).

* ``--backend NAME``: limit ``gpuflex_backend`` to one backend.
* ``--run-live``: allow tests marked ``live`` (real clouds, real credentials); skipped otherwise.
* ``gpuflex_backend``: a fixture parametrized over the installed backends, giving a factory of fresh instances.
  Without ``--backend``, a backend that cannot run a call here with its default options (no credentials, no hosts:
  see :func:`gpuflex.testing.probe_backend`) is skipped with the reason; named with ``--backend``, it runs.
* ``conformance_check``: parametrized over :data:`gpuflex.testing.CHECKS`.
* At the end of a run, a summary of what did not run and why, grouped by reason, with the command that enables
  each group (see :func:`gpuflex.testing.require`).
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any

import pytest

from gpuflex._registry import get_registry

from . import _harness
from ._conformance import CHECKS
from ._installed import probe_backend

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
    _harness.pytest_sessions += 1  # run_check turns CheckSkipped into a skip only while pytest runs


def pytest_unconfigure(config: pytest.Config) -> None:
    _harness.pytest_sessions -= 1


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


_probed: dict[str, str | None] = {}  # backend name -> why it cannot run here (probed once per test run)


@pytest.fixture
def gpuflex_backend(request: pytest.FixtureRequest) -> Callable[[], Backend]:
    """A factory of fresh instances of one installed backend (default options)."""
    cls = get_registry().get(request.param)

    def make() -> Backend:
        return cls()

    if not request.config.getoption("--backend"):  # every installed backend: skip those that cannot run here
        if cls.name not in _probed:
            _probed[cls.name] = probe_backend(make)
        reason = _probed[cls.name]
        if reason is not None:
            pytest.skip(f"the {cls.name} backend cannot run here with its default options ({reason}); "
                        f"configure it and pass --backend {cls.name}")
    return make


@pytest.fixture
def conformance_check(request: pytest.FixtureRequest) -> Any:
    return request.param


def _skip_reason(report: pytest.TestReport) -> str | None:
    if not report.skipped or not isinstance(report.longrepr, tuple):
        return None  # an xfail, or a skip without a reason
    reason = str(report.longrepr[2])
    return reason.removeprefix("Skipped: ")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Sum up what did not run: one line per reason, with how to enable it, so a skip is never silent."""
    reasons: collections.Counter[str] = collections.Counter()
    for report in terminalreporter.stats.get("skipped", []):
        reason = _skip_reason(report)
        if reason is not None:
            reasons[reason] += 1
    if not reasons:
        return
    terminalreporter.section("what did not run", sep="-")
    for reason, count in reasons.most_common():
        terminalreporter.write_line(f"{count:4d} test{'s' if count != 1 else ' '}  {reason}")
