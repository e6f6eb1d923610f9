"""``LocalBackend``: endpoints run in worker processes on this machine, scaled by the core autoscaler."""

from __future__ import annotations

import inspect
import os
import sys
import warnings
from typing import TYPE_CHECKING, Any, ClassVar

import anyio

from gpuflex import Bundle, EndpointSpec, Price
from gpuflex.errors import BackendUnavailable, ConfigError, GpuflexWarning
from gpuflex.progress import status
from gpuflex.worker import OWN_GROUP_ENV, worker_command
from gpuflex.workerpool import Placement, WorkerPoolBackend, WorkerProcess

from ._config import LocalConfig
from ._deps import worker_python
from ._gpus import GpuAllocator, detect_gpus

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["LocalBackend"]

def _warn_at(spec: EndpointSpec, message: str) -> None:
    """Warn pointing at the endpoint's definition in the user's code (deploys run on the gpuflex loop thread,
    so a stack level would point inside gpuflex)."""
    filename, lineno = "<gpuflex>", 0
    try:
        obj: Any = sys.modules[spec.target.module]
        for part in spec.target.qualname.split("."):
            obj = getattr(obj, part)
        raw = getattr(obj, "__gpuflex_raw__", obj)
        filename, lineno = inspect.getsourcefile(raw) or filename, inspect.getsourcelines(raw)[1]
    except (KeyError, AttributeError, OSError, TypeError):
        pass
    warnings.warn_explicit(message, GpuflexWarning, filename, lineno, module=spec.target.module)


class LocalBackend(WorkerPoolBackend):
    """Worker processes on this machine. Each is pinned to its GPUs with CUDA_VISIBLE_DEVICES when CUDA exists;
    without CUDA, GPU endpoints run on CPU with one warning (or fail, with ``strict_gpu=True``)."""

    name: ClassVar[str] = "local"
    aliases: ClassVar[tuple[str, ...]] = ("local-cuda",)
    config_cls: ClassVar[type[Any]] = LocalConfig
    capabilities: ClassVar[Mapping[str, str | None]] = {
        "gpu": None, "streaming": None, "classes": None, "cancel": None, "kill_worker": None, "scaling": None,
    }
    config: LocalConfig

    def __init__(self, config: LocalConfig | None = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.gpus = GpuAllocator(detect_gpus())
        self.shared_memory = self.config.shared_memory
        self.prefetch = self.config.prefetch
        self.reload_in_place = self.config.reload_in_place
        self._warned_cpu: set[str] = set()

    def live_capabilities(self) -> Mapping[str, str | None]:
        caps = dict(self.capabilities)
        if not self.gpus.gpus:
            caps["gpu"] = "no CUDA device on this machine (nvidia-smi found none); GPU endpoints run on CPU"
        return caps

    def place_worker(self, spec: EndpointSpec, worker_id: str) -> Placement | None:
        if spec.gpu is None or not self.gpus.gpus:
            return Placement()
        taken = self.gpus.take(worker_id, spec.gpu.count)
        return None if taken is None else Placement(gpus=taken)

    def release_worker(self, worker_id: str) -> None:
        self.gpus.release(worker_id)

    async def worker_command(self, spec: EndpointSpec, worker: WorkerProcess) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ)
        env.update(spec.env)
        for secret in spec.secrets:
            if secret not in os.environ:
                raise ConfigError(f"endpoint {spec.name!r} needs the secret {secret}, which is not set here")
            env[secret] = os.environ[secret]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(worker.info.gpus)
        if not self.gpus.gpus:
            env.pop("CUDA_VISIBLE_DEVICES")
        if self.config.shared_memory:
            env["GPUFLEX_WORKER_SHM"] = "1"
        # a worker (and what it started) goes with its caller, even one killed with SIGKILL in the middle of a
        # long call: its shared memory, mapped from the caller, goes with it
        env[OWN_GROUP_ENV] = "1"
        python = worker_python(spec, self.config)
        return worker_command(python), env

    def _prepare_python(self, endpoint: EndpointSpec) -> str:
        if not self.config.isolate:
            return worker_python(endpoint, self.config)
        with status(f"gpuflex: preparing the environment for {endpoint.name} ({len(endpoint.dependencies)} deps)"):
            return worker_python(endpoint, self.config)

    async def prepare(self, endpoint: EndpointSpec, bundle: Bundle) -> None:
        if endpoint.gpu is not None and not self.gpus.gpus:
            if self.config.strict_gpu:
                raise BackendUnavailable(
                    f"endpoint {endpoint.name!r} asks for GPU {endpoint.gpu} but this machine has no CUDA device "
                    "(strict_gpu=True); run it on another backend or drop strict_gpu to use the CPU"
                )
            if endpoint.name not in self._warned_cpu:
                self._warned_cpu.add(endpoint.name)
                _warn_at(endpoint, f"no CUDA device here: endpoint {endpoint.name!r} (gpu={endpoint.gpu}) runs on CPU")
        if endpoint.gpu is not None and self.gpus.gpus and endpoint.gpu.count > len(self.gpus.gpus):
            raise BackendUnavailable(f"endpoint {endpoint.name!r} needs {endpoint.gpu.count} GPUs per worker; "
                                     f"this machine has {len(self.gpus.gpus)}")
        missing = [name for name in endpoint.secrets if name not in os.environ]
        if missing:
            raise ConfigError(f"endpoint {endpoint.name!r} needs the secret(s) {', '.join(missing)}, which are not "
                              "set in this environment; export them before calling")
        await anyio.to_thread.run_sync(self._prepare_python, endpoint)  # build an isolated env up front

    def price(self, endpoint: EndpointSpec) -> Price:
        if not self.config.hourly_rate:
            return Price(source="local machine (no hourly_rate set)")
        return Price(usd_per_hour=self.config.hourly_rate, billing="uptime", source="local hourly_rate")
