"""The object store: AWS Signature Version 4 as AWS publishes it, signed requests a real S3 server verifies (moto,
signatures checked), a worker reading its own network volume without S3, and the development loop carrying a
bundle over the inline limit through the store."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import anyio
import pytest
from gpuflex_runpod import _boot
from gpuflex_runpod._store import ObjectStore, StoreSettings

from gpuflex import errors
from gpuflex.client import get_session
from gpuflex.testing import backend_in_use

sys.path.insert(0, str(Path(__file__).parent))
import _runpod_app as app  # noqa: E402


def test_signature_v4_matches_aws_published_example():
    """AWS's S3 documentation, "Example: GET Object" (Signature Version 4, header-based auth)."""
    headers = _boot.sigv4_headers(
        "GET", "https://examplebucket.s3.amazonaws.com/test.txt", region="us-east-1",
        access_key="AKIAIOSFODNN7EXAMPLE", secret_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        headers={"Range": "bytes=0-9"}, now=datetime.datetime(2013, 5, 24, tzinfo=datetime.UTC))
    assert headers["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")


def _settings(s3, **changes):
    values = {"endpoint_url": s3.url, "bucket": "emuvol0001", "prefix": "gpuflex-unit", "region": "us-east-1",
              "access_key": s3.access_key, "secret_key": s3.secret_key} | changes
    return StoreSettings(**values)


def test_the_store_client_and_the_worker_sign_what_s3_verifies(s3, monkeypatch):
    async def main():
        store = ObjectStore(_settings(s3))
        try:
            key = "odd names/a+b=c&d~é.txt"
            await store.put(key, b"hello")
            assert await store.exists(key) and await store.get(key) == b"hello"
            assert not await store.put_once(key, b"other") and await store.get(key) == b"hello"
            assert key in await store.keys("odd names/")
            for name, value in store.settings.worker_env().items():
                monkeypatch.setenv(name, value)
            monkeypatch.delenv("GPUFLEX_STORE_VOLUME", raising=False)
            assert await anyio.to_thread.run_sync(_boot.store_get, key) == b"hello"  # the worker's own GET
            await store.delete(key)
            assert await store.get(key) is None and await store.keys("odd names/") == []
        finally:
            await store.aclose()

    anyio.run(main)


def test_wrong_credentials_are_named_and_the_secret_is_not(s3):
    async def main():
        store = ObjectStore(_settings(s3, secret_key="definitely-wrong-secret"))
        try:
            with pytest.raises(errors.AuthenticationError, match="refused the S3 credentials") as caught:
                await store.get("x")
            assert "definitely-wrong-secret" not in str(caught.value)
        finally:
            await store.aclose()

    anyio.run(main)


def test_a_worker_reads_its_own_network_volume_without_s3(tmp_path, monkeypatch):
    """RunPod serves a network volume as the bucket of its id: s3://<volume>/<key> is /runpod-volume/<key>."""
    (tmp_path / "gpuflex" / "bundles").mkdir(parents=True)
    (tmp_path / "gpuflex" / "bundles" / "abc.zip").write_bytes(b"from the volume")
    for name, value in {"GPUFLEX_STORE_URL": "http://127.0.0.1:9", "GPUFLEX_STORE_BUCKET": "vol1",
                        "GPUFLEX_STORE_VOLUME": "vol1", "GPUFLEX_STORE_PREFIX": "gpuflex",
                        "GPUFLEX_RUNPOD_VOLUME": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    assert _boot.store_get("bundles/abc.zip") == b"from the volume"
    with pytest.raises(OSError):  # not on the volume: an S3 GET, here to a closed port
        _boot.store_get("bundles/other.zip")


def test_a_bundle_over_the_inline_limit_travels_through_the_store(make_backend, store_options, s3):
    """During development, a bundle too large to ride in the jobs is uploaded once by hash and fetched by the
    workers (before: a ConfigError saying the transport was not implemented)."""
    bundle = get_session().bundle_for(app.cold)
    options = {**store_options, "inline_bundle_limit": 1024, "name_prefix": "gpuflex-storedev-"}
    with backend_in_use(lambda: make_backend(**options)) as backend:
        assert app.cold() > 0
        assert backend.deployed["rp_cold"].request["bundle"] == {"hash": bundle.hash, "store": True}
        get_session().run(backend.teardown("rp_cold"))
    assert f"gpuflex/bundles/{bundle.hash}.zip" in s3.keys("emuvol0001")
    with pytest.raises(errors.ConfigError, match="object store"):  # without a store: the limit, and what to do
        with backend_in_use(lambda: make_backend(inline_bundle_limit=1024, name_prefix="gpuflex-nostore-")):
            app.cold()
