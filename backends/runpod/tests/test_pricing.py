"""Prices of the serverless backend: RunPod's flex and active rates by pool, unknown where RunPod publishes none,
and the idle tail RunPod bills after each job."""

from __future__ import annotations

import attrs
import pytest
from gpuflex_runpod import RunPodConfig
from gpuflex_runpod._pricing import serverless_price

from gpuflex import Resources
from gpuflex.gpus import GPU
from gpuflex.testing._endpoints import echo

CONFIG = RunPodConfig(api_key="k")


def _on(gpu, **changes):
    return attrs.evolve(echo.spec, resources=Resources(gpu=gpu), **changes)


def test_price_takes_the_dearest_acceptable_pool_times_the_count():
    price = serverless_price(_on(GPU(["L4", "H100"], 2)), CONFIG)
    assert price.usd_per_hour == pytest.approx(0.00116 * 3600 * 2) and price.billing == "per-second"
    assert serverless_price(_on(GPU("any")), CONFIG).usd_per_hour == pytest.approx(0.00240 * 3600)


def test_active_workers_are_priced_at_runpods_active_rate():
    price = serverless_price(_on(GPU("H100"), min_workers=1, max_workers=2), CONFIG)
    assert price.usd_per_hour == pytest.approx(0.00116 * 3600)  # jobs beyond the active worker: flex
    assert price.idle_usd_per_hour == pytest.approx(0.00093 * 3600)  # the active worker, around the clock
    assert price.tail_seconds == 0 and "active" in price.source


def test_missing_prices_are_unknown_not_free():
    for spec in (echo.spec, _on(GPU("RTX5090"))):  # CPU workers; a pool without a published price
        price = serverless_price(spec, CONFIG)
        assert price.billing == "unknown" and "unknown, not zero" in price.source


def test_the_idle_tail_defaults_to_runpods_five_seconds():
    spec = _on(GPU("L4"))
    assert spec.idle_timeout == 60  # gpuflex's default
    assert serverless_price(spec, CONFIG).tail_seconds == 5
    assert serverless_price(spec, attrs.evolve(CONFIG, default_idle_timeout=None)).tail_seconds == 60
    assert serverless_price(attrs.evolve(spec, idle_timeout=30), CONFIG).tail_seconds == 30
