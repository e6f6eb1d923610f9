"""Real OpenSSH servers on 127.0.0.1 (two, standing in for two pods) and pod backends that reach them."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from gpuflex_pod.sshd import LoopbackSshd, SshdUnavailable

import gpuflex
from gpuflex.testing import require

HAVE_SSHD = (shutil.which("sshd") is not None or os.path.exists("/usr/sbin/sshd")) and shutil.which("ssh") is not None


def need_ssh():
    """Skip (or, where GPUFLEX_REQUIRE names sshd, fail) unless OpenSSH's server and client are installed."""
    require("sshd", HAVE_SSHD, install="apt-get install -y openssh-server openssh-client")


def _servers(count):
    need_ssh()
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


@pytest.fixture
def ssh_client():
    """OpenSSH's client and key tools, for tests that need no running server."""
    need_ssh()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each test's call outcome on its item (the live checks record theirs in the live report)."""
    report = (yield).get_result()
    if report.when == "call":
        item.rep_call = report


@pytest.fixture(autouse=True)
def _needs_openssh():
    """The pod backend drives OpenSSH's own client (ssh -G resolves every host, even in tests that start no
    server): every test here needs it, and most need its server."""
    need_ssh()
