"""The pod backend passes the whole public conformance suite, on a pool of two real sshd hosts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from gpuflex_pod import PodBackend

from gpuflex.testing import CHECKS, run_check

sys.path.insert(0, str(Path(__file__).parent))
from _pod_helpers import pod_config, remote_workers, wait_until  # noqa: E402


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
def test_conformance(check, sshd_pair, remote_dir):
    run_check(check, lambda: PodBackend(pod_config(sshd_pair, remote_dir)))
    wait_until(lambda: not remote_workers(remote_dir), "every remote worker to be gone after the backend closed")
