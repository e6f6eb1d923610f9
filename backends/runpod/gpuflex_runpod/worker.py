"""The RunPod handler: gpuflex's worker runtime inside RunPod's own worker loop (``runpod.serverless.start``).

``python -m gpuflex_runpod.worker`` is the generic image's command. Each job carries one call in gpuflex's envelope
plus the bundle it needs, by hash: inline (a zip, for small bundles) or as a path on a shared volume. Bundles are
unpacked once per hash into ``$GPUFLEX_RUNPOD_CACHE`` (default ``~/.cache/gpuflex/runpod``) and the runtime
reloads in place when a job names a new hash (hot reload). Dependencies are installed once per set.

The handler is an async generator, so RunPod streams every item it yields (see :mod:`._protocol`): generator
endpoints stream their chunks, every other call yields its result once. Sync functions run in a thread, so the
SDK's loop keeps answering pings and per-job stop signals while they run.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuflex.worker import IN_WORKER_ENV, WorkerRuntime, encode_error

from ._protocol import MISSING_KEY, OUTCOME_KEY, PROTOCOL_VERSION, b64decode_payload, b64encode_payload, init_from_json

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from gpuflex.backend import Payload

__all__ = ["handler", "main"]


def cache_dir() -> Path:
    return Path(os.environ.get("GPUFLEX_RUNPOD_CACHE") or Path.home() / ".cache" / "gpuflex" / "runpod")


def materialise_bundle(ref: dict[str, Any]) -> str:
    """The directory holding the bundle ``ref`` names: a shared path as is, or the inline zip unpacked once."""
    if ref.get("path"):
        return str(ref["path"])
    target = cache_dir() / "bundles" / ref["hash"]
    if target.is_dir():
        return str(target)
    if not ref.get("zip"):
        raise BundleMissing(ref["hash"])
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{ref['hash'][:12]}-", dir=target.parent))
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(ref["zip"]))) as archive:
        for info in archive.infolist():
            path = archive.extract(info, staging)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(path, mode)
    try:
        os.replace(staging, target)
    except OSError:  # another worker process unpacked it first
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


class BundleMissing(Exception):
    """The job named a bundle by hash only, and this worker does not have it: the client resends it inline."""


def ensure_dependencies(requirements: list[str]) -> None:
    """Install ``requirements`` once per set (a marker file per hash); skip when they are already satisfied."""
    if not requirements:
        return
    digest = hashlib.sha256("\n".join(sorted(requirements)).encode()).hexdigest()[:16]
    marker = cache_dir() / "deps" / digest
    if marker.exists() or _satisfied(requirements):
        return
    uv = shutil.which("uv")
    command = ([uv, "pip", "install", "--python", sys.executable] if uv
               else [sys.executable, "-m", "pip", "install", "--quiet"])
    subprocess.run([*command, *requirements], check=True, stdout=sys.stderr)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()


def _satisfied(requirements: list[str]) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    for text in requirements:
        requirement = Requirement(text)
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            return False
        if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
            return False
    return True


class HandlerState:
    """One endpoint's runtime in this worker process, and the messages of the calls it runs."""

    def __init__(self) -> None:
        self.runtime: WorkerRuntime | None = None
        self.bundle_hash: str | None = None
        self.lock = asyncio.Lock()
        self.inboxes: dict[str, asyncio.Queue[tuple[Any, ...]]] = {}
        self.loaded: asyncio.Future[tuple[Any, ...]] | None = None

    def send(self, message: tuple[Any, ...]) -> None:
        """The runtime's outgoing messages (always on this loop): per-call ones go to the call's inbox."""
        if message[0] in ("ready", "fatal"):
            if self.loaded is not None and not self.loaded.done():
                self.loaded.set_result(message)
            return
        inbox = self.inboxes.get(message[1])
        if inbox is not None:
            inbox.put_nowait(message)

    async def ensure_loaded(self, request: dict[str, Any]) -> Payload | None:
        """Load (or hot-reload) the bundle the job names; return an error outcome when that fails."""
        bundle = request["bundle"]
        async with self.lock:
            if self.runtime is not None and self.bundle_hash == bundle["hash"]:
                return None
            try:
                root = await asyncio.to_thread(materialise_bundle, bundle)
                await asyncio.to_thread(ensure_dependencies, list(request.get("dependencies", [])))
            except BundleMissing:
                raise
            except BaseException as exc:
                return encode_error(exc)
            init = {**init_from_json(request["init"]), "bundle_root": root, "report_started": False}
            if self.runtime is None:
                runtime = WorkerRuntime(init, self.send)
                # sync callables run in a thread (the runtime runs them on the loop only for concurrency 1), so the
                # SDK's loop stays free for pings and per-job stop signals
                runtime.concurrency = max(runtime.concurrency, 2)
                try:
                    await runtime.start()
                except BaseException as exc:
                    return encode_error(exc)
                self.runtime = runtime
            else:
                self.loaded = asyncio.get_running_loop().create_future()
                await self.runtime.reload(init)
                answer = await self.loaded
                if answer[0] == "fatal":
                    self.bundle_hash = None
                    return answer[1]  # type: ignore[no-any-return]
            self.bundle_hash = bundle["hash"]
            return None


_state = HandlerState()


def _error_item(outcome: Payload, message: str) -> dict[str, str]:
    return {"error": json.dumps({OUTCOME_KEY: b64encode_payload(outcome), "message": message})}


async def handler(job: dict[str, Any]) -> AsyncIterator[dict[str, str]]:
    """Run one gpuflex call from a RunPod job, yielding the items described in :mod:`._protocol`."""
    request = (job.get("input") or {}).get("gpuflex")
    if not isinstance(request, dict) or request.get("version") != PROTOCOL_VERSION:
        yield {"error": f"not a gpuflex job (protocol {PROTOCOL_VERSION} expected): the input lacks 'gpuflex'"}
        return
    try:
        failure = await _state.ensure_loaded(request)
    except BundleMissing as exc:
        yield {"error": json.dumps({MISSING_KEY: str(exc), "message": f"this worker does not have bundle {exc}"})}
        return
    if failure is not None:
        yield _error_item(failure, "the worker could not load the endpoint")
        return
    runtime = _state.runtime
    assert runtime is not None
    call_id = str(job["id"])
    inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    _state.inboxes[call_id] = inbox
    try:
        payload = b64decode_payload(request["payload"])
        runtime.submit(call_id, payload)  # the runtime decodes the call itself (with the method from the payload)
        while True:
            message = await inbox.get()
            if message[0] == "chunk":
                yield {"chunk": b64encode_payload(message[2])}
                continue
            if message[0] != "done":
                continue
            _, _, status, outcome = message
            if status == "ok":
                yield {"result": b64encode_payload(outcome)}
            elif status == "error":
                yield _error_item(outcome, "the function raised an exception")
            else:
                yield {"error": "the call was cancelled in the worker"}
            return
    except asyncio.CancelledError:
        # a stop signal (cancel, execution timeout): an async call is cancelled with its task; a sync one runs on
        # in its thread and cannot be interrupted, so the worker exits to free the GPU (RunPod replaces it)
        runtime.cancel(call_id)
        if request.get("blocking"):
            asyncio.get_running_loop().call_later(0.05, os._exit, 75)
        raise
    finally:
        _state.inboxes.pop(call_id, None)


def main() -> None:
    """Start RunPod's worker loop with the gpuflex handler."""
    os.environ[IN_WORKER_ENV] = "1"
    import runpod

    concurrency = max(1, int(os.environ.get("GPUFLEX_CONCURRENCY", "1")))
    runpod.serverless.start({
        "handler": handler,
        "return_aggregate_stream": True,
        "concurrency_modifier": lambda current: concurrency,
    })


if __name__ == "__main__":
    main()
