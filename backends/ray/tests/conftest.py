"""One real two-node Ray cluster for the whole session, and a fresh gpuflex session around every test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from gpuflex_ray._backend import shipped_packages
from gpuflex_ray._connect import connect, disconnect

import gpuflex

sys.path.insert(0, str(Path(__file__).parent))
from _ray_helpers import TestCluster  # noqa: E402


@pytest.fixture(scope="session")
def ray_cluster():
    """Started once (about 20 s here); at the end, no process of it may be left.

    The session holds one connection (one Ray job), which every backend of the tests joins: a long-running program
    with several backends does the same, and each test saves a job's start. It is made from the cluster's directory,
    because Ray puts the driver's directory on its workers' path, and this checkout's gpuflex would then shadow the
    shipped one.
    """
    cluster = TestCluster()
    here = os.getcwd()
    os.chdir(cluster.root)
    try:
        connection = connect(cluster.address, None, {}, shipped_packages())
    finally:
        os.chdir(here)
    yield cluster
    gpuflex.shutdown()
    disconnect(connection)
    left = cluster.shutdown()
    assert not left, f"processes of the Ray cluster were still running after it was shut down: {left}"


@pytest.fixture(autouse=True)
def _fresh_session():
    gpuflex.shutdown()
    yield
    gpuflex.shutdown()
