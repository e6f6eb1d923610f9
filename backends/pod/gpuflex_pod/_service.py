"""The long-lived service ``gpuflex deploy --backend pod`` starts on each host: ``python -m gpuflex_pod._service DIR``.

It is gpuflex's own dev server (:func:`gpuflex.server.create_app`: JSON calls validated against the function's type
hints, generators streamed, binary values as base64, never pickle) serving one deployed endpoint, whose calls run
on the host's local backend (worker processes there). The host agent starts it in a session of its own (it
outlives the SSH session that started it) from the endpoint's directory (see ``_remote_service``), whose
``config.json`` says what to serve: the code tree, the app file, the settings recorded with the version, the address.

Bound to anything but loopback it requires ``Authorization: Bearer <token>`` (the ``token`` file, mode 0600).
It writes ``service.json`` (pid, address, port) once it listens; SIGTERM stops it and its workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["OVERRIDES", "main"]

# Settings recorded with a version that the service applies to the endpoint as the app file defines it
OVERRIDES = ("min_workers", "max_workers", "idle_timeout", "timeout", "retries", "concurrency", "max_batch_size",
             "batch_wait_ms", "env")


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; another free port when that one is taken (the next deploy records it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for candidate in (port, 0) if port else (0,):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, candidate))
        except OSError:
            sock.close()
            if candidate == 0:
                raise
            continue
        sock.listen(128)
        return sock
    raise OSError(f"cannot listen on {host}")


def _app_file(directory: Path, config: dict[str, Any]) -> Path:
    """The file the dev server loads: the app file in the code tree, or (an endpoint defined in a module) a small
    file that imports it."""
    if config.get("app_file"):
        return Path(config["code"]) / str(config["app_file"])
    shim = directory / "endpoint_app.py"
    module, qualname = config["module"], config["qualname"].split(".")[0]
    shim.write_text(f"from {module} import {qualname}  # noqa: F401 - the deployed endpoint\n")
    return shim


def _restrict(asgi: Any, name: str, settings: dict[str, Any]) -> None:
    """Serve ``name`` only (the app file may define others, deployed as services of their own), with the
    recorded settings, on the host's local backend."""
    import attrs

    state = asgi.state.gpuflex
    endpoint = state.loaded.endpoints.get(name)
    if endpoint is None:
        raise SystemExit(f"gpuflex: the deployed code defines no endpoint {name!r}")
    changes = {key: settings[key] for key in OVERRIDES if key in settings}
    if "env" in changes:
        changes["env"] = dict(changes["env"])
    endpoint.spec = attrs.evolve(endpoint.spec, backend="local", **changes)
    state.loaded = attrs.evolve(state.loaded, endpoints={name: endpoint})
    others = {f"{kind}_{r.label}" for r in state.routes if r.endpoint is not endpoint for kind in ("call", "submit")}
    state.routes = [r for r in state.routes if r.endpoint is endpoint]
    asgi.router.routes = [r for r in asgi.router.routes if getattr(r, "name", None) not in others]
    asgi.openapi_schema = None


def main(directory: Path) -> None:
    import uvicorn

    import gpuflex
    from gpuflex.server import create_app

    config = json.loads((directory / "config.json").read_text())
    secrets = directory / "secrets.json"
    if secrets.exists():
        os.environ.update(json.loads(secrets.read_text()))  # the endpoint's secrets, for its workers
    token_path = directory / "token"
    token = token_path.read_text().strip() if config.get("token") else None
    if config.get("token") and not token:
        raise SystemExit("gpuflex: this service binds a public address and needs its token file")
    os.environ["GPUFLEX_BACKEND"] = "local"
    asgi = create_app(_app_file(directory, config), token=token, backend="local")
    _restrict(asgi, config["name"], config.get("settings") or {})
    sock = _listen(config["bind"], int(config.get("port") or 0))
    port = sock.getsockname()[1]
    record = {"pid": os.getpid(), "bind": config["bind"], "port": port, "bundle": config["bundle"],
              "started_at": time.time()}
    tmp = directory / f".service-{os.getpid()}.json"
    tmp.write_text(json.dumps(record))
    tmp.replace(directory / "service.json")
    print(f"gpuflex: serving {config['name']} (code {config['bundle'][:12]}) on {config['bind']}:{port}",
          flush=True)
    server = uvicorn.Server(uvicorn.Config(asgi, log_level="info", lifespan="on", timeout_graceful_shutdown=5))
    try:
        server.run(sockets=[sock])
    finally:
        gpuflex.shutdown()
        with contextlib.suppress(OSError):
            current = json.loads((directory / "service.json").read_text())
            if current.get("pid") == os.getpid():
                (directory / "service.json").unlink()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
