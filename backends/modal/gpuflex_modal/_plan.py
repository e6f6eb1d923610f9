"""What a gpuflex endpoint becomes on Modal, as gpuflex's own record.

Modal's objects do not expose the autoscaler settings they were given (they live in a closure of the loader), so
the backend keeps this plan: ``gpuflex plan`` prints it, the backend builds the Modal class from it, and the tests
compare it with what Modal's client actually sent.
"""

from __future__ import annotations

import hashlib
import math
import re
import sys

import attrs

from gpuflex import EndpointSpec, Price
from gpuflex.errors import ConfigError

from ._config import ModalConfig

__all__ = ["BUNDLE_DIR", "MODAL_GPU_USD_PER_SECOND", "RUNTIME_REQUIREMENTS", "ModalPlan", "class_name",
           "modal_price", "plan_for"]

BUNDLE_DIR = "gpuflex-bundle"  # the bundle's directory in the image, beside gpuflex's own source under /root
# what gpuflex's worker runtime imports besides the standard library
RUNTIME_REQUIREMENTS = ("attrs>=23.1", "cloudpickle>=3.0", "anyio>=4.4", "pluggy>=1.5")
MAX_TIMEOUT = 24 * 3600  # Modal's longest function timeout (and start-up timeout)
# Modal's GPU guide (https://modal.com/docs/guide/gpu): at most 8 GPUs of a type per container, 4 for A10.
MAX_GPUS = {"A10": 4}
MAX_GPUS_DEFAULT = 8
MODAL_GPUS = "T4, L4, A10, L40S, A100-40GB, A100-80GB, RTX-PRO-6000, H100, H200, B200 (and 'any')"
ANY_POOL = ("T4", "L4", "A10")  # what Modal's "any" has meant; priced as the dearest of them
#: Modal's per-second list prices by GPU. The first five: modal.com/pricing as cited in May 2026
#: (reference/peers.md 1.8, review-modal.md 12). The others are estimates that were not checked against Modal's
#: page (marked so in each price's ``source``); `nox -s live` cannot read prices either: check modal.com/pricing.
MODAL_GPU_USD_PER_SECOND = {"H100": 0.001097, "A100-80GB": 0.000694, "L40S": 0.000542, "L4": 0.000222,
                            "T4": 0.000164}
ESTIMATED_GPU_USD_PER_SECOND = {"B200": 0.001736, "H200": 0.001261, "RTX-PRO-6000": 0.000842,
                                "A100-40GB": 0.000583, "A10": 0.000306}
CPU_USD_PER_CORE_SECOND = 0.0000131
MEMORY_USD_PER_GIB_SECOND = 0.00000222  # estimate, unchecked
MODAL_DEFAULT_CPU, MODAL_DEFAULT_MEMORY_MIB = 0.125, 128  # what Modal reserves when none is asked for


@attrs.frozen(kw_only=True)
class ModalPlan:
    """The Modal class one endpoint becomes: every setting passed to ``app.cls`` and the image."""

    endpoint: str
    class_name: str
    gpu: str | list[str] | None
    cpu: float | None
    memory: int | None
    min_containers: int
    max_containers: int
    scaledown_window: int
    timeout: int
    startup_timeout: int
    max_inputs: int
    python_version: str
    apt_packages: tuple[str, ...]
    pip_packages: tuple[str, ...]
    secrets: tuple[str, ...]
    env: dict[str, str]
    is_class: bool
    notes: tuple[str, ...] = ()


def class_name(endpoint: str) -> str:
    """The Modal class name of an endpoint: ASCII letters, digits and ``_`` only; a name that had to change (a
    ``-``, a non-ASCII letter) gets a short hash of the original, so ``embed-v1`` and ``embed_v1`` stay apart."""
    cleaned = re.sub(r"[^A-Za-z0-9_]", "_", endpoint)
    digest = hashlib.sha256(endpoint.encode()).hexdigest()[:8]
    name = f"gpuflex_{cleaned}" if cleaned == endpoint else f"gpuflex_{cleaned}_{digest}"
    return name if len(name) <= 64 else f"{name[:55]}_{digest}"


def _gpu(spec: EndpointSpec) -> str | list[str] | None:
    if spec.gpu is None:
        return None
    count = spec.gpu.count
    suffix = f":{count}" if count > 1 else ""
    if spec.gpu.is_any:
        return f"any{suffix}"
    names = list(dict.fromkeys(m.modal_name for m in spec.gpu.models if m.modal_name))
    if not names:
        offered = ", ".join(m.name for m in spec.gpu.models)
        raise ConfigError(f"endpoint {spec.name!r} asks for {offered}, which Modal does not offer; Modal has "
                          f"{MODAL_GPUS}")
    for name in names:
        most = MAX_GPUS.get(name, MAX_GPUS_DEFAULT)
        if count > most:
            raise ConfigError(f"endpoint {spec.name!r} asks for {count} x {name}; Modal puts at most {most} {name} "
                              "in one container")
    choices = [f"{name}{suffix}" for name in names]
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
    startup = math.ceil(config.startup_timeout)
    if startup > MAX_TIMEOUT:
        raise ConfigError(f"startup_timeout={config.startup_timeout} s is over Modal's longest (24 h)")
    memory = None if spec.resources.memory is None else math.ceil(spec.resources.memory)
    python = config.python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
    return ModalPlan(
        endpoint=spec.name,
        class_name=class_name(spec.name),
        gpu=_gpu(spec),
        cpu=spec.resources.cpu,
        memory=memory,
        min_containers=spec.min_workers,
        max_containers=spec.max_workers,
        scaledown_window=window,
        timeout=timeout,
        startup_timeout=startup,
        max_inputs=spec.calls_per_worker,
        python_version=python,
        apt_packages=tuple(spec.system_dependencies),
        pip_packages=(*RUNTIME_REQUIREMENTS, *spec.dependencies),
        secrets=tuple(spec.secrets),
        env=dict(spec.env),
        is_class=spec.kind.value == "class",
        notes=tuple(notes),
    )


def _gpu_price(name: str) -> tuple[float, bool] | None:
    """(USD per second, checked against Modal's page) for one GPU name."""
    if name in MODAL_GPU_USD_PER_SECOND:
        return MODAL_GPU_USD_PER_SECOND[name], True
    if name in ESTIMATED_GPU_USD_PER_SECOND:
        return ESTIMATED_GPU_USD_PER_SECOND[name], False
    return None


def modal_price(spec: EndpointSpec, plan: ModalPlan) -> Price:
    """Per-second billing of one container: its GPUs at Modal's list price, plus its CPU cores and memory (what
    it reserves, at least Modal's defaults), plus the scaledown_window it stays up idle after each call when no
    warm container is kept."""
    cores = plan.cpu or MODAL_DEFAULT_CPU
    gib = (plan.memory or MODAL_DEFAULT_MEMORY_MIB) / 1024
    per_second = cores * CPU_USD_PER_CORE_SECOND + gib * MEMORY_USD_PER_GIB_SECOND
    parts = [f"{cores:g} core(s)", f"{gib:g} GiB memory (its rate unchecked)"]
    estimated = False
    if spec.gpu is not None:
        names = list(ANY_POOL) if spec.gpu.is_any else [m.modal_name for m in spec.gpu.models if m.modal_name]
        prices = {name: price for name in names if (price := _gpu_price(name)) is not None}
        if not prices:
            return Price(billing="unknown", source=f"no Modal list price known for {', '.join(names)}")
        dearest = max(prices, key=lambda name: prices[name][0])  # an upper bound over the acceptable choices
        per_second += prices[dearest][0] * spec.gpu.count
        parts.insert(0, f"{'any' if spec.gpu.is_any else '|'.join(names)} x{spec.gpu.count} at {dearest}'s price")
        estimated = not prices[dearest][1]
    tail = 0.0 if plan.min_containers else float(plan.scaledown_window)
    source = f"Modal list prices (May 2026) for {', '.join(parts)}"
    if estimated:
        source += "; the GPU's price is an estimate not checked against modal.com/pricing"
    return Price(usd_per_hour=per_second * 3600, billing="per-second", increment=1.0, tail_seconds=tail,
                 idle_usd_per_hour=per_second * 3600, source=source)
