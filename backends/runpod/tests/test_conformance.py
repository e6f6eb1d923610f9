"""The serverless backend passes the whole public conformance suite against the emulator, whose workers run the
unmodified runpod worker loop."""

from __future__ import annotations

import pytest

from gpuflex.testing import CHECKS, run_check


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
def test_conformance(check, make_backend):
    run_check(check, make_backend)
