"""What an endpoint asks of the cluster: Ray resources for its actors, and the GPU model it is priced as.

GPU models map to Ray's accelerator types, which Ray derives from each node's ``nvidia-smi`` name (``"NVIDIA A100-
SXM4-80GB"`` -> ``"A100"``); :func:`ray_types` applies the same rule to the catalog's names and adds the spellings
clouds use (``A10G``, ``A100-80G``). Of an endpoint's choices, the first the cluster has wins; Ray takes one type
per actor.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import attrs

from gpuflex.gpus import CATALOG

if TYPE_CHECKING:
    from gpuflex import EndpointSpec

__all__ = ["ClusterFacts", "Plan", "plan_endpoint", "ray_types"]

# Ray's own rule (ray/_private/accelerators/nvidia_gpu.py): leading all-caps tokens up to the first with a digit
_NVIDIA_NAME = re.compile(r"\w+\s+((?:[A-Z]+\s+)*[A-Z0-9]*\d[A-Z0-9]*)")
_EXTRA_TYPES = {"A10": ("A10G",), "A100-40GB": ("A100-40G",), "A100-80GB": ("A100-80G",)}


def ray_types(model: str) -> tuple[str, ...]:
    """The accelerator types a node with GPUs of ``model`` (a portable name) may report to Ray."""
    name = CATALOG[model].runpod_id  # the name nvidia-smi reports
    match = _NVIDIA_NAME.match(name)
    detected = match.group(1).replace(" ", "-") if match else re.sub(r"^NVIDIA\s+", "", name).replace(" ", "-")
    return (*_EXTRA_TYPES.get(model, ()), detected)


@attrs.frozen
class ClusterFacts:
    """What the cluster has now: total GPUs, the accelerator types of its nodes, whether gpuflex started it."""

    gpus: float
    types: frozenset[str]
    started_here: bool
    nodes: tuple[dict[str, float], ...] = ()

    @classmethod
    def read(cls, ray: Any, *, started_here: bool) -> ClusterFacts:
        """Ask the connected cluster (blocking: call from a thread)."""
        total = ray.cluster_resources()
        nodes = tuple(dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive"))
        types = frozenset(key.split(":", 1)[1] for key in total if key.startswith("accelerator_type:"))
        return cls(float(total.get("GPU", 0.0)), types, started_here, nodes)


@attrs.frozen
class Plan:
    """One endpoint on this cluster: the actor's resource options, the GPU model it is priced as (``None``: no
    GPU, or any GPU), GPUs per actor, and a warning to show once (a CPU fallback, a GPU to wait for)."""

    options: dict[str, Any]
    model: str | None = None
    gpus: int = 0
    warning: str | None = None


def _fits(node: dict[str, float], options: dict[str, Any]) -> bool:
    needs = {"CPU": options.get("num_cpus") or 0, "GPU": options.get("num_gpus") or 0,
             "memory": options.get("memory") or 0}
    if options.get("accelerator_type"):
        needs[f"accelerator_type:{options['accelerator_type']}"] = 0.001
    return all(node.get(key, 0.0) >= value for key, value in needs.items())


def plan_endpoint(spec: EndpointSpec, facts: ClusterFacts, strict_gpu: bool | None) -> Plan:
    """The Ray options (``num_cpus``, ``num_gpus``, ``accelerator_type``, ``memory``) for ``spec``'s actors."""
    options: dict[str, Any] = {}
    resources = spec.resources
    if resources.cpu is not None:
        options["num_cpus"] = resources.cpu
    if resources.memory is not None:
        options["memory"] = int(resources.memory * 2**20)  # MiB -> bytes
    gpu = resources.gpu
    if gpu is None:
        return Plan(options)
    if facts.gpus <= 0:
        fallback = strict_gpu is False or (strict_gpu is None and facts.started_here)
        if fallback:
            return Plan(options, warning=f"no node of the Ray cluster has a GPU: endpoint {spec.name!r} "
                                         f"(gpu={gpu}) runs on CPU")
    options["num_gpus"] = gpu.count
    chosen = next(((model, kind) for model in gpu.choices for kind in ray_types(model) if kind in facts.types), None)
    if chosen is None and gpu.choices:
        chosen = (gpu.choices[0], ray_types(gpu.choices[0])[-1])
    if chosen is not None:
        options["accelerator_type"] = chosen[1]
    plan = Plan(options, model=chosen[0] if chosen else None, gpus=gpu.count)
    if facts.nodes and not any(_fits(node, options) for node in facts.nodes):
        wants = ", ".join(f"{k}={v}" for k, v in options.items())
        return attrs.evolve(plan, warning=f"no node of the Ray cluster can hold an actor of endpoint {spec.name!r} "
                                          f"now ({wants}): its actors wait for the cluster (its autoscaler) to add "
                                          "one")
    return plan
