"""One emulator per test session: the serverless backend's tests run against it on 127.0.0.1."""

from __future__ import annotations

import secrets

import pytest
from gpuflex_runpod import RunPodBackend, RunPodConfig
from gpuflex_runpod.emulator import start_emulator


@pytest.fixture(scope="session")
def emulator_key():
    return secrets.token_hex(12)


@pytest.fixture(scope="session")
def emulator_url(tmp_path_factory, emulator_key):
    logs = tmp_path_factory.mktemp("emulator-logs")
    cache = tmp_path_factory.mktemp("worker-cache")
    with start_emulator(api_key=emulator_key, log_dir=logs, env={"GPUFLEX_RUNPOD_CACHE": str(cache)}) as url:
        yield url


@pytest.fixture
def make_backend(emulator_url, emulator_key):
    """Fresh backends on the shared emulator. They keep their endpoints on close, so the next check adopts them
    with their warm workers (as a later run adopts leftovers)."""

    def make(**options):
        settings = {"api_url": emulator_url, "api_key": emulator_key, "delete_on_close": False, **options}
        return RunPodBackend(RunPodConfig(**settings))

    return make
