"""The backend against gpuflex's public conformance suite, plus the check that installing it registers it.

Every check builds fresh backends from the factory it is given (here the class itself), runs real endpoints on
them, and raises AssertionError when the backend falls short. Checks that need a capability the backend declares
missing (``SubprocessBackend.capabilities``) are reported as skips, with the declared reason.
"""

from __future__ import annotations

import gpuflex
import pytest
from gpuflex.testing import CHECKS, installed_backends, run_check

from gpuflex_subprocess_example import SubprocessBackend


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
def test_conformance(check):
    run_check(check, SubprocessBackend)


def test_installed_backend_is_listed():
    # `pip install -e .` put the entry point in place: installed_backends() reads the entry points afresh, as a new
    # process would, so this holds even if another test built gpuflex's registry before the install.
    assert installed_backends()["subprocess-example"] is SubprocessBackend
    assert "subprocess-example" in gpuflex.list_backends()
