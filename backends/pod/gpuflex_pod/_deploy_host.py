"""What ``gpuflex deploy`` puts on one pod host: the code, the service's own code (this package and the local
backend), an interpreter that can run gpuflex's dev server, and the service itself (see ``_remote_service``)."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import ipaddress
import json
import re
import tempfile
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuflex.errors import ConfigError
from gpuflex.worker import PYTHON_VERSION

from ._remote import RUNTIME_PACKAGES, TreeFile, runtime_tree

if TYPE_CHECKING:
    from ._remote import RemoteHost

__all__ = ["is_loopback", "service_python", "service_tree", "start_service"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _package_files(name: str, prefix: str) -> list[TreeFile]:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"deploying on pod hosts runs gpuflex's local backend there: install {prefix} "
                          f"(pip install {prefix}) on this machine")
    package = Path(next(iter(spec.submodule_search_locations)))
    files = []
    for path in sorted(package.rglob("*")):
        if "__pycache__" in path.parts or not path.is_file() or path.suffix not in (".py", ".typed"):
            continue
        files.append(TreeFile(f"{name}/{path.relative_to(package).as_posix()}",
                              hashlib.sha256(path.read_bytes()).hexdigest(), path))
    return files


@functools.lru_cache(maxsize=1)
def service_tree() -> tuple[str, tuple[TreeFile, ...]]:
    """This package and the local backend's, with the local backend's entry point (a ``dist-info``), so gpuflex
    on the host finds it as an installed plugin: pushed to each host next to gpuflex's runtime."""
    files = _package_files("gpuflex_pod", "gpuflex-pod") + _package_files("gpuflex_local", "gpuflex-local")
    try:
        version = metadata.version("gpuflex-local")
    except metadata.PackageNotFoundError:
        version = "0"
    generated = Path(tempfile.mkdtemp(prefix="gpuflex-pod-service-"))
    info = f"gpuflex_local-{version}.dist-info"
    texts = {f"{info}/METADATA": f"Metadata-Version: 2.1\nName: gpuflex-local\nVersion: {version}\n",
             f"{info}/entry_points.txt": "[gpuflex]\nlocal = gpuflex_local.plugin\n"}
    for rel, text in texts.items():
        path = generated / rel.replace("/", "_")
        path.write_text(text)
        files.append(TreeFile(rel, hashlib.sha256(text.encode()).hexdigest(), path))
    combined = hashlib.sha256("\n".join(f"{f.path} {f.sha256}" for f in files).encode()).hexdigest()[:16]
    return f"service/{combined}", tuple(files)


def service_requirements() -> dict[str, str]:
    """What the service imports (gpuflex's own dependencies; import name -> requirement), pydantic pinned to this
    machine's version so the host validates with the schema ``gpuflex openapi`` writes here."""
    import pydantic

    found = dict(RUNTIME_PACKAGES)
    for requirement in metadata.requires("gpuflex") or []:
        if "extra ==" in requirement or ";" in requirement:
            continue
        name = re.split(r"[<>=!~ \[]", requirement, maxsplit=1)[0]
        found[name.lower().replace("-", "_")] = requirement
    found["pydantic"] = f"pydantic=={pydantic.VERSION}"
    return found


async def service_python(host: RemoteHost, dependencies: tuple[str, ...]) -> str:
    """An interpreter on ``host`` that runs the service and the endpoint's workers: the chosen Python itself when
    it imports everything and the endpoint asks for nothing more, else an environment made once with uv."""
    interpreter = await host.ensure_python(PYTHON_VERSION)
    wanted = service_requirements()
    if not dependencies:
        answer = await host.call("importable", host.root, str(interpreter["executable"]), ",".join(wanted))
        facts = answer.get("facts") or {}
        if all((facts.get("importable") or {}).get(name) for name in wanted):
            return str(interpreter["executable"])
    requirements = sorted({*wanted.values(), *dependencies})
    key = "svc-" + hashlib.sha256(json.dumps([interpreter["executable"], requirements]).encode()).hexdigest()[:16]
    answer = await host.call("env", host.root, str(interpreter["executable"]), key,
                             payload=json.dumps(requirements).encode() + b"\n", timeout=1800)
    return str(answer["python"])


async def start_service(host: RemoteHost, env: str, name: str, config: dict[str, Any], versions: dict[str, Any],
                        secrets: dict[str, str], python: str, wait: float) -> dict[str, Any]:
    """(Re)start the endpoint's service on ``host`` with ``config`` under ``python`` (the code is there already);
    answer its pid, address, port and token file."""
    tree, files = runtime_tree()
    runtime = (await host.push(tree, files)).tree
    service = (await host.push(*service_tree())).tree
    config = {**config, "python": python, "pythonpath": [runtime, service], "name": name}
    request = {"config": config, "versions": versions, "secrets": secrets, "timeout": wait}
    return await host.call("svc-start", host.root, env, name, payload=json.dumps(request).encode() + b"\n",
                           timeout=wait + 60)
