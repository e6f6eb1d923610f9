"""The local backend passes the whole public conformance suite."""

from __future__ import annotations

import pytest
from gpuflex_local import LocalBackend

from gpuflex.testing import CHECKS, run_check


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
def test_conformance(check):
    run_check(check, LocalBackend)
