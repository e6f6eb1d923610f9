"""Endpoints of the Ray backend's own tests (imported by reference from the bundle, inside the actors)."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import gpuflex


def _node() -> str:
    import ray

    return str(ray.get_runtime_context().get_node_id())


@gpuflex.endpoint(name="ray_node_loss", retries=1)
def node_loss(marker: str) -> str:
    """The first attempt records its node and waits (for its node to be removed); a retry returns at once."""
    first = not Path(marker).exists()
    with open(marker, "a") as f:
        f.write(_node() + "\n")
    if first:
        time.sleep(120)
    return _node()


@gpuflex.endpoint(name="ray_where")
def where() -> dict:
    import gpuflex_ray

    return {"node": _node(), "pid": os.getpid(), "gpuflex": gpuflex.__file__, "gpuflex_ray": gpuflex_ray.__file__,
            "cwd": os.getcwd(), "module": __file__}


@gpuflex.endpoint(name="ray_secret", secrets=("RAY_TEST_SECRET",), env={"RAY_TEST_ENV": "from-env"})
def secret() -> dict:
    return {"secret": os.environ.get("RAY_TEST_SECRET"), "env": os.environ.get("RAY_TEST_ENV")}


@gpuflex.endpoint(name="ray_talk_then_return")
def talk_then_return(tag: str, lines: int) -> str:
    """Print and log, then return at once: every line must reach the caller before the result."""
    for i in range(lines):
        print(f"{tag} line {i}")
    print(f"{tag} partial line without a newline", end="", file=sys.stderr)
    logging.getLogger("ray-test").warning("%s logged last", tag)
    return tag


@gpuflex.endpoint(name="ray_gpu", gpu="A100-80GB", max_workers=1)
def on_gpu() -> str:
    return _node()


@gpuflex.endpoint(name="ray_array")
def add_one(array):  # noqa: ANN001, ANN201 - a numpy array in, written to in place, and back
    array += 1
    return array



@gpuflex.endpoint(name="ray_with_dependency", dependencies=("six==1.16.0",))
def with_dependency() -> dict:
    import six

    return {"six": six.__version__, "python": sys.executable}
