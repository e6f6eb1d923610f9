from __future__ import annotations

import hashlib
import os
import stat
import threading
from pathlib import Path

import pytest

from gpuflex import _bundle
from gpuflex._bundle import MANIFEST, build_bundle, changed_files, find_project_root, load_manifest
from gpuflex.errors import ConfigError


def make(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def paths(bundle) -> set[str]:
    return {f.path for f in bundle.files}


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("GPUFLEX_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def proj(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    return root


def test_gitignore_root_and_nested(proj: Path, cache: Path) -> None:
    make(proj, {
        ".gitignore": "*.log\nout/\n/top_only.txt\n",
        "main.py": "",
        "x.log": "",
        "top_only.txt": "",
        "out/gen.py": "",
        "pkg/top_only.txt": "",
        "pkg/.gitignore": "local.txt\n!keep.log\n",
        "pkg/keep.log": "",
        "pkg/other.log": "",
        "pkg/local.txt": "",
        "pkg/deep/local.txt": "",
        "local.txt": "",
        "lib/out": "a file, not a dir, so out/ does not match",
    })
    bundle = build_bundle(proj)
    assert paths(bundle) == {
        ".gitignore", "main.py", "pkg/top_only.txt", "pkg/.gitignore", "pkg/keep.log", "local.txt", "lib/out",
    }
    assert bundle.root.parent == cache.resolve() / "bundles"
    assert bundle.skipped == ()


def test_extra_ignores_win_over_gitignore(proj: Path, cache: Path) -> None:
    make(proj, {".gitignore": "!data/\n", "a.py": "", "data/big.csv": "", "notes.md": ""})
    bundle = build_bundle(proj, extra_ignores=["data/", "*.md"])
    assert paths(bundle) == {".gitignore", "a.py"}


def test_secrets_skipped_and_listed(proj: Path, cache: Path) -> None:
    secrets = [".env", ".env.local", "certs/server.pem", "certs/tls.key", "id_rsa", "id_ed25519.pub",
               "id_ecdsa", "store.p12", ".netrc", ".pypirc", "conf/credentials-prod.json"]
    normal = {"app.py": "", "envs.py": "", "environment.yml": "", "keys.py": ""}
    make(proj, {**normal, **dict.fromkeys(secrets, "s")})
    bundle = build_bundle(proj)
    assert paths(bundle) == {"app.py", "envs.py", "environment.yml", "keys.py"}
    assert sorted(bundle.skipped) == sorted(f"{s} (looks like a secret)" for s in secrets)


def test_size_cap(proj: Path, cache: Path) -> None:
    make(proj, {"ok.bin": b"x" * 100, "big/huge.bin": b"x" * 101})
    bundle = build_bundle(proj, max_file_bytes=100)
    assert paths(bundle) == {"ok.bin"}
    assert len(bundle.skipped) == 1
    assert bundle.skipped[0].startswith("big/huge.bin (101 bytes")


def test_builtin_skips_and_venv_detection(proj: Path, cache: Path) -> None:
    make(proj, {
        "app.py": "",
        "myenv/pyvenv.cfg": "home = /usr/bin",
        "myenv/lib/site.py": "",
        ".venv/x.py": "", "venv/x.py": "", "env/x.py": "",
        "pkg/__pycache__/m.cpython-311.pyc": "", "pkg/m.pyc": "", "pkg/m.py": "",
        ".git/HEAD": "", ".hg/x": "", ".svn/x": "",
        ".mypy_cache/x": "", ".pytest_cache/x": "", ".ruff_cache/x": "", ".nox/x": "", ".tox/x": "",
        "node_modules/x.js": "", "proj.egg-info/PKG-INFO": "", "build/lib/x.py": "", "dist/x.whl": "",
        "environments/x.py": "",
    })
    bundle = build_bundle(proj)
    assert paths(bundle) == {"app.py", "pkg/m.py", "environments/x.py"}


def test_hash_stable_across_builds_and_creation_order(tmp_path: Path, cache: Path) -> None:
    files = {f"pkg/m{i}.py": f"x = {i}\n" for i in range(20)} | {"README": "hi", "a/b/c.txt": "c"}
    one = make(tmp_path / "one", files)
    two = make(tmp_path / "two", dict(reversed(list(files.items()))))
    first, again, other = build_bundle(one), build_bundle(one), build_bundle(two, cache_dir=tmp_path / "c2")
    assert first.hash == again.hash == other.hash
    assert first.files == other.files
    assert [f.path for f in first.files] == sorted(files)


def test_hash_changes_with_one_byte_mode_and_import_paths(proj: Path, cache: Path) -> None:
    make(proj, {"m.py": "x = 1\n", "run.sh": "echo\n"})
    base = build_bundle(proj)
    (proj / "m.py").write_text("x = 2\n")  # same size
    changed = build_bundle(proj)
    assert changed.hash != base.hash
    assert changed_files(base, changed) == ["m.py"]
    (proj / "run.sh").chmod(0o755)
    executable = build_bundle(proj)
    assert executable.hash != changed.hash
    assert os.stat(executable.root / "run.sh").st_mode & stat.S_IXUSR
    assert build_bundle(proj, import_paths=["src"]).hash != executable.hash
    with pytest.raises(ConfigError):
        build_bundle(proj, import_paths=["../elsewhere"])


def test_existing_bundle_reused_without_rewrite(proj: Path, cache: Path) -> None:
    make(proj, {"m.py": "x = 1\n", "sub/n.py": "y = 2\n"})
    first = build_bundle(proj)
    before = {p: os.stat(p) for p in [first.root / "m.py", first.root / "sub/n.py", first.root / MANIFEST]}
    second = build_bundle(proj)
    assert second.root == first.root
    for p, st in before.items():
        now = os.stat(p)
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns), p
    assert [p.name for p in (cache / "bundles").iterdir()] == [first.hash]  # no temp dirs left over


def test_incomplete_bundle_dir_is_rebuilt(proj: Path, cache: Path) -> None:
    make(proj, {"m.py": "x = 1\n"})
    bundle = build_bundle(proj)
    (bundle.root / MANIFEST).unlink()
    (bundle.root / "stray.txt").write_text("junk")
    again = build_bundle(proj)
    assert load_manifest(again.root) == bundle.manifest()
    assert not (again.root / "stray.txt").exists()


def test_materialised_tree_matches_manifest(proj: Path, cache: Path) -> None:
    make(proj, {"a.py": "a", "pkg/__init__.py": "", "pkg/data/blob.bin": bytes(range(256)), "dup.py": "a"})
    bundle = build_bundle(proj)
    manifest = load_manifest(bundle.root)
    assert manifest == bundle.manifest()
    listed = {f["path"]: f["sha256"] for f in manifest["files"]}  # type: ignore[attr-defined, index]
    on_disk = {
        p.relative_to(bundle.root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in bundle.root.rglob("*") if p.is_file()
    }
    assert on_disk.pop(MANIFEST)
    assert on_disk == listed
    blob = bundle.root / "pkg/data/blob.bin"
    assert os.stat(blob).st_mode & 0o222 == 0  # read-only: it is a hardlink of the shared object
    assert os.path.samefile(blob, cache / "objects" / hashlib.sha256(bytes(range(256))).hexdigest())
    assert os.path.samefile(bundle.root / "a.py", bundle.root / "dup.py")


def test_changed_files() -> None:
    from gpuflex._models import Bundle, BundleFile

    def bundle(**files: str) -> Bundle:
        return Bundle(hash="h", root=Path("/"), files=tuple(BundleFile(path=p, sha256=s, size=1)
                                                            for p, s in files.items()))

    old = bundle(a="1", b="2", c="3")
    new = bundle(a="1", b="9", d="4")
    assert changed_files(old, new) == ["b", "c", "d"]
    assert changed_files(None, new) == ["a", "b", "d"]
    assert changed_files(new, new) == []


def test_find_project_root(tmp_path: Path) -> None:
    make(tmp_path, {"proj/pyproject.toml": "", "proj/src/pkg/mod.py": "", "loose/script.py": "",
                    "other/gpuflex.toml": "", "other/a/b/c.py": ""})
    (tmp_path / "repo/.git").mkdir(parents=True)
    (tmp_path / "repo/x").mkdir()
    assert find_project_root(tmp_path / "proj/src/pkg/mod.py") == (tmp_path / "proj").resolve()
    assert find_project_root(tmp_path / "proj/src") == (tmp_path / "proj").resolve()
    assert find_project_root(tmp_path / "other/a/b/c.py") == (tmp_path / "other").resolve()
    assert find_project_root(tmp_path / "repo/x") == (tmp_path / "repo").resolve()
    if not any((p / m).exists() for p in tmp_path.resolve().parents for m in ("pyproject.toml", ".git")):
        assert find_project_root(tmp_path / "loose/script.py") == (tmp_path / "loose").resolve()


def test_symlinks(tmp_path: Path, proj: Path, cache: Path) -> None:
    make(tmp_path, {"outside/secret.txt": "outside", "outside/dir/f.py": ""})
    make(proj, {"real.py": "inside"})
    (proj / "link_out.txt").symlink_to(tmp_path / "outside/secret.txt")
    (proj / "link_in.py").symlink_to(proj / "real.py")
    (proj / "linked_dir").symlink_to(tmp_path / "outside/dir", target_is_directory=True)
    bundle = build_bundle(proj)
    assert paths(bundle) == {"real.py", "link_in.py"}
    assert (bundle.root / "link_in.py").read_text() == "inside"
    assert not (bundle.root / "link_in.py").is_symlink()
    assert "link_out.txt (symlink to outside the project)" in bundle.skipped
    assert "linked_dir (symlinked directory)" in bundle.skipped


def test_cache_dir_inside_project_is_not_bundled(proj: Path) -> None:
    make(proj, {"m.py": ""})
    first = build_bundle(proj, cache_dir=proj / ".cache")
    second = build_bundle(proj, cache_dir=proj / ".cache")
    assert paths(second) == {"m.py"}
    assert second.hash == first.hash


def test_in_process_hash_cache(proj: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make(proj, {"old.py": "o", "new.py": "n"})
    os.utime(proj / "old.py", ns=(10**18, 10**18))  # long ago: safe to cache
    build_bundle(proj)
    hashed: list[str] = []
    real = hashlib.file_digest
    monkeypatch.setattr(hashlib, "file_digest", lambda f, d: (hashed.append(f.name), real(f, d))[1])
    build_bundle(proj)
    assert hashed == [str(proj.resolve() / "new.py")]  # just saved: may change again within its mtime tick


def test_file_saved_mid_build_rescans(proj: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make(proj, {"m.py": "x = 1\n"})
    real = _bundle._store_object
    calls = []

    def saving_while_copying(entry, objects):
        calls.append(entry.rel)
        if len(calls) == 1:
            (proj / "m.py").write_text("x = 22\n")
        return real(entry, objects)

    monkeypatch.setattr(_bundle, "_store_object", saving_while_copying)
    bundle = build_bundle(proj)
    assert calls == ["m.py", "m.py"]
    assert (bundle.root / "m.py").read_text() == "x = 22\n"
    assert bundle.files[0].sha256 == hashlib.sha256(b"x = 22\n").hexdigest()


def test_concurrent_builders(proj: Path, cache: Path) -> None:
    make(proj, {f"m{i}.py": str(i) for i in range(50)})
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(build_bundle(proj).hash)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and len(set(results)) == 1
    assert [p.name for p in (cache / "bundles").iterdir()] == results[:1]
    assert len(load_manifest(cache / "bundles" / results[0])["files"]) == 50  # type: ignore[arg-type]


def test_load_manifest_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a complete gpuflex bundle"):
        load_manifest(tmp_path)
