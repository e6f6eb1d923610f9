"""The object store deployed endpoints fetch their code from: any S3-compatible store, by default a RunPod network
volume through RunPod's S3 API (``https://s3api-<data centre>.runpod.io``, the bucket is the volume's id; what is
uploaded there is a file on the volume, ``/runpod-volume/<key>`` in a worker).

Layout under the store's prefix (everything named by hash, so an upload happens once per content)::

    runtime/<hash>.zip          gpuflex's package and this backend's worker modules
    bundles/<hash>.zip          a project bundle
    releases/<hash>.json        a release manifest: the endpoint's kind, methods, worker init, bundle and runtime
    state/<env>/<endpoint>.json every deploy of one endpoint in one environment (its versions)

Requests are signed with AWS Signature Version 4 by :func:`gpuflex_runpod._boot.sigv4_headers`, the code workers
use to fetch (one implementation, checked against AWS's published example and a moto server that verifies
signatures). Secrets never appear in errors.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.parse
import xml.etree.ElementTree as ElementTree
from typing import TYPE_CHECKING, Any

import attrs
import httpx

from gpuflex.errors import AuthenticationError, BackendError, BackendUnavailable, ConfigError

from ._boot import sigv4_headers

if TYPE_CHECKING:
    from ._config import RunPodConfig

__all__ = ["ObjectStore", "StoreSettings", "store_settings"]

RUNPOD_S3 = "https://s3api-{dc}.runpod.io"
_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


@attrs.frozen(kw_only=True)
class StoreSettings:
    endpoint_url: str
    bucket: str
    prefix: str
    region: str
    access_key: str = attrs.field(repr=False)
    secret_key: str = attrs.field(repr=False)
    volume: str | None = None  # the network volume the bucket is, when workers mount it

    def worker_env(self) -> dict[str, str]:
        """What a worker reads to fetch from the store (see ``_boot.store_get``)."""
        env = {"GPUFLEX_STORE_URL": self.endpoint_url, "GPUFLEX_STORE_BUCKET": self.bucket,
               "GPUFLEX_STORE_PREFIX": self.prefix, "GPUFLEX_STORE_REGION": self.region,
               "GPUFLEX_STORE_ACCESS_KEY": self.access_key, "GPUFLEX_STORE_SECRET_KEY": self.secret_key}
        if self.volume:
            env["GPUFLEX_STORE_VOLUME"] = self.volume
        return env


def _credentials(config: RunPodConfig) -> tuple[str | None, str | None]:
    access = config.store_access_key or os.environ.get("RUNPOD_S3_ACCESS_KEY") or os.environ.get("AWS_ACCESS_KEY_ID")
    secret = config.store_secret_key or os.environ.get("RUNPOD_S3_SECRET_KEY") \
        or os.environ.get("AWS_SECRET_ACCESS_KEY")
    return access, secret


def store_settings(config: RunPodConfig, volume_data_centre: str | None) -> StoreSettings | None:
    """The store ``config`` names, or None when it names none (no ``store_bucket`` and no network volume).
    ``volume_data_centre``: the network volume's data centre (RunPod's S3 API has one endpoint per data centre)."""
    bucket = config.store_bucket or config.network_volume_id
    if not bucket:
        return None
    access, secret = _credentials(config)
    if not access or not secret:
        raise ConfigError(
            f"the object store (bucket {bucket}) needs S3 credentials: set RUNPOD_S3_ACCESS_KEY and "
            "RUNPOD_S3_SECRET_KEY (RunPod console > Settings > S3 API Keys: the access key is your user id, "
            "user_...), or store_access_key / store_secret_key")
    region = config.store_region or volume_data_centre
    endpoint = config.store_endpoint_url or (RUNPOD_S3.format(dc=region.lower()) if region else None)
    if not endpoint or not region:
        raise ConfigError(f"cannot tell where the object store {bucket!r} is: set store_endpoint_url and "
                          "store_region, or use a network volume RunPod's S3 API serves")
    volume = bucket if bucket == config.network_volume_id and not config.store_bucket else None
    return StoreSettings(endpoint_url=endpoint.rstrip("/"), bucket=bucket, prefix=config.store_prefix.strip("/"),
                         region=region, access_key=access, secret_key=secret, volume=volume)


class ObjectStore:
    """Signed S3 requests (PUT, GET, HEAD, DELETE, ListObjectsV2) against one bucket and prefix."""

    def __init__(self, settings: StoreSettings, *, timeout: float = 300.0) -> None:
        self.settings = settings
        self._client = httpx.AsyncClient(timeout=timeout)

    def _url(self, key: str | None, query: dict[str, str] | None = None) -> str:
        """The object ``key`` under the prefix, or (None) the bucket itself."""
        s = self.settings
        url = f"{s.endpoint_url}/{urllib.parse.quote(s.bucket, safe='')}"
        if key is not None:
            url += "/" + urllib.parse.quote(f"{s.prefix}/{key}" if s.prefix else key, safe="-_.~/")
        if query:
            url += "?" + "&".join(f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
                                  for k, v in sorted(query.items()))
        return url

    async def _request(self, method: str, key: str | None, *, body: bytes = b"", query: dict[str, str] | None = None,
                       what: str) -> httpx.Response:
        url = self._url(key, query)
        s = self.settings
        headers = sigv4_headers(method, url, region=s.region, access_key=s.access_key, secret_key=s.secret_key,
                                payload_sha256=hashlib.sha256(body).hexdigest())
        headers.pop("host")
        try:
            response = await self._client.request(method, url, content=body, headers=headers)
        except httpx.TransportError as exc:
            raise BackendUnavailable(f"cannot reach the object store {s.endpoint_url} to {what}: {exc}") from None
        if response.status_code in (401, 403):
            code = _error_code(response.text)
            raise AuthenticationError(f"the object store {s.endpoint_url} refused the S3 credentials to {what} "
                                      f"({response.status_code} {code}); check RUNPOD_S3_ACCESS_KEY / "
                                      "RUNPOD_S3_SECRET_KEY (or store_access_key / store_secret_key)")
        if response.status_code >= 400 and response.status_code != 404:
            raise BackendError(f"the object store {s.endpoint_url} answered {response.status_code} "
                               f"{_error_code(response.text)} to {what} (bucket {s.bucket})")
        return response

    async def exists(self, key: str) -> bool:
        return (await self._request("HEAD", key, what=f"look for {key}")).status_code == 200

    async def get(self, key: str) -> bytes | None:
        response = await self._request("GET", key, what=f"read {key}")
        return None if response.status_code == 404 else response.content

    async def put(self, key: str, data: bytes) -> None:
        response = await self._request("PUT", key, body=data, what=f"upload {key}")
        if response.status_code == 404:
            raise ConfigError(f"the object store has no bucket {self.settings.bucket!r} at "
                              f"{self.settings.endpoint_url}")

    async def put_once(self, key: str, data: bytes) -> bool:
        """Upload ``data`` unless the store has ``key`` (content-addressed keys); True when it uploaded."""
        if await self.exists(key):
            return False
        await self.put(key, data)
        return True

    async def get_json(self, key: str) -> Any:
        data = await self.get(key)
        return None if data is None else json.loads(data)

    async def put_json(self, key: str, value: Any) -> None:
        await self.put(key, json.dumps(value, indent=1, sort_keys=True).encode())

    async def delete(self, key: str) -> None:
        await self._request("DELETE", key, what=f"delete {key}")

    async def keys(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (relative to the store's prefix)."""
        root = f"{self.settings.prefix}/" if self.settings.prefix else ""
        found: list[str] = []
        token: str | None = None
        while True:
            query = {"list-type": "2", "prefix": root + prefix}
            if token:
                query["continuation-token"] = token
            response = await self._request("GET", None, query=query, what=f"list {prefix}")
            if response.status_code == 404:
                return found
            tree = ElementTree.fromstring(response.content)
            found += [node.text[len(root):] for node in tree.iter(f"{_S3_NS}Key") if node.text]
            token = next((n.text for n in tree.iter(f"{_S3_NS}NextContinuationToken")), None)
            if not token:
                return found

    async def aclose(self) -> None:
        await self._client.aclose()


def _error_code(text: str) -> str:
    try:
        node = ElementTree.fromstring(text).find("Code")
    except ElementTree.ParseError:
        return ""
    return node.text or "" if node is not None else ""
