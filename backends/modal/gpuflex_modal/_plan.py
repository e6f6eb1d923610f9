"""What a gpuflex endpoint becomes on Modal, as gpuflex's own record.

Modal's objects do not expose the autoscaler settings they were given (they live in a closure of the loader), so
the backend keeps this plan: ``gpuflex plan`` prints it, the backend builds the Modal class from it, and the tests
compare it with what Modal's client actually sent.
"""

from __future__ import annotations

import math
import sys

import attrs

from gpuflex import EndpointSpec, Price
from gpuflex.errors import ConfigError

from ._config import ModalConfig

__all__ = ["BUNDLE_PATH", "MODAL_GPU_USD_PER_SECOND", "RUNTIME_REQUIREMENTS", "ModalPlan", "modal_price", "plan_for"]

BUNDLE_PATH = "/root/gpuflex-bundle"  # where the bundle lies in the container
# what gpuflex's worker runtime imports besides the standard library
RUNTIME_REQUIREMENTS = ("attrs>=23.1", "cloudpickle>=3.0", "anyio>=4.4", "pluggy>=1.5")
MAX_TIMEOUT = 24 * 3600  # Modal's longest function timeout
#: Modal's per-second list prices by GPU (May 2026, modal.com/pricing as cited in reference/peers.md 1.8)
MODAL_GPU_USD_PER_SECOND = {"H100": 0.001097, "A100-80GB": 0.000694, "L40S": 0.000542, "L4": 0.000222,
                            "T4": 0.000164}
CPU_USD_PER_CORE_SECOND = 0.0000131


@attrs.frozen(kw_only=True)
class ModalPlan:
    """The Modal class one endpoint becomes: every setting passed to ``app.cls`` and the image."""

    endpoint: str
    class_name: str
    gpu: str | list[str] | None
    min_containers: int
    max_containers: int
    scaledown_window: int
    timeout: int
    retries: int
    max_inputs: int
    python_version: str
    pip_packages: tuple[str, ...]
    secrets: tuple[str, ...]
    env: dict[str, str]
    is_class: bool
    notes: tuple[str, ...] = ()


def _class_name(endpoint: str) -> str:
    cleaned = "".join(ch if ch.isalnum() else "_" for ch in endpoint)
    return f"gpuflex_{cleaned}"


def _gpu(spec: EndpointSpec) -> str | list[str] | None:
    if spec.gpu is None:
        return None
    suffix = f":{spec.gpu.count}" if spec.gpu.count > 1 else ""
    if spec.gpu.is_any:
        return f"any{suffix}"
    names = [m.modal_name for m in spec.gpu.models if m.modal_name]
    if not names:
        offered = ", ".join(m.name for m in spec.gpu.models)
        raise ConfigError(f"endpoint {spec.name!r} asks for {offered}, which Modal does not offer; Modal has "
                          "T4, L4, A10, A100-40GB, A100-80GB, L40S, H100, H200, B200 (and 'any')")
    choices = [f"{name}{suffix}" for name in dict.fromkeys(names)]
    return choices[0] if len(choices) == 1 else choices


def plan_for(spec: EndpointSpec, config: ModalConfig | None = None) -> ModalPlan:
    """Translate one endpoint; raise ``ConfigError`` for what Modal cannot take."""
    config = config or ModalConfig()
    notes = []
    window = math.ceil(spec.idle_timeout)
    if window > 3600:
        raise ConfigError(f"endpoint {spec.name!r}: idle_timeout={spec.idle_timeout} s is over Modal's longest "
                          "scaledown_window (3600 s)")
    if window < 2:
        notes.append(f"idle_timeout {spec.idle_timeout} s raised to Modal's shortest scaledown_window, 2 s")
        window = 2
    if spec.timeout is None:
        timeout = MAX_TIMEOUT
        notes.append("no timeout: Modal's longest, 24 h")
    else:
        timeout = max(1, math.ceil(spec.timeout))
        if timeout > MAX_TIMEOUT:
            raise ConfigError(f"endpoint {spec.name!r}: timeout={spec.timeout} s is over Modal's longest (24 h)")
    python = config.python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    return ModalPlan(
        endpoint=spec.name,
        class_name=_class_name(spec.name),
        gpu=_gpu(spec),
        min_containers=spec.min_workers,
        max_containers=spec.max_workers,
        scaledown_window=window,
        timeout=timeout,
        retries=spec.retries,
        max_inputs=spec.concurrency,
        python_version=python,
        pip_packages=(*RUNTIME_REQUIREMENTS, *spec.dependencies),
        secrets=tuple(spec.secrets),
        env=dict(spec.env),
        is_class=spec.kind.value == "class",
        notes=tuple(notes),
    )


def modal_price(spec: EndpointSpec, plan: ModalPlan) -> Price:
    """Per-second billing of one container: its GPUs at Modal's list price (or its CPU core), plus the
    scaledown_window it stays up idle after each call when no warm container is kept."""
    if spec.gpu is None:
        per_second = CPU_USD_PER_CORE_SECOND * (spec.resources.cpu or 1.0)
        source = "Modal CPU price per core-second (May 2026)"
    else:
        names = [m.modal_name for m in spec.gpu.models if m.modal_name] or ["H100"]
        known = [MODAL_GPU_USD_PER_SECOND[n] for n in names if n in MODAL_GPU_USD_PER_SECOND]
        if not known:
            return Price(source=f"no Modal list price known for {', '.join(names)}")
        per_second = max(known) * spec.gpu.count  # the dearest acceptable choice: an upper bound
        source = f"Modal list price for {'|'.join(names)} x{spec.gpu.count} (May 2026; dearest choice)"
    tail = 0.0 if plan.min_containers else float(plan.scaledown_window)
    return Price(usd_per_hour=per_second * 3600, billing="per-second", increment=1.0, tail_seconds=tail,
                 idle_usd_per_hour=per_second * 3600, source=source)
