"""Content-addressed snapshots of a project's source: walk, hash, materialise under the cache dir.

A bundle is ``<cache>/bundles/<hash>/``: hardlinks into ``<cache>/objects/<sha256>`` (read-only; never modify
them in place) plus ``.gpuflex-manifest.json``, written last before the directory is renamed into place.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import time
import typing
from pathlib import Path, PurePosixPath

from ._models import Bundle, BundleFile
from .errors import ConfigError, GpuflexError

if typing.TYPE_CHECKING:
    from collections.abc import Sequence

    from pathspec import GitIgnoreSpec

__all__ = ["build_bundle", "changed_files", "find_project_root", "load_manifest"]

MANIFEST = ".gpuflex-manifest.json"
GENERATED_SUFFIX = ".gpuflex.json"  # files gpuflex writes into a project (a deploy's OpenAPI document): not code
_ROOT_MARKERS = ("pyproject.toml", "gpuflex.toml", "setup.py", ".git")
# Plus *.egg-info and any directory holding pyvenv.cfg:
_SKIP_DIRS = frozenset(".git .hg .svn .venv venv env __pycache__ .mypy_cache .pytest_cache .ruff_cache .nox "
                       ".tox node_modules build dist".split())
_SECRETS = ".env .env.* *.pem *.key id_rsa* id_ed25519* id_ecdsa* *.p12 .netrc .pypirc credentials*.json"
_SECRETS_RE = re.compile("|".join(fnmatch.translate(p) for p in _SECRETS.split()))
_RACY_NS = 2_000_000_000  # a file saved this recently may change again within one mtime tick: do not cache it
_CacheKey = tuple[str, int, int, int]
_HASHES: dict[_CacheKey, str] = {}  # (absolute path, st_mtime_ns, st_size, st_ino) -> sha256


class _Entry(typing.NamedTuple):
    rel: str
    source: Path
    sha256: str
    size: int
    executable: bool


class _SourceChanged(Exception):
    """A file changed between hashing and copying into the object store."""


def find_project_root(start: Path) -> Path:
    """The nearest directory at or above ``start`` with a project marker, else the directory of ``start``."""
    start = start.resolve()
    here = start if start.is_dir() else start.parent
    for candidate in (here, *here.parents):
        if any((candidate / marker).exists() for marker in _ROOT_MARKERS):
            return candidate
    return here


def _gpuflex_version() -> str:
    from ._version import __version__

    return __version__


class _Ignores:
    """Each ``.gitignore`` seen (applying to its own subtree), then ``extra_ignores``, which win."""

    def __init__(self, extra: Sequence[str]) -> None:
        from pathspec import GitIgnoreSpec  # imported on first bundle build, not by every worker at start-up

        self._spec_cls = GitIgnoreSpec
        self.specs: dict[str, GitIgnoreSpec] = {}
        self.extra = GitIgnoreSpec.from_lines(list(extra))

    def add(self, rel_dir: str, gitignore: Path) -> None:
        try:
            self.specs[rel_dir] = self._spec_cls.from_lines(gitignore.read_text(errors="replace").splitlines())
        except OSError:
            pass

    def ignored(self, rel: str, is_dir: bool) -> bool:
        parts = rel.split("/")
        verdict = False
        for depth in range(len(parts)):  # root first, so deeper .gitignore files take precedence
            spec = self.specs.get("/".join(parts[:depth]))
            if spec is not None:
                found = spec.check_file("/".join(parts[depth:]) + ("/" if is_dir else "")).include
                verdict = verdict if found is None else found
        found = self.extra.check_file(rel + ("/" if is_dir else "")).include
        return verdict if found is None else found


def _sha256(path: Path, st: os.stat_result) -> str:
    key = (str(path), st.st_mtime_ns, st.st_size, st.st_ino)
    digest = _HASHES.get(key)
    if digest is None:
        with open(path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if time.time_ns() - st.st_mtime_ns > _RACY_NS:
            if len(_HASHES) > 500_000:
                _HASHES.clear()
            _HASHES[key] = digest
    return digest


def _scan(root: Path, ignores: _Ignores, max_bytes: int, cache: str | None) -> tuple[list[_Entry], list[str]]:
    entries: list[_Entry] = []
    skipped: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        rel_dir = here.relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        prefix = f"{rel_dir}/" if rel_dir else ""
        if ".gitignore" in filenames:
            ignores.add(rel_dir, here / ".gitignore")
        keep = []
        for name in dirnames:
            full, rel = here / name, prefix + name
            if full.is_symlink():
                skipped.append(f"{rel} (symlinked directory)")
            elif not (name in _SKIP_DIRS or name.endswith(".egg-info") or (full / "pyvenv.cfg").exists()
                      or rel == cache or ignores.ignored(rel, is_dir=True)):
                keep.append(name)
        dirnames[:] = keep
        for name in filenames:
            full, rel = here / name, prefix + name
            if name.endswith((".pyc", GENERATED_SUFFIX)) or name == ".git" or rel == MANIFEST:
                continue
            if _SECRETS_RE.match(name):
                skipped.append(f"{rel} (looks like a secret)")
                continue
            if ignores.ignored(rel, is_dir=False):
                continue
            if full.is_symlink():
                target = full.resolve()
                if not target.is_relative_to(root):
                    skipped.append(f"{rel} (symlink to outside the project)")
                    continue
            try:
                st = full.stat()
                if not stat.S_ISREG(st.st_mode):
                    continue
                if st.st_size > max_bytes:
                    skipped.append(f"{rel} ({st.st_size:,} bytes, over the {max_bytes:,}-byte limit)")
                    continue
                digest = _sha256(full, st)
            except OSError as exc:
                skipped.append(f"{rel} (unreadable: {exc.strerror or exc})")
                continue
            entries.append(_Entry(rel, full, digest, st.st_size, bool(st.st_mode & stat.S_IXUSR)))
    entries.sort(key=lambda e: e.rel)
    return entries, sorted(skipped)


def _store_object(entry: _Entry, objects: Path) -> Path:
    """``objects/<sha256>``, copied from the source (checking the content still has that hash) if missing."""
    obj = objects / entry.sha256
    if obj.exists():
        return obj
    fd, tmp = tempfile.mkstemp(dir=objects, prefix=".tmp-")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, open(entry.source, "rb") as src:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != entry.sha256:
            raise _SourceChanged(entry.rel)
        os.chmod(tmp, 0o444)
        os.replace(tmp, obj)
    except FileNotFoundError as exc:
        raise _SourceChanged(entry.rel) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return obj


def _place(obj: Path, dest: Path, executable: bool) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not executable:  # an object has one mode, so executables get their own copy
        try:
            os.link(obj, dest)
            return
        except OSError:
            pass
    shutil.copyfile(obj, dest)
    os.chmod(dest, 0o555 if executable else 0o444)


def _materialise(bundle: Bundle, entries: Sequence[_Entry], cache_dir: Path) -> None:
    final = bundle.root
    if (final / MANIFEST).is_file():
        return  # complete already: reuse it as it is
    objects, bundles = cache_dir / "objects", final.parent
    for folder in (objects, bundles):
        folder.mkdir(parents=True, exist_ok=True)
    if final.exists():  # left incomplete by something other than this module (it renames whole directories)
        shutil.rmtree(final, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=bundles, prefix=f".{bundle.hash[:16]}-"))
    try:
        for entry in entries:
            _place(_store_object(entry, objects), tmp / entry.rel, entry.executable)
        (tmp / MANIFEST).write_text(json.dumps(bundle.manifest(), indent=1))
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / MANIFEST).is_file():  # not a concurrent builder winning the race: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def build_bundle(root: Path, *, import_paths: Sequence[str] = (".",), extra_ignores: Sequence[str] = (),
                 max_file_bytes: int = 10 * 2**20, cache_dir: Path | None = None) -> Bundle:
    """Snapshot ``root`` into the cache and return its :class:`Bundle`, reusing an identical snapshot.

    ``cache_dir`` defaults to ``$GPUFLEX_CACHE_DIR`` or ``~/.cache/gpuflex``. The hash covers each file's
    path, sha256 and executable bit, plus ``import_paths``.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise ConfigError(f"cannot bundle {root}: not a directory")
    for path in import_paths:
        pure = PurePosixPath(path)
        if pure.is_absolute() or ".." in pure.parts:
            raise ConfigError(f"import path {path!r} must be relative and inside the project root")
    env = os.environ.get("GPUFLEX_CACHE_DIR")
    cache_dir = Path(cache_dir or env or Path.home() / ".cache" / "gpuflex").expanduser().resolve()
    cache_rel = cache_dir.relative_to(root).as_posix() if cache_dir.is_relative_to(root) else None
    for _ in range(3):
        entries, skipped = _scan(root, _Ignores(extra_ignores), max_file_bytes, cache_rel)
        listing = [[e.rel, e.sha256, e.executable] for e in entries]
        data = {"v": 1, "import_paths": list(import_paths), "files": listing}
        digest = hashlib.sha256(json.dumps(data, separators=(",", ":")).encode()).hexdigest()
        bundle = Bundle(
            hash=digest,
            root=cache_dir / "bundles" / digest,
            files=tuple(BundleFile(path=e.rel, sha256=e.sha256, size=e.size) for e in entries),
            import_paths=tuple(import_paths),
            python=f"{sys.version_info.major}.{sys.version_info.minor}",
            gpuflex=_gpuflex_version(),
            skipped=tuple(skipped),
        )
        try:
            _materialise(bundle, entries, cache_dir)
        except _SourceChanged:
            continue  # a file was saved mid-build: scan again
        return bundle
    raise GpuflexError(f"files under {root} kept changing while the bundle was being built; try again")


def load_manifest(bundle_dir: Path) -> dict[str, object]:
    """The manifest of a materialised bundle directory."""
    try:
        data = json.loads((Path(bundle_dir) / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{bundle_dir} is not a complete gpuflex bundle: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{bundle_dir}/{MANIFEST} does not hold a JSON object")
    return data


def changed_files(old: Bundle | None, new: Bundle) -> list[str]:
    """Paths added, changed or removed from ``old`` to ``new`` (all of ``new``'s when ``old`` is None)."""
    before = {f.path: f.sha256 for f in old.files} if old is not None else {}
    after = {f.path: f.sha256 for f in new.files}
    return sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))
