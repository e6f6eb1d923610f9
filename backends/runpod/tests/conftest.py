"""One emulator per test session: the serverless backend's tests run against it on 127.0.0.1."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import pytest
from gpuflex_runpod import RunPodBackend, RunPodConfig
from gpuflex_runpod.emulator import start_emulator

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def emulator_key():
    return secrets.token_hex(12)


#: every test endpoint attaches this (emulated) network volume: workers build their Python environment on it once
#: per session, as endpoints sharing a volume do on RunPod; tests of a bare container disk set it to None
TEST_VOLUME = "emuvol0001"


@pytest.fixture(scope="session")
def emulator_logs(tmp_path_factory):
    return tmp_path_factory.mktemp("emulator-logs")


@pytest.fixture(scope="session")
def emulator_url(emulator_logs, emulator_key):
    """Workers start as on RunPod: from RunPod's image (emulated: a bare Python, uv and sh), bootstrapping RunPod's
    SDK from the package index through a uv cache kept between sessions."""
    with start_emulator(api_key=emulator_key, log_dir=emulator_logs) as url:
        yield url


@pytest.fixture
def make_backend(emulator_url, emulator_key):
    """Fresh backends on the shared emulator. They keep their endpoints on close, so the next check adopts them
    with their warm workers (as a later run adopts leftovers)."""

    def make(**options):
        settings = {"api_url": emulator_url, "api_key": emulator_key, "delete_on_close": False,
                    "network_volume_id": TEST_VOLUME, **options}
        return RunPodBackend(RunPodConfig(**settings))

    return make


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 (started once per session), checking every request's signature, with a bucket
    named like the test volume: RunPod's S3 API serves a network volume as the bucket of its id."""
    from _s3server import start_s3

    with start_s3(str(tmp_path_factory.mktemp("s3") / "moto.log")) as server:
        assert server.request("PUT", f"/{TEST_VOLUME}").status_code == 200
        yield server


@pytest.fixture
def store_options(s3):
    return {"store_endpoint_url": s3.url, "store_region": "us-east-1", "store_access_key": s3.access_key,
            "store_secret_key": s3.secret_key}
