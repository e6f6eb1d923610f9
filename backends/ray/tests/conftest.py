"""One real two-node Ray cluster for the whole session, and a fresh gpuflex session around every test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import gpuflex

sys.path.insert(0, str(Path(__file__).parent))
from _ray_helpers import TestCluster  # noqa: E402


@pytest.fixture(scope="session")
def ray_cluster():
    """Started once (about 20 s here); at the end, no process of it may be left."""
    cluster = TestCluster()
    yield cluster
    gpuflex.shutdown()
    left = cluster.shutdown()
    assert not left, f"processes of the Ray cluster were still running after it was shut down: {left}"


@pytest.fixture(autouse=True)
def _fresh_session():
    gpuflex.shutdown()
    yield
    gpuflex.shutdown()
