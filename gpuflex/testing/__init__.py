"""The offline test kit for backend authors: the conformance suite and a pytest plugin.

>>> from gpuflex.testing import CHECKS, run_check
>>> @pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
... def test_conformance(check):
...     run_check(check, MyBackend)
"""

from __future__ import annotations

from ._conformance import CHECKS as CHECKS
from ._conformance import run_check as run_check
from ._harness import BackendFactory as BackendFactory
from ._harness import Check as Check
from ._harness import CheckSkipped as CheckSkipped
from ._harness import backend_in_use as backend_in_use
from ._harness import load_module as load_module
from ._harness import wait_until as wait_until
from ._installed import installed_backends as installed_backends
from ._installed import probe_backend as probe_backend
from ._requires import require as require

__all__ = [
    "CHECKS",
    "BackendFactory",
    "Check",
    "CheckSkipped",
    "backend_in_use",
    "installed_backends",
    "load_module",
    "probe_backend",
    "require",
    "run_check",
    "wait_until",
]
