"""Every accepted spelling of a GPU request normalises to one ``gpuflex.GPU``; anything else is a ConfigError."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuflex import GPU, EndpointSpec
from gpuflex.errors import ConfigError
from gpuflex.gpus import CATALOG, parse_gpu

ADA = ("RTX4000-ADA", "L4", "RTX4090", "L40", "L40S", "RTX6000-ADA")


@pytest.mark.parametrize(
    ("value", "choices", "count"),
    [
        # portable names, any case, surrounding blanks
        ("H100", ("H100",), 1),
        ("h100", ("H100",), 1),
        ("  l40s ", ("L40S",), 1),
        ("A100-80GB", ("A100-80GB",), 1),
        ("rtx6000-ada", ("RTX6000-ADA",), 1),
        # aliases and vendor ids
        ("A100", ("A100-40GB",), 1),
        ("a10g", ("A10",), 1),
        ("4090", ("RTX4090",), 1),
        ("RTX-A6000", ("A6000",), 1),
        ("H100-80GB", ("H100",), 1),
        ("NVIDIA H100 80GB HBM3", ("H100",), 1),
        ("nvidia geforce rtx 4090", ("RTX4090",), 1),
        # counts
        ("H100:2", ("H100",), 2),
        ("l4:8", ("L4",), 8),
        ("any:4", (), 4),
        # any GPU
        ("any", (), 1),
        ("ANY", (), 1),
        # RunPod pools, in RunPod's and in dashed spelling
        ("ADA_24", ("RTX4090",), 1),
        ("ADA_80_PRO", ("H100",), 1),
        ("ada-80-pro", ("H100",), 1),
        ("AMPERE_80", ("A100-40GB", "A100-80GB"), 1),
        ("ADA_48_PRO:2", ("L40", "L40S", "RTX6000-ADA"), 2),
        ("HOPPER_141", ("H200",), 1),
        # families, as names and as dicts
        ("Hopper", ("H100", "H200"), 1),
        ({"Ada": 1}, ADA, 1),
        ({"hopper": 4}, ("H100", "H200"), 4),
        # lists: ordered fallback, duplicates dropped, "any" anywhere accepts anything
        (["H100", "A100-80GB"], ("H100", "A100-80GB"), 1),
        (("l40s", "L40S", "A100"), ("L40S", "A100-40GB"), 1),
        (["ADA_80_PRO", "H200"], ("H100", "H200"), 1),
        (["H100", "any"], (), 1),
        # GPU objects pass through
        (GPU("L4", 2), ("L4",), 2),
        (GPU(["B200", "H200"]), ("B200", "H200"), 1),
    ],
    ids=repr,
)
def test_accepted_spellings(value, choices, count):
    gpu = parse_gpu(value)
    assert gpu == GPU(list(choices) or "any", count)
    assert gpu.choices == choices
    assert gpu.count == count
    assert gpu.is_any is (choices == ())
    assert [m.name for m in gpu.models] == list(choices)


@pytest.mark.parametrize("value", [None, False])
def test_no_gpu(value):
    assert parse_gpu(value) is None


def test_gpu_objects_are_returned_unchanged():
    gpu = GPU("H100", 2)
    assert parse_gpu(gpu) is gpu


def test_gpu_is_a_hashable_value():
    assert GPU("h100", 2) == GPU("H100-80GB", 2)
    assert len({GPU("H100"), GPU("h100"), GPU("ADA_80_PRO")}) == 1
    assert GPU("H100") != GPU("H100", 2)
    assert GPU() == GPU("any")


def test_str():
    assert str(GPU("H100")) == "H100"
    assert str(GPU("H100", 2)) == "H100:2"
    assert str(GPU("any")) == "any"
    assert str(GPU(["H100", "A100-80GB"], 2)) == "H100|A100-80GB:2"


def test_every_catalog_entry_is_reachable_by_all_its_keys():
    for name, model in CATALOG.items():
        assert model.name == name
        for key in (name, *model.aliases, model.runpod_id, name.lower()):
            assert parse_gpu(key) == GPU(name), key
        assert name in parse_gpu(model.runpod_pool).choices
        assert name in parse_gpu({model.family: 1}).choices


@pytest.mark.parametrize(
    ("value", "fragments"),
    [
        ("H1000", ["unknown GPU 'H1000'", "H100", "'any'", "ADA_24", "{'Ada': 1}"]),
        ("", ["unknown GPU ''"]),
        (["H100", "nope"], ["unknown GPU 'nope'"]),
        ("H100:x", ["must be an integer", "'H100:x'"]),
        ("H100:-1", ["must be an integer"]),
        ("H100:1.5", ["must be an integer"]),
        ("H100:0", ["positive integer", "0"]),
        ({"Ada": 0}, ["positive integer"]),
        ({"Ada": "2"}, ["positive integer", "'2'"]),
        ({"Ada": True}, ["positive integer"]),
        ({"Ada": 1, "Hopper": 1}, ["exactly one family"]),
        ({}, ["exactly one family"]),
        ({"Volta": 1}, ["unknown GPU 'Volta'"]),
        ([], ["list of strings"]),
        (42, ["gpu must be a name", "42"]),
        (True, ["gpu must be a name"]),
        (1.5, ["gpu must be a name"]),
    ],
    ids=repr,
)
def test_bad_input_is_a_config_error_with_a_helpful_message(value, fragments):
    with pytest.raises(ConfigError) as info:
        parse_gpu(value)
    assert isinstance(info.value, ValueError)  # ConfigError is a ValueError for callers that catch those
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize("count", [0, -1, True, 1.0, "2", None])
def test_gpu_count_must_be_a_positive_integer(count):
    with pytest.raises(ConfigError, match="GPU count must be a positive integer"):
        GPU("H100", count)


@pytest.mark.parametrize("name", [[], [1], [None, "H100"], b"H100"])
def test_gpu_names_must_be_strings(name):
    with pytest.raises(ConfigError):
        GPU(name)


def test_endpoint_spec_hash_depends_on_the_normalised_gpu():
    from gpuflex._models import EndpointKind, FunctionRef, Resources

    def spec(gpu):
        return EndpointSpec(name="e", kind=EndpointKind.FUNCTION, target=FunctionRef(module="m", qualname="f"),
                            resources=Resources(gpu=parse_gpu(gpu)))

    assert spec("h100").config_hash() == spec("ADA_80_PRO").config_hash()
    assert spec("H100").config_hash() != spec("H100:2").config_hash()


# -- round trips -------------------------------------------------------------------------------------------------

_KEYS = sorted({key for m in CATALOG.values() for key in (m.name, *m.aliases, m.runpod_id)})


def _spellings(key: str) -> st.SearchStrategy[str]:
    return st.sampled_from([key, key.lower(), key.upper(), f" {key} "])


single_gpus = st.builds(
    GPU, st.sampled_from(_KEYS + ["any"]).flatmap(_spellings), st.integers(min_value=1, max_value=16)
)


@given(single_gpus)
def test_str_round_trips_for_one_model(gpu):
    assert parse_gpu(str(gpu)) == gpu


@given(st.sampled_from(sorted(CATALOG)), st.integers(min_value=1, max_value=16))
def test_every_spelling_of_a_count_parses(name, count):
    assert parse_gpu(f"{name}:{count}") == GPU(name, count) == parse_gpu(GPU(name.lower(), count))


@given(st.lists(st.sampled_from(sorted(CATALOG)), min_size=2, max_size=4, unique=True),
       st.integers(min_value=1, max_value=8))
def test_str_round_trips_for_several_models(names, count):
    gpu = GPU(names, count)
    assert parse_gpu(str(gpu)) == gpu


# What nvidia-smi's ``name`` (with ``memory.total`` in MiB) prints on real machines, as published in provider docs,
# vendor spec sheets and users' nvidia-smi output; None: a model the catalog does not have.
DRIVER_NAMES = [
    ("NVIDIA A100-SXM4-80GB", 81920, "A100-80GB"),  # RunPod, Lambda, GCP a2-ultragpu
    ("NVIDIA A100-SXM4-40GB", 40960, "A100-40GB"),  # GCP a2-highgpu, AWS p4d
    ("NVIDIA A100-PCIE-40GB", 40960, "A100-40GB"),
    ("NVIDIA A100 80GB PCIe", 81920, "A100-80GB"),
    ("NVIDIA A100-SXM-80GB", 81920, "A100-80GB"),
    ("A100-SXM4-40GB", 40536, "A100-40GB"),  # drivers before R470 printed no "NVIDIA"
    ("NVIDIA H100 80GB HBM3", 81559, "H100"),  # SXM5
    ("NVIDIA H100 PCIe", 81559, "H100"),
    ("NVIDIA H100 NVL", 95830, "H100"),
    ("NVIDIA H200", 143771, "H200"),
    ("NVIDIA B200", 183359, "B200"),
    ("NVIDIA A10G", 23028, "A10"),  # AWS g5
    ("NVIDIA A10", 23028, "A10"),  # Lambda, OCI
    ("Tesla T4", 15360, "T4"),  # AWS g4dn, GCP, Colab
    ("NVIDIA L4", 23034, "L4"),
    ("NVIDIA L40S", 46068, "L40S"),
    ("NVIDIA L40", 46068, "L40"),
    ("NVIDIA RTX A6000", 49140, "A6000"),
    ("NVIDIA RTX 6000 Ada Generation", 49140, "RTX6000-ADA"),
    ("NVIDIA GeForce RTX 4090", 24564, "RTX4090"),
    ("NVIDIA GeForce RTX 3090", 24576, "RTX3090"),
    ("NVIDIA GeForce RTX 5090", 32607, "RTX5090"),
    ("NVIDIA RTX PRO 6000 Blackwell Server Edition", 97887, "RTX-PRO-6000"),
    ("NVIDIA RTX PRO 6000 Blackwell Workstation Edition", 97887, "RTX-PRO-6000"),
    ("NVIDIA GH200 480GB", 97871, None),
    ("Tesla V100-SXM2-16GB", 16160, None),
    ("NVIDIA GB10", None, None),  # DGX Spark: memory.total is [N/A]
]


@pytest.mark.parametrize(("device", "memory_mib", "portable"), DRIVER_NAMES, ids=[d[0] for d in DRIVER_NAMES])
def test_driver_names_identify_the_model(device, memory_mib, portable):
    from gpuflex.gpus import identify_gpu

    assert identify_gpu(device, memory_mib) == portable
    if portable is not None:  # and an endpoint may ask for the model by that very name
        assert GPU(device).choices == (portable,)
    else:
        with pytest.raises(ConfigError, match="unknown GPU"):
            GPU(device)


def test_memory_decides_between_sizes_when_the_name_does_not():
    from gpuflex.gpus import identify_gpu

    assert identify_gpu("NVIDIA A100-SXM4", 81251) == "A100-80GB"
    assert identify_gpu("NVIDIA A100-SXM4", 40536) == "A100-40GB"
