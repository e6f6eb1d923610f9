"""Real OpenSSH servers on 127.0.0.1 (two, standing in for two pods) and pod backends that reach them."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from gpuflex_pod.sshd import LoopbackSshd, SshdUnavailable

import gpuflex

HAVE_SSHD = shutil.which("sshd") is not None or os.path.exists("/usr/sbin/sshd")


def _servers(count):
    if not HAVE_SSHD:
        if os.environ.get("GPUFLEX_REQUIRE_SSHD"):
            pytest.fail("GPUFLEX_REQUIRE_SSHD is set but openssh-server is not installed")
        pytest.skip("openssh-server is not installed (apt-get install -y openssh-server; .ci/run does)")
    try:
        return [LoopbackSshd().start() for _ in range(count)]
    except SshdUnavailable as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def sshd_pair():
    servers = _servers(2)
    yield servers
    for server in servers:
        server.cleanup()


@pytest.fixture
def sshd():
    """A server of this test's own (the fault tests kill it)."""
    [server] = _servers(1)
    yield server
    server.cleanup()


@pytest.fixture
def remote_dir():
    path = Path(tempfile.mkdtemp(prefix="gpuflex-pod-remote-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _fresh_session():
    gpuflex.shutdown()
    yield
    gpuflex.shutdown()
