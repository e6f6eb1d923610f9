"""Bundles through Ray's object store: contents put once, unpacked once per node, changed files alone on a reload.

The caller puts each file content the cluster has not seen into one blob (``{sha256: bytes}``, one ``ray.put``
per deploy); a bundle is then a list of ``(path, sha256)`` plus the blobs holding them. An actor unpacks what its
node lacks into ``<cache>/objects/<sha256>`` and links ``<cache>/bundles/<hash>/`` from them, so after an edit
only the changed files travel and a new bundle on a node costs one small fetch.

Chosen over ``runtime_env={"working_dir": ...}``: a new working_dir is a new runtime environment, which Ray serves
with new worker processes, so a hot reload would restart every actor and import everything again.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from gpuflex import Bundle

__all__ = ["BundleUploads", "cache_dir", "materialise"]

CACHE_ENV = "GPUFLEX_RAY_CACHE"


class BundleUploads:
    """What this caller has put into the cluster's object store: the blobs, and which blob holds each content."""

    def __init__(self, ray: Any) -> None:
        self.ray = ray
        self.blobs: list[Any] = []  # ObjectRefs; held here so the contents stay in the object store
        self.where: dict[str, int] = {}  # sha256 -> index into blobs

    def plan(self, bundle: Bundle) -> dict[str, Any]:
        """Put the contents the cluster lacks (blocking: call from a thread); return the bundle's description."""
        missing = {f.sha256: f.path for f in bundle.files if f.sha256 not in self.where}
        if missing:
            blob = {sha: (bundle.root / path).read_bytes() for sha, path in missing.items()}
            self.blobs.append(self.ray.put(blob))
            self.where.update(dict.fromkeys(missing, len(self.blobs) - 1))
        needed = sorted({self.where[f.sha256] for f in bundle.files})
        return {"hash": bundle.hash, "files": [(f.path, f.sha256) for f in bundle.files],
                "blobs": [(index, self.blobs[index]) for index in needed]}


def cache_dir() -> Path:
    """Where an actor keeps bundles on its node: ``$GPUFLEX_RAY_CACHE``, else ``gpuflex-ray`` in Ray's temp dir."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "gpuflex-ray"


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp, 0o444)
    os.replace(tmp, path)


def materialise(description: dict[str, Any], get: Callable[[Any], Any]) -> str:
    """The directory of the bundle ``description`` names on this node, unpacked if needed (in an actor, where
    ``get`` is ``ray.get``)."""
    root = cache_dir()
    target = root / "bundles" / description["hash"]
    if target.is_dir():
        return str(target)
    objects = root / "objects"
    objects.mkdir(parents=True, exist_ok=True)
    wanted = {sha for _, sha in description["files"] if not (objects / sha).exists()}
    for _, ref in description["blobs"]:
        if not wanted:
            break
        blob: dict[str, bytes] = get(ref)  # fetched from the object store (another node's, or this one's)
        for sha in wanted & blob.keys():
            _write_atomic(objects / sha, blob[sha])
        wanted -= blob.keys()
    if wanted:
        raise FileNotFoundError(f"bundle {description['hash']}: {len(wanted)} file(s) missing from its blobs")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{description['hash'][:12]}-", dir=target.parent))
    for path, sha in description["files"]:
        dest = staging / path
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(objects / sha, dest)
        except OSError:
            shutil.copyfile(objects / sha, dest)
    try:
        os.replace(staging, target)
    except OSError:  # another actor on this node unpacked it first
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)
