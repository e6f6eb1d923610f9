"""Every error gpuflex raises for its own failures.

The tree::

    GpuflexError
    ├── ConfigError(ValueError)                 bad endpoint options, config files, GPU names
    │   └── SerializationError(TypeError)       an argument or result that cannot cross the wire
    │       └── PayloadTooLarge                 a payload over a backend's documented limit
    ├── PluginError
    │   └── UnknownBackendError(LookupError)    no installed backend has that name
    ├── RemoteError                             a remote exception that could not be rebuilt locally
    ├── BatchError                              a batched function broke its contract (one result per item)
    ├── BackendError                            a backend could not do what was asked
    │   ├── BackendUnavailable                  unreachable, not started, capacity missing
    │   ├── AuthenticationError                 missing or rejected credentials
    │   ├── QuotaExceeded                       a budget or vendor quota refused the work
    │   └── VersionMismatch                     the worker runs another Python or gpuflex
    └── JobError                                a job ended without a result
        ├── JobFailed                           infrastructure failure (the worker died, ...)
        │   └── WorkerLost                      the worker process died or the connection dropped
        ├── JobCancelled                        cancelled by the caller
        └── JobTimeout(TimeoutError)            ran past the endpoint's timeout or the caller's

Exceptions raised by the user's own function are re-raised as their own type (with the remote traceback attached
as ``__cause__``), never wrapped in one of these.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "BackendError",
    "BackendUnavailable",
    "BatchError",
    "ConfigError",
    "GpuflexError",
    "GpuflexWarning",
    "JobCancelled",
    "JobError",
    "JobFailed",
    "JobTimeout",
    "PayloadTooLarge",
    "PluginError",
    "QuotaExceeded",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "UnknownBackendError",
    "VersionMismatch",
    "WorkerLost",
]


class GpuflexError(Exception):
    """Base class of every error gpuflex raises for its own failures."""


class GpuflexWarning(UserWarning):
    """Warnings about a silent difference: CPU fallback, ignored options, unsupported capabilities."""


class ConfigError(GpuflexError, ValueError):
    """Invalid configuration: endpoint options, config files, GPU names, backend options."""


class SerializationError(ConfigError, TypeError):
    """An argument or a return value cannot be serialized for the trip to or from a worker."""


class PayloadTooLarge(SerializationError):
    """A payload is over the limit a backend documents."""

    def __init__(self, size: int, limit: int, backend: str) -> None:
        self.size = size
        self.limit = limit
        self.backend = backend
        super().__init__(
            f"payload of {size:,} bytes is over the {backend} backend's limit of {limit:,} bytes; "
            "pass a reference (a path, URL or volume) instead of the data"
        )


class PluginError(GpuflexError):
    """A plugin is broken: a hook raised, two backends share a name, a class is not a Backend."""


class UnknownBackendError(PluginError, LookupError):
    """No installed backend has the requested name."""

    def __init__(self, name: str, available: list[str]) -> None:
        self.name = name
        self.available = sorted(available)
        hint = f"pip install gpuflex-{name}" if name.isidentifier() else "check the spelling"
        listed = ", ".join(self.available) or "none"
        super().__init__(f"unknown backend {name!r}; installed backends: {listed} (to add it: {hint})")


class BackendError(GpuflexError):
    """A backend could not do what was asked."""


class BackendUnavailable(BackendError):
    """The target cannot be reached, is not running, or has no capacity."""


class AuthenticationError(BackendError):
    """Credentials are missing or were rejected. The message never contains the credential itself."""


class QuotaExceeded(BackendError):
    """A budget guard or a vendor quota refused new work."""


class VersionMismatch(BackendError):
    """The worker runs a different Python or gpuflex version than the caller."""

    def __init__(self, what: str, local: str, remote: str) -> None:
        self.what = what
        self.local = local
        self.remote = remote
        super().__init__(
            f"{what} version mismatch: the caller runs {local}, the worker runs {remote}; "
            f"install {what} {local} on the worker (or run the caller on {remote})"
        )


class JobError(GpuflexError):
    """A job ended without a result."""

    def __init__(self, message: str, *, job_id: str | None = None) -> None:
        self.job_id = job_id
        super().__init__(message)


class JobFailed(JobError):
    """The job failed for an infrastructure reason (not an exception from the user's function)."""


class WorkerLost(JobFailed):
    """The worker running the job died or the connection to it dropped."""


class JobCancelled(JobError):
    """The job was cancelled before it finished."""


class JobTimeout(JobError, TimeoutError):
    """The job ran past its timeout."""


class RemoteTraceback(Exception):
    """Carries the formatted traceback of a remote exception; attached as ``__cause__``."""

    def __init__(self, tb: str) -> None:
        self.tb = tb
        super().__init__(tb)

    def __str__(self) -> str:
        return f"\n\nRemote traceback:\n{self.tb}"


class BatchError(GpuflexError):
    """A batched endpoint broke its contract: it must take a list and return a list with one result per item,
    and each call must pass exactly one item."""


class RemoteError(GpuflexError):
    """A remote exception whose type could not be rebuilt locally."""

    def __init__(self, type_name: str, message: str) -> None:
        self.type_name = type_name
        self.remote_message = message
        super().__init__(f"{type_name}: {message}")
