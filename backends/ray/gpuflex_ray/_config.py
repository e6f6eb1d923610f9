"""Options of the Ray backend (``gpuflex.use("ray", address=...)`` or ``[tool.gpuflex.backends.ray]``)."""

from __future__ import annotations

from typing import Any

import attrs

from gpuflex.gpus import parse_gpu

__all__ = ["RayConfig"]


def _positive(inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"{attr.name} must be a positive number, got {value!r}")


def _non_negative(inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{attr.name} must be a non-negative number, got {value!r}")


def _rates(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ValueError(f"gpu_hourly_rates must be a table of GPU name -> USD per GPU-hour, got {value!r}")
    rates = {}
    for name, rate in value.items():
        if isinstance(rate, bool) or not isinstance(rate, int | float) or rate < 0:
            raise ValueError(f"gpu_hourly_rates[{name!r}] must be a non-negative number, got {rate!r}")
        gpu = parse_gpu(name)
        if gpu is None or len(gpu.choices) != 1:
            raise ValueError(f"gpu_hourly_rates: {name!r} is not one GPU model (write e.g. 'H100' or 'A100-80GB')")
        rates[gpu.choices[0]] = float(rate)
    return rates


@attrs.frozen(kw_only=True)
class RayConfig:
    """
    :param address: the cluster to use: ``"ray://head:10001"`` (Ray Client), ``"auto"`` (the cluster this machine
        is a node of), ``"host:6379"`` (its GCS, from a node of the cluster), or ``None`` (the default):
        ``RAY_ADDRESS`` when set, else a local cluster on this machine, started for development and stopped at
        the end. gpuflex never starts a cluster on another machine.
    :param namespace: the Ray namespace of this program's job (default: Ray's own, a fresh anonymous one).
    :param init_options: further keyword arguments for ``ray.init`` (``num_cpus`` of a local cluster,
        ``_temp_dir``...). Ignored when the program already called ``ray.init`` itself.
    :param runtime_env: a Ray runtime environment for every actor (``pip``, ``env_vars``, ``container``...);
        an endpoint's ``dependencies`` are added to its ``pip`` list.
    :param ship_gpuflex: send this machine's ``gpuflex`` and ``gpuflex_ray`` packages with the actors (runtime_env
        ``py_modules``), so the cluster runs exactly your version; turn off when the cluster's image has
        gpuflex-ray installed at the same version.
    :param actor_options: further ``.options(...)`` for every actor (``resources``, ``scheduling_strategy``,
        ``label_selector``...); they override what gpuflex derives from the endpoint.
    :param strict_gpu: what a GPU endpoint does when no node of the cluster has a GPU now: ``True`` asks for the
        GPU anyway (the actor waits for the cluster's autoscaler to add a GPU node), ``False`` runs on CPU with one
        warning; ``None`` (the default) runs on CPU only on a local cluster gpuflex started itself.
    :param gpu_hourly_rates: USD per GPU-hour by GPU model, over the known defaults (``{"A100-80GB": 1.89}``).
    :param cpu_hourly_rate: USD per hour of an actor without a GPU (default 0: CPU actors are free).
    :param start_timeout: seconds an actor may take to be placed and load the endpoint (a GPU node the cluster's
        autoscaler adds may take minutes); past it, the calls waiting for it fail with the reason.
    :param reload_in_place: on a hot reload with unchanged settings, actors load the new code in their running
        process instead of being replaced.
    :param prefetch: calls sent ahead to a busy one-call-at-a-time actor (they wait in its Ray queue), so it moves
        to the next call without a round trip (throughput); 0 sends a call only to an idle actor (fairest for long
        calls); ``None`` (the default) prefetches up to 16 only while the endpoint's calls average under 2 ms.
    """

    address: str | None = None
    namespace: str | None = None
    init_options: dict[str, Any] = attrs.field(factory=dict, converter=dict)
    runtime_env: dict[str, Any] = attrs.field(factory=dict, converter=dict)
    ship_gpuflex: bool = True
    actor_options: dict[str, Any] = attrs.field(factory=dict, converter=dict)
    strict_gpu: bool | None = None
    gpu_hourly_rates: dict[str, float] = attrs.field(factory=dict, converter=_rates)
    cpu_hourly_rate: float = attrs.field(default=0.0, validator=_non_negative)
    start_timeout: float = attrs.field(default=600.0, validator=_positive)
    reload_in_place: bool = True
    prefetch: int | None = attrs.field(default=None, validator=attrs.validators.optional(_non_negative))
