"""The Ray backend passes the whole public conformance suite, on a real two-node Ray cluster."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from gpuflex_ray import RayBackend

from gpuflex.testing import CHECKS, run_check, wait_until

sys.path.insert(0, str(Path(__file__).parent))
from _ray_helpers import actor_processes  # noqa: E402


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
def test_conformance(check, ray_cluster):
    run_check(check, lambda: RayBackend(ray_cluster.config()))
    wait_until(lambda: not actor_processes(ray_cluster.root), "every actor to be gone after the backend closed",
               limit=30)
