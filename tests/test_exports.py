"""The public surface: ``gpuflex.__all__``, ``__module__`` rewriting, the error tree, ``@final``, clean imports."""

from __future__ import annotations

import builtins as builtins_module
import importlib
import inspect
import pickle
import pkgutil
import re
import subprocess
import sys

import pytest

import gpuflex
from gpuflex import errors


def _all_modules() -> list[str]:
    names = ["gpuflex"]
    for info in pkgutil.walk_packages(gpuflex.__path__, "gpuflex."):
        names.append(info.name)
    return sorted(names)


def _public_modules() -> list[str]:
    """Modules with no private component, less the two that pluggy and pytest read by name prefix."""
    return [
        name for name in _all_modules()
        if not any(part.startswith("_") for part in name.split("."))
        and name not in ("gpuflex.hookspecs", "gpuflex.testing.pytest_plugin")
    ]


PUBLIC_MODULES = _public_modules()


def _isort_key(name: str) -> tuple[int, str]:
    """ruff's RUF022 order: CONSTANTS, then Classes, then functions."""
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


# -- __all__ ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_all_is_sorted_and_unique(module):
    names = list(importlib.import_module(module).__all__)
    assert names in (sorted(names), sorted(names, key=_isort_key))
    assert len(set(names)) == len(names)


def test_package_all_is_plainly_sorted():
    assert gpuflex.__all__ == sorted(gpuflex.__all__)
    assert {"GPU", "Job", "endpoint", "use", "hookimpl", "list_backends", "errors", "stats", "Stats"} \
        <= set(gpuflex.__all__)


def test_public_modules_are_found():
    assert {"gpuflex", "gpuflex.errors", "gpuflex.backend", "gpuflex.testing"} <= set(PUBLIC_MODULES)
    assert all(hasattr(importlib.import_module(m), "__all__") for m in PUBLIC_MODULES)


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_every_name_in_all_is_importable(module):
    mod = importlib.import_module(module)
    for name in mod.__all__:
        namespace: dict[str, object] = {}
        exec(f"from {module} import {name}", namespace)  # the statement users write
        assert namespace[name] is getattr(mod, name)


def test_every_public_name_of_the_package_is_in_all():
    public = {
        name for name, value in vars(gpuflex).items()
        if not name.startswith("_")
        and not inspect.ismodule(value)  # submodules appear once imported; `errors` is checked below
        and name != "annotations"  # `from __future__ import annotations`
    }
    assert public == set(gpuflex.__all__) - {"__version__", "errors"}
    assert gpuflex.errors is errors


def test_version_is_a_string():
    assert isinstance(gpuflex.__version__, str)
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", gpuflex.__version__)


# -- __module__ ------------------------------------------------------------------------------------------------


def _public_classes() -> list[tuple[str, type]]:
    return [(name, obj) for name in gpuflex.__all__ if isinstance(obj := getattr(gpuflex, name), type)]


@pytest.mark.parametrize(("name", "cls"), _public_classes(), ids=[n for n, _ in _public_classes()])
def test_public_classes_live_in_a_public_module(name, cls):
    assert not any(part.startswith("_") for part in cls.__module__.split("."))
    if cls.__module__ != "gpuflex.errors":
        assert cls.__module__ == "gpuflex"
    # the rewritten path is a real one: importing it gives back the same class
    assert getattr(importlib.import_module(cls.__module__), cls.__qualname__) is cls


def test_private_module_classes_are_rewritten_and_errors_keep_their_module():
    assert gpuflex.Job.__module__ == "gpuflex"
    assert gpuflex.EndpointSpec.__module__ == "gpuflex"
    assert gpuflex.GPU.__module__ == "gpuflex"
    assert gpuflex.GpuflexError.__module__ == "gpuflex.errors"
    assert gpuflex.GpuflexError is errors.GpuflexError
    assert gpuflex.RemoteError is errors.RemoteError


@pytest.mark.parametrize(
    "value",
    [
        gpuflex.JobStatus.COMPLETED,
        gpuflex.EndpointKind.GENERATOR,
        gpuflex.WorkerState.IDLE,
        gpuflex.Price(usd_per_hour=2.5, billing="per-second"),
        gpuflex.Cost(usd=1.0, billed_seconds=2.0, rule="uptime"),
        gpuflex.GPU("H100", 2),
        gpuflex.Resources(cpu=2),
        gpuflex.Stats(endpoints=(gpuflex.EndpointStats(endpoint="e", backend="local", batch_size=gpuflex.Histogram(
            buckets=((1.0, 0), (float("inf"), 2)), count=2, sum=5.0)),),
            workers=(gpuflex.WorkerStats(id="w", endpoint="e", backend="local", state=gpuflex.WorkerState.IDLE),),
            jobs=(gpuflex.JobStats(id="j", endpoint="e", backend="local", status=gpuflex.JobStatus.RUNNING,
                                   submitted_at=1.0),)),
    ],
    ids=repr,
)
def test_rewritten_classes_still_pickle_by_reference(value):
    blob = pickle.dumps(value)
    assert b"gpuflex._" not in blob  # the pickle names the public path
    assert pickle.loads(blob) == value


# -- the error tree ----------------------------------------------------------------------------------------------


def _parse_tree() -> list[tuple[str, str | None, tuple[str, ...]]]:
    """(name, parent, builtin bases) for each entry of the tree in errors.py's docstring."""
    doc = errors.__doc__
    assert doc is not None
    entries: list[tuple[str, str | None, tuple[str, ...]]] = []
    stack: list[str] = []
    in_tree = False
    for line in doc.splitlines():
        if line.strip() == "The tree::":
            in_tree = True
            continue
        if not in_tree or not line.strip():
            continue
        if not line.startswith("    "):
            break  # the prose after the literal block
        match = re.match(r"^(?P<prefix>[ │├└─]*)(?P<name>[A-Z]\w+)(?:\((?P<bases>[\w, ]+)\))?", line)
        assert match, f"cannot parse tree line {line!r}"
        depth = (len(match["prefix"]) - 4) // 4
        del stack[depth:]
        parent = stack[-1] if stack else None
        bases = tuple(b.strip() for b in match["bases"].split(",")) if match["bases"] else ()
        entries.append((match["name"], parent, bases))
        stack.append(match["name"])
    return entries


TREE = _parse_tree()


def test_tree_parses_to_the_documented_shape():
    names = [name for name, _, _ in TREE]
    assert names[0] == "GpuflexError"
    assert ("ConfigError", "GpuflexError", ("ValueError",)) in TREE
    assert ("UnknownBackendError", "PluginError", ("LookupError",)) in TREE
    assert ("WorkerLost", "JobFailed", ()) in TREE
    assert ("JobTimeout", "JobError", ("TimeoutError",)) in TREE


@pytest.mark.parametrize(("name", "parent", "builtins"), TREE, ids=[t[0] for t in TREE])
def test_error_class_matches_the_tree(name, parent, builtins):
    cls = getattr(errors, name)
    expected = {getattr(errors, parent)} if parent else set()
    expected |= {getattr(builtins_module, b) for b in builtins}
    if parent is None and name != "GpuflexError":
        # a second root (RemoteError) is listed apart but still caught by `except GpuflexError`
        assert issubclass(cls, errors.GpuflexError)
        assert expected <= set(cls.__bases__)
    elif parent is None:
        assert cls.__bases__ == (Exception,)
    else:
        assert set(cls.__bases__) == expected


def test_every_error_in_the_module_is_in_the_tree():
    documented = {name for name, _, _ in TREE}
    exported = {
        name for name in errors.__all__
        if issubclass(getattr(errors, name), errors.GpuflexError)
    }
    assert exported == documented


def test_non_error_helpers():
    assert issubclass(errors.GpuflexWarning, UserWarning)
    assert not issubclass(errors.RemoteTraceback, errors.GpuflexError)
    assert "Remote traceback" in str(errors.RemoteTraceback("tb text"))


def test_errors_with_arguments_have_useful_messages():
    unknown = errors.UnknownBackendError("modal", ["local", "b"])
    assert unknown.available == ["b", "local"]
    assert "pip install gpuflex-modal" in str(unknown)
    assert "b, local" in str(unknown)
    mismatch = errors.VersionMismatch("Python", "3.11", "3.12")
    assert "3.11" in str(mismatch) and "3.12" in str(mismatch)
    too_large = errors.PayloadTooLarge(20_000_000, 10_000_000, "runpod")
    assert "20,000,000" in str(too_large) and "runpod" in str(too_large)
    assert errors.JobFailed("x", job_id="j1").job_id == "j1"


# -- @final ------------------------------------------------------------------------------------------------------

FINAL = [
    gpuflex.Job, gpuflex.Endpoint, gpuflex.GPU, gpuflex.EndpointSpec, gpuflex.Resources, gpuflex.Price,
    gpuflex.Cost, gpuflex.Bundle, gpuflex.Stats, gpuflex.EndpointStats, gpuflex.WorkerStats, gpuflex.JobStats,
    gpuflex.Histogram,
]


@pytest.mark.parametrize("cls", FINAL, ids=lambda c: c.__name__)
def test_core_classes_are_final(cls):
    assert getattr(cls, "__final__", False) is True


def test_backend_is_the_extension_point_and_not_final():
    from gpuflex.backend import Backend

    assert not getattr(Backend, "__final__", False)
    assert inspect.isabstract(Backend)


# -- imports under -W error --------------------------------------------------------------------------------------


_IMPORT_EACH_FRESH = """
import importlib, sys
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m.split(".")[0] in ("gpuflex", "gpuflex_local")]:
        del sys.modules[loaded]  # each module first, on its own: catches import cycles that order hides
    importlib.import_module(name)
"""


def test_every_module_imports_cleanly_under_warnings_as_errors():
    import gpuflex_local

    modules = _all_modules() + [
        info.name for info in pkgutil.walk_packages(gpuflex_local.__path__, "gpuflex_local.")
    ]
    assert "gpuflex.client._session" in modules and "gpuflex.testing.pytest_plugin" in modules
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", _IMPORT_EACH_FRESH, *modules], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("module", ["gpuflex", "gpuflex.errors", "gpuflex.hookspecs", "gpuflex.runtime._runner"])
def test_importing_does_not_build_the_plugin_manager(module):
    code = f"import {module}, gpuflex._plugins as p, sys; sys.exit(0 if p._manager is None else 1)"
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
