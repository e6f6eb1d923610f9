"""What an endpoint asks of a Ray cluster, and what it costs: no cluster needed."""

from __future__ import annotations

import pytest
from gpuflex_ray import RayBackend, RayConfig
from gpuflex_ray._prices import KNOWN_GPU_HOURLY_USD
from gpuflex_ray._resources import ClusterFacts, plan_endpoint, ray_types

import gpuflex
from gpuflex.gpus import CATALOG


def spec_of(**options):
    @gpuflex.endpoint(name="plan_probe", **options)
    def probe() -> None:
        return None

    return probe.spec


def facts(gpus=0.0, types=(), started_here=False, nodes=()):
    return ClusterFacts(gpus, frozenset(types), started_here, tuple(nodes))


@pytest.mark.parametrize("model", sorted(CATALOG))
def test_gpu_models_map_to_the_accelerator_type_ray_detects(model):
    from ray._private.accelerators.nvidia_gpu import NvidiaGPUAcceleratorManager

    detected = NvidiaGPUAcceleratorManager._gpu_name_to_accelerator_type(CATALOG[model].runpod_id)
    assert detected in ray_types(model)


def test_cloud_spellings_are_accepted_too():
    assert {"A10", "A10G"} <= set(ray_types("A10"))
    assert {"A100-80G", "A100"} <= set(ray_types("A100-80GB"))


def test_resources_come_from_the_spec():
    plan = plan_endpoint(spec_of(cpu=2, memory=1024, gpu="L4:2"), facts(4, ["L4"]), None)
    assert plan.options == {"num_cpus": 2, "memory": 1024 * 2**20, "num_gpus": 2, "accelerator_type": "L4"}
    assert (plan.model, plan.gpus, plan.warning) == ("L4", 2, None)


def test_the_first_choice_the_cluster_has_wins():
    plan = plan_endpoint(spec_of(gpu=["H100", "A10", "L4"]), facts(8, ["L4", "A10G"]), None)
    assert (plan.options["accelerator_type"], plan.model) == ("A10G", "A10")


def test_any_gpu_asks_for_no_type():
    plan = plan_endpoint(spec_of(gpu="any"), facts(1, ["T4"]), None)
    assert plan.options == {"num_gpus": 1} and plan.model is None


def test_a_gpu_the_cluster_lacks_is_asked_for_with_a_warning():
    nodes = [{"CPU": 8.0, "GPU": 4.0, "accelerator_type:L4": 1.0}]
    plan = plan_endpoint(spec_of(gpu="H100"), facts(4, ["L4"], nodes=nodes), None)
    assert plan.options == {"num_gpus": 1, "accelerator_type": "H100"}
    assert plan.warning and "wait for the cluster" in plan.warning


@pytest.mark.parametrize(("strict", "started_here", "on_cpu"), [
    (None, True, True), (None, False, False), (False, False, True), (True, True, False),
])
def test_cpu_fallback_only_where_it_is_asked_for_or_the_cluster_is_a_local_one(strict, started_here, on_cpu):
    plan = plan_endpoint(spec_of(gpu="T4"), facts(0, started_here=started_here), strict)
    assert ("num_gpus" not in plan.options) is on_cpu
    if on_cpu:
        assert plan.warning and "runs on CPU" in plan.warning


def test_known_prices_and_overrides():
    backend = RayBackend(RayConfig(gpu_hourly_rates={"A100-80GB": 1.5}))
    price = backend.price(spec_of(gpu="H100:2"))
    assert (price.billing, price.usd_per_hour) == ("uptime", 2 * KNOWN_GPU_HOURLY_USD["H100"][0])
    assert backend.price(spec_of(gpu="A100-80GB")).usd_per_hour == 1.5
    unknown = backend.price(spec_of(gpu="B200"))
    assert unknown.billing == "unknown" and "gpu_hourly_rates" in unknown.source
    assert backend.price(spec_of()).billing == "free"
    assert RayBackend(RayConfig(cpu_hourly_rate=0.2)).price(spec_of()).usd_per_hour == 0.2


@pytest.mark.parametrize("options", [
    {"gpu_hourly_rates": {"NoSuchGPU": 1.0}}, {"gpu_hourly_rates": {"H100": -1}}, {"cpu_hourly_rate": -1},
    {"start_timeout": 0},
])
def test_bad_options_are_refused(options):
    with pytest.raises(ValueError):
        RayConfig(**options)


def test_dependencies_join_the_runtime_environment():
    backend = RayBackend(RayConfig(runtime_env={"pip": ["numpy"], "env_vars": {"A": "1"}}))
    env = backend.runtime_env(spec_of(dependencies=["six==1.16.0"]))
    assert env == {"pip": ["numpy", "six==1.16.0"], "env_vars": {"A": "1"}}
    backend = RayBackend(RayConfig(runtime_env={"pip": {"packages": ["numpy"], "pip_check": False}}))
    assert backend.runtime_env(spec_of(dependencies=["six"]))["pip"] == {"packages": ["numpy", "six"],
                                                                          "pip_check": False}
