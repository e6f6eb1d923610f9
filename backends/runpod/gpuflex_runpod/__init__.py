"""gpuflex on RunPod Serverless: the ``serverless`` backend (alias ``runpod``), the worker handler that runs inside
``runpod.serverless.start``, and an offline emulator of RunPod's API (:mod:`gpuflex_runpod.emulator`)."""

from ._backend import RunPodBackend as RunPodBackend
from ._config import RunPodConfig as RunPodConfig

__all__ = ["RunPodBackend", "RunPodConfig"]
