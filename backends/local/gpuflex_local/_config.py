"""Options of the local backend (``gpuflex.use("local", **options)`` or ``[tool.gpuflex.backends.local]``)."""

from __future__ import annotations

from typing import Any

import attrs


def _non_negative(inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{attr.name} must be a non-negative number, got {value!r}")


@attrs.frozen(kw_only=True)
class LocalConfig:
    """
    :param hourly_rate: what one worker costs you per hour, in USD (your electricity, your amortised card);
        jobs are billed for their running time at this rate. 0 means free.
    :param strict_gpu: fail instead of falling back to CPU when an endpoint asks for a GPU and there is none.
    :param isolate: give each set of ``dependencies`` its own virtual environment (built with uv, cached by
        the hash of the set) instead of checking them against the current environment.
    :param shared_memory: move large buffers (numpy arrays, tensors) through /dev/shm instead of the pipe.
    :param python: the interpreter for workers (default: the caller's).
    :param cache_dir: where isolated environments live (default: ``$GPUFLEX_CACHE_DIR`` or ~/.cache/gpuflex).
    :param reload_in_place: on a redeploy with new code but the same settings, workers load the new bundle in
        their running process (heavy imports such as torch stay loaded) instead of being replaced.
    :param prefetch: calls sent ahead into a busy one-call-at-a-time worker's pipe, so it moves to the next call
        without a round trip (throughput); 0 sends a call only to an idle worker (fairest for long calls);
        ``None`` (the default) prefetches up to 16 only while the endpoint's calls average under 2 ms.
    """

    hourly_rate: float = attrs.field(default=0.0, validator=_non_negative)
    strict_gpu: bool = False
    isolate: bool = False
    shared_memory: bool = True
    python: str | None = None
    cache_dir: str | None = None
    prefetch: int | None = attrs.field(default=None, validator=attrs.validators.optional(_non_negative))
    reload_in_place: bool = True
