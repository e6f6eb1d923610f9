"""Portable GPU names and the one model every spelling normalises to.

A user may write ``"H100"``, ``"h100:2"``, ``"A100-80GB"``, ``"any"``, a RunPod pool (``"ADA_24"``), a family
dict (``{"Ada": 1}``), a list of names (ordered fallback) or ``GPU("L4", 2)``. All of them become a :class:`GPU`
with ``choices`` (portable names, in preference order; empty means any GPU) and ``count``. Backends map the
portable names to their vendor's ids with :data:`CATALOG`.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping, Sequence

import attrs

from .errors import ConfigError

__all__ = ["CATALOG", "GPU", "GpuModel", "identify_gpu", "parse_gpu"]


@attrs.frozen(kw_only=True)
class GpuModel:
    """Facts about one GPU model, keyed by its portable name."""

    name: str
    family: str
    memory_gb: int
    runpod_pool: str
    runpod_id: str
    modal_name: str | None
    aliases: tuple[str, ...] = ()


def _m(name: str, family: str, memory_gb: int, pool: str, rp_id: str, modal: str | None, *aliases: str) -> GpuModel:
    return GpuModel(
        name=name, family=family, memory_gb=memory_gb, runpod_pool=pool, runpod_id=rp_id,
        modal_name=modal, aliases=aliases,
    )


#: Portable name -> facts. Pools are RunPod's ``gpuIds`` pool strings; Modal names are Modal's ``gpu=`` strings.
CATALOG: Mapping[str, GpuModel] = {
    m.name: m
    for m in (
        _m("T4", "Turing", 16, "AMPERE_16", "NVIDIA T4", "T4"),
        _m("A4000", "Ampere", 16, "AMPERE_16", "NVIDIA RTX A4000", None, "RTX-A4000"),
        _m("A4500", "Ampere", 20, "AMPERE_16", "NVIDIA RTX A4500", None, "RTX-A4500"),
        _m("RTX4000-ADA", "Ada", 20, "AMPERE_16", "NVIDIA RTX 4000 Ada Generation", None),
        _m("A5000", "Ampere", 24, "AMPERE_24", "NVIDIA RTX A5000", None, "RTX-A5000"),
        _m("L4", "Ada", 24, "AMPERE_24", "NVIDIA L4", "L4"),
        _m("RTX3090", "Ampere", 24, "AMPERE_24", "NVIDIA GeForce RTX 3090", None, "3090"),
        _m("A10", "Ampere", 24, "AMPERE_24", "NVIDIA A10", "A10", "A10G"),
        _m("A40", "Ampere", 48, "AMPERE_48", "NVIDIA A40", None),
        _m("A6000", "Ampere", 48, "AMPERE_48", "NVIDIA RTX A6000", None, "RTX-A6000"),
        _m("A100-40GB", "Ampere", 40, "AMPERE_80", "NVIDIA A100-SXM4-40GB", "A100-40GB", "A100"),
        _m("A100-80GB", "Ampere", 80, "AMPERE_80", "NVIDIA A100 80GB PCIe", "A100-80GB"),
        _m("RTX4090", "Ada", 24, "ADA_24", "NVIDIA GeForce RTX 4090", None, "4090"),
        _m("RTX5090", "Blackwell", 32, "ADA_32_PRO", "NVIDIA GeForce RTX 5090", None, "5090"),
        _m("L40", "Ada", 48, "ADA_48_PRO", "NVIDIA L40", None),
        _m("L40S", "Ada", 48, "ADA_48_PRO", "NVIDIA L40S", "L40S"),
        _m("RTX6000-ADA", "Ada", 48, "ADA_48_PRO", "NVIDIA RTX 6000 Ada Generation", None),
        _m("H100", "Hopper", 80, "ADA_80_PRO", "NVIDIA H100 80GB HBM3", "H100", "H100-80GB"),
        _m("H200", "Hopper", 141, "HOPPER_141", "NVIDIA H200", "H200"),
        _m("RTX-PRO-6000", "Blackwell", 96, "BLACKWELL_96", "NVIDIA RTX PRO 6000 Blackwell Server Edition",
           "RTX-PRO-6000"),
        _m("B200", "Blackwell", 180, "BLACKWELL_180", "NVIDIA B200", "B200"),
    )
}

_BY_KEY: dict[str, str] = {}
for _model in CATALOG.values():
    for _key in (_model.name, *_model.aliases, _model.runpod_id):
        _BY_KEY[_key.upper().replace(" ", "-")] = _model.name
_POOLS: dict[str, tuple[str, ...]] = {}
for _model in CATALOG.values():
    _POOLS.setdefault(_model.runpod_pool, ())
    _POOLS[_model.runpod_pool] += (_model.name,)
_FAMILIES: dict[str, tuple[str, ...]] = {}
for _model in CATALOG.values():
    _FAMILIES.setdefault(_model.family.upper(), ())
    _FAMILIES[_model.family.upper()] += (_model.name,)


def _tokens(text: str) -> str:
    return " " + " ".join(text.upper().replace("-", " ").replace("_", " ").split()) + " "


def identify_gpu(device_name: str, memory_mib: int | None = None) -> str | None:
    """The portable name of a device as its driver names it (``nvidia-smi``'s ``name``), or ``None`` for a model
    the catalog does not know.

    ``"NVIDIA A100-SXM4-80GB"`` -> ``"A100-80GB"``, ``"Tesla T4"`` -> ``"T4"``, ``"NVIDIA H100 PCIe"`` -> ``"H100"``
    (every H100 form factor counts as an H100). Where a model comes in several memory sizes, a size in the name
    (``80GB``) or else ``memory_mib`` picks one.
    """
    text = device_name.strip()
    for model in CATALOG.values():
        if text.lower() == model.runpod_id.lower():
            return model.name
    spaced = _tokens(text)
    best: tuple[str, str] | None = None
    for model in CATALOG.values():
        for key in (model.name, *model.aliases):
            if _tokens(key) in spaced and (best is None or len(key) > len(best[1])):
                best = (model.name, key)
    if best is None:
        return None
    base = best[0].rsplit("-", 1)[0] if best[0].endswith("GB") else best[0]
    sizes = [m for m in CATALOG.values() if m.name.startswith(f"{base}-") and m.name.endswith("GB")]
    if not sizes:
        return best[0]
    for model in sizes:
        if f" {model.memory_gb}GB " in spaced:
            return model.name
    if memory_mib:
        return min(sizes, key=lambda m: abs(m.memory_gb * 1024 - memory_mib)).name
    return best[0]


def _resolve_name(text: str) -> tuple[str, ...]:
    key = text.strip().upper().replace(" ", "-")
    if key == "ANY":
        return ()
    if key in _BY_KEY:
        return (_BY_KEY[key],)
    if key.replace("-", "_") in _POOLS:
        return _POOLS[key.replace("-", "_")]
    if key in _FAMILIES:
        return _FAMILIES[key]
    identified = identify_gpu(text)
    if identified is not None:  # a name as a driver prints it ("NVIDIA A100-SXM4-80GB", "Tesla T4")
        return (identified,)
    known = ", ".join(sorted(CATALOG))
    raise ConfigError(
        f"unknown GPU {text!r}; use a portable name ({known}), 'any', a RunPod pool such as 'ADA_24', "
        "or a family such as {'Ada': 1}"
    )


@typing.final
@attrs.frozen(init=False)
class GPU:
    """A GPU request: which models are acceptable (in preference order) and how many per worker.

    ``GPU("H100")``, ``GPU("A100-80GB", 2)``, ``GPU(["H100", "A100-80GB"])``, ``GPU("any")``.
    """

    choices: tuple[str, ...]
    count: int

    def __init__(self, name: str | Sequence[str] = "any", count: int = 1) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"GPU count must be a positive integer, got {count!r}")
        names = [name] if isinstance(name, str) else list(name)
        if not names or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"GPU name must be a string or a list of strings, got {name!r}")
        choices: list[str] = []
        for n in names:
            resolved = _resolve_name(n)
            if not resolved:  # "any" anywhere in the list accepts anything
                choices = []
                break
            choices.extend(c for c in resolved if c not in choices)
        self.__attrs_init__(choices=tuple(choices), count=count)

    @property
    def is_any(self) -> bool:
        return not self.choices

    @property
    def models(self) -> tuple[GpuModel, ...]:
        return tuple(CATALOG[c] for c in self.choices)

    def __str__(self) -> str:
        names = "any" if self.is_any else "|".join(self.choices)
        return f"{names}:{self.count}" if self.count > 1 else names


def parse_gpu(value: object) -> GPU | None:
    """Normalise every accepted spelling of a GPU request; ``None`` means no GPU."""
    if value is None or value is False:
        return None
    if isinstance(value, GPU):
        return value
    if isinstance(value, str):
        name, _, count = value.partition(":")
        if count and not count.isdigit():
            raise ConfigError(f"GPU count after ':' must be an integer, got {value!r}")
        names = name.split("|")  # the form str(GPU) writes for several acceptable models
        return GPU(names if len(names) > 1 else name, int(count) if count else 1)
    if isinstance(value, Mapping):
        if len(value) != 1:
            raise ConfigError(f"a GPU family dict names exactly one family, e.g. {{'Ada': 1}}; got {value!r}")
        ((family, count),) = value.items()
        return GPU(str(family), count)
    if isinstance(value, Sequence):
        return GPU([str(v) for v in value])
    raise ConfigError(f"gpu must be a name, a list of names, a family dict or gpuflex.GPU, got {value!r}")
