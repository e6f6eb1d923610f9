"""The fake's stores: mounts (the files a container sees), images (and their builds), secrets and blobs, as RPCs
mixed into the fake servicer, and the blob store's HTTP side (S3's, for Modal's client)."""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import sys
import time
from typing import TYPE_CHECKING

from _fake_logs import Signal
from aiohttp import web
from grpclib import GRPCError, Status
from modal_proto import api_pb2

if TYPE_CHECKING:
    from pathlib import Path

SUCCESS = api_pb2.GenericResult.GENERIC_STATUS_SUCCESS
MAX_BLOB_BYTES = 2 * 2**30  # not published by Modal: gpuflex's own limit, checked the same way (unverified)


def invalid(message: str) -> GRPCError:
    return GRPCError(Status.INVALID_ARGUMENT, message)


async def start_blob_store(blobs: dict[str, bytes]) -> tuple[str, web.AppRunner]:
    """Blobs over HTTP on 127.0.0.1: PUT answers the content's md5 as its ETag, as S3 does. Returns the base URL
    and the runner (to clean up)."""

    async def put(request: web.Request) -> web.Response:
        data = await request.read()
        blobs[request.match_info["blob_id"]] = data
        return web.Response(headers={"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

    async def get(request: web.Request) -> web.Response:
        return web.Response(body=blobs[request.match_info["blob_id"]])

    app = web.Application(client_max_size=2**31)
    app.router.add_put("/blob/{blob_id}", put)
    app.router.add_get("/blob/{blob_id}", get)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return f"http://127.0.0.1:{runner.addresses[0][1]}/blob", runner


class StoreRPCs:
    """Mounts, images, secrets and blobs (mixed into ``FakeModal``, whose ``_recv``/``_reply``/``new_id``/
    ``logs`` they use)."""

    root: Path
    blobs: dict[str, bytes]
    blob_url: str
    mounts: dict[str, list[api_pb2.MountFile]]
    named_secrets: dict[str, dict[str, str]]
    secret_values: dict[str, dict[str, str]]

    def __init__(self) -> None:
        self.mounts = {}
        self.named_secrets = {}  # what `modal secret create` would have stored
        self.secret_values = {}
        self.blobs = {}
        self.blob_url = ""  # set once the blob store listens
        self.build = {"seconds": 0.0, "lines": [], "fail": False}  # how the next image build goes
        self.builds: dict[str, api_pb2.GenericResult | None] = {}
        self.built = Signal()

    async def MountGetOrCreate(self, stream):
        request = await self._recv(stream)
        mount_id = self.new_id("mo")
        self.mounts[mount_id] = list(request.files)
        await self._reply(stream, api_pb2.MountGetOrCreateResponse(
            mount_id=mount_id, handle_metadata=api_pb2.MountHandleMetadata(content_checksum_sha256_hex="0")))

    async def MountBatchedCheckExistence(self, stream):
        request = await self._recv(stream)
        missing = [h for h in request.sha256_hex_hashes if not (self.root / "files" / h).exists()]
        await self._reply(stream, api_pb2.MountBatchedCheckExistenceResponse(missing_sha256_hex_hashes=missing))

    async def MountPutFile(self, stream):
        request = await self._recv(stream)
        data = self.blobs[request.data_blob_id] if request.data_blob_id else request.data
        if hashlib.sha256(data).hexdigest() != request.sha256_hex:
            raise invalid("file content does not match its sha256")
        (self.root / "files").mkdir(exist_ok=True)
        (self.root / "files" / request.sha256_hex).write_bytes(data)
        await self._reply(stream, api_pb2.MountPutFileResponse(exists=True))

    def mounted_files(self):
        return sorted(f.filename for request in self.of("MountGetOrCreate") for f in request.files)

    def materialise(self, function: api_pb2.Function, home: Path) -> Path:
        """The container's file system: its mounts under ``home`` (``/root/x`` -> ``home/root/x``)."""
        for mount_id in function.mount_ids:
            for file in self.mounts.get(mount_id, []):
                target = home / file.filename.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.root / "files" / file.sha256_hex, target)
        (home / "root").mkdir(parents=True, exist_ok=True)
        return home / "root"

    async def ImageGetOrCreate(self, stream):
        request = await self._recv(stream)
        image_id = self.new_id("im")
        steps = "\n".join(request.image.dockerfile_commands)
        python = re.search(r"FROM python:(\d+\.\d+)", steps)
        if python and python.group(1) != f"{sys.version_info.major}.{sys.version_info.minor}":
            raise invalid(f"the fake runs containers on this Python only, not {python.group(1)}")
        result = None if self.build["seconds"] or self.build["lines"] else api_pb2.GenericResult(status=SUCCESS)
        if result is None:
            asyncio.get_running_loop().create_task(self._build(image_id, request.app_id))
        await self._reply(stream, api_pb2.ImageGetOrCreateResponse(image_id=image_id, result=result))

    async def _build(self, image_id: str, app_id: str) -> None:
        """An image build that takes ``build['seconds']`` and prints ``build['lines']`` into the app's logs."""
        build, store = dict(self.build), self.logs(app_id)
        self.builds[image_id] = None
        for line in build["lines"]:
            store.add(api_pb2.TaskLogsBatch(image_id=image_id, task_id=f"ta-build-{image_id}", items=[
                api_pb2.TaskLogs(data=line + "\n", file_descriptor=api_pb2.FILE_DESCRIPTOR_STDOUT,
                                 timestamp=time.time())]))
        await asyncio.sleep(build["seconds"])
        status = api_pb2.GenericResult.GENERIC_STATUS_FAILURE if build["fail"] else SUCCESS
        self.builds[image_id] = api_pb2.GenericResult(status=status, exception="Image build failed"
                                                      if build["fail"] else "")
        self.built.fire()

    async def ImageJoinStreaming(self, stream):
        request = await self._recv(stream)
        deadline = time.monotonic() + request.timeout
        while self.builds.get(request.image_id) is None and time.monotonic() < deadline:
            await self.built.wait(deadline - time.monotonic())
        result = self.builds.get(request.image_id)
        await self._reply(stream, api_pb2.ImageJoinStreamingResponse(result=result, entry_id="1")
                          if result is not None else api_pb2.ImageJoinStreamingResponse())

    async def SecretGetOrCreate(self, stream):
        request = await self._recv(stream)
        if request.deployment_name:
            values = self.named_secrets.get(request.deployment_name)
            if values is None:
                raise GRPCError(Status.NOT_FOUND, f"Secret '{request.deployment_name}' not found")
            missing = [key for key in request.required_keys if key not in values]
            if missing:
                raise GRPCError(Status.NOT_FOUND, f"Secret is missing key(s): {', '.join(missing)}")
        else:
            values = dict(request.env_dict)
        secret_id = self.new_id("st")
        self.secret_values[secret_id] = values
        await self._reply(stream, api_pb2.SecretGetOrCreateResponse(secret_id=secret_id))

    def environment_of(self, function: api_pb2.Function) -> dict[str, str]:
        env: dict[str, str] = {}
        for secret_id in function.secret_ids:
            env.update(self.secret_values.get(secret_id, {}))
        return env

    def dockerfiles(self):
        return [list(request.image.dockerfile_commands) for request in self.of("ImageGetOrCreate")]

    # -- blobs ---------------------------------------------------------------------------------------------------

    def blob_create(self, request: api_pb2.BlobCreateRequest) -> api_pb2.BlobCreateResponse:
        if request.content_length > MAX_BLOB_BYTES:
            raise invalid(f"blob of {request.content_length} bytes is over the limit of {MAX_BLOB_BYTES}")
        blob_id = self.new_id("bl")
        urls = api_pb2.UploadUrlList(items=[f"{self.blob_url}/{blob_id}"])
        return api_pb2.BlobCreateResponse(blob_ids=[blob_id], upload_urls=urls)

    def blob_get(self, request: api_pb2.BlobGetRequest) -> api_pb2.BlobGetResponse:
        return api_pb2.BlobGetResponse(download_url=f"{self.blob_url}/{request.blob_id}")

    async def BlobCreate(self, stream):
        await self._reply(stream, self.blob_create(await self._recv(stream)))

    async def BlobGet(self, stream):
        await self._reply(stream, self.blob_get(await self._recv(stream)))
