"""The backend registry: strict about names, lazy, and helpful about unknown backends."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from typing import ClassVar

import pytest
from gpuflex_local import LocalBackend

import gpuflex
from gpuflex import hookimpl
from gpuflex._plugins import get_plugin_manager, reset_plugin_manager
from gpuflex._registry import BackendRegistry, get_registry, reset_registry
from gpuflex.backend import Backend, BackendRef
from gpuflex.errors import PluginError, UnknownBackendError


class _Minimal(Backend):
    async def deploy(self, endpoint, bundle):
        pass

    async def submit(self, call):
        return "h"

    async def status(self, handle):
        raise NotImplementedError

    async def cancel(self, handle):
        pass

    async def aclose(self):
        pass


class AlphaBackend(_Minimal):
    name: ClassVar[str] = "alpha"
    aliases: ClassVar[tuple[str, ...]] = ("a", "first")


class OtherAlphaBackend(_Minimal):
    name: ClassVar[str] = "alpha"


class AliasThief(_Minimal):
    name: ClassVar[str] = "thief"
    aliases: ClassVar[tuple[str, ...]] = ("first",)


class NamedLikeAnAlias(_Minimal):
    name: ClassVar[str] = "a"


class Nameless(_Minimal):
    pass


@pytest.fixture
def fresh():
    """A fresh plugin manager and registry, rebuilt from the environment; reset again afterwards."""
    reset_plugin_manager()
    reset_registry()
    yield
    reset_plugin_manager()
    reset_registry()


# -- registering -------------------------------------------------------------------------------------------------


def test_register_and_get_by_name_and_alias():
    registry = BackendRegistry()
    registry.register(AlphaBackend)
    registry.register(AlphaBackend)  # the same class again is harmless
    assert registry.get("alpha") is AlphaBackend
    assert registry.get("a") is AlphaBackend
    assert registry.get("first") is AlphaBackend


@pytest.mark.parametrize("second", [OtherAlphaBackend, AliasThief, NamedLikeAnAlias], ids=lambda c: c.__name__)
def test_duplicate_names_name_both_classes(second):
    registry = BackendRegistry()
    registry.register(AlphaBackend)
    with pytest.raises(PluginError) as info:
        registry.register(second)
    message = str(info.value)
    assert f"{__name__}.AlphaBackend" in message
    assert f"{__name__}.{second.__qualname__}" in message
    assert "GPUFLEX_DISABLE_PLUGINS" in message
    assert registry.get("alpha") is AlphaBackend  # the first registration stands


@pytest.mark.parametrize("thing", [object, int, "alpha", AlphaBackend(), None],
                         ids=["object", "int", "str", "instance", "None"])
def test_a_non_backend_is_refused(thing):
    with pytest.raises(PluginError, match="not a gpuflex.backend.Backend subclass"):
        BackendRegistry().register(thing)


def test_a_backend_without_a_name_is_refused():
    with pytest.raises(PluginError) as info:
        BackendRegistry().register(Nameless)
    assert f"{__name__}.Nameless" in str(info.value)
    assert "has no `name`" in str(info.value)


# -- unknown names ---------------------------------------------------------------------------------------------


def test_unknown_name_lists_installed_backends_and_the_package_to_install():
    registry = BackendRegistry()
    with pytest.raises(UnknownBackendError) as info:
        registry.get("slurm")
    error = info.value
    assert isinstance(error, PluginError) and isinstance(error, LookupError)
    assert error.name == "slurm"
    assert "local" in error.available
    assert error.available == sorted(error.available)
    assert "pip install gpuflex-slurm" in str(error)
    assert "local" in str(error)


def test_unknown_name_that_is_not_a_package_name():
    with pytest.raises(UnknownBackendError, match="check the spelling"):
        BackendRegistry().get("no such backend!")


# -- the installed registry -----------------------------------------------------------------------------------


def test_list_backends_contains_local():
    names = gpuflex.list_backends()
    assert "local" in names
    assert names == sorted(names)
    assert "local-cuda" not in names  # aliases are not backends


def test_alias_resolves_to_the_local_backend():
    assert get_registry().get("local-cuda") is get_registry().get("local") is LocalBackend


def test_describe_reports_installed_backends():
    rows = {row["name"]: row for row in get_registry().describe()}
    assert rows["local"]["aliases"] == ["local-cuda"]
    assert rows["local"]["capabilities"]["streaming"] is None


def test_describe_reports_the_distribution_version():
    from importlib import metadata

    rows = {row["name"]: row for row in get_registry().describe()}
    assert rows["local"]["version"] == metadata.version("gpuflex-local")


def test_registry_is_lazy(fresh):
    registry = get_registry()
    assert registry._collected is False
    assert registry.get("local") is LocalBackend
    assert registry._collected is True
    assert get_registry() is registry


def test_registered_backends_are_found_before_scanning_plugins(fresh):
    registry = get_registry()
    registry.register(AlphaBackend)
    assert registry.get("a") is AlphaBackend
    assert registry._collected is False  # no entry point scan was needed


def test_disabled_plugin_is_blocked(fresh, monkeypatch):
    monkeypatch.setenv("GPUFLEX_DISABLE_PLUGINS", "local, some-other")
    reset_plugin_manager()
    reset_registry()
    assert get_plugin_manager().is_blocked("local")
    assert get_plugin_manager().is_blocked("some-other")
    assert "local" not in gpuflex.list_backends()
    with pytest.raises(UnknownBackendError) as info:
        get_registry().get("local")
    assert "local" not in info.value.available
    assert "pip install gpuflex-local" in str(info.value)


def test_disabling_is_undone_by_a_reset(fresh, monkeypatch):
    monkeypatch.setenv("GPUFLEX_DISABLE_PLUGINS", "local")
    reset_plugin_manager()
    reset_registry()
    assert "local" not in gpuflex.list_backends()
    monkeypatch.delenv("GPUFLEX_DISABLE_PLUGINS")
    reset_plugin_manager()
    reset_registry()
    assert "local" in gpuflex.list_backends()


class BetaBackend(_Minimal):
    name: ClassVar[str] = "beta"


class TwoBackends:
    @hookimpl
    def gpuflex_register_backends(self):
        return [AlphaBackend, BetaBackend]


class Clash:
    @hookimpl
    def gpuflex_register_backends(self):
        return OtherAlphaBackend


def test_a_plugin_may_register_several_backends(fresh):
    get_plugin_manager().register(TwoBackends())
    assert {"alpha", "beta", "local"} <= set(gpuflex.list_backends())
    assert get_registry().get("first") is AlphaBackend


def test_two_plugins_with_one_name_fail_collection(fresh):
    pm = get_plugin_manager()
    pm.register(TwoBackends())
    pm.register(Clash())
    with pytest.raises(PluginError) as info:
        gpuflex.list_backends()
    assert "AlphaBackend" in str(info.value) and "OtherAlphaBackend" in str(info.value)


# -- registering by name (BackendRef): imported on first use ------------------------------------------------------


def test_a_ref_is_imported_only_when_its_backend_is_asked_for():
    registry = BackendRegistry()
    registry.register(BackendRef(name="alpha", target=f"{__name__}:AlphaBackend", aliases=("a", "first")))
    assert registry.names() != [] and "alpha" in registry._refs
    assert registry.get("first") is AlphaBackend
    assert "alpha" not in registry._refs and registry.get("alpha") is AlphaBackend


def test_a_ref_and_a_class_cannot_share_a_name():
    registry = BackendRegistry()
    registry.register(BackendRef(name="alpha", target="somewhere.else:Alpha"))
    with pytest.raises(PluginError, match="two backends are named 'alpha'.*somewhere.else:Alpha"):
        registry.register(OtherAlphaBackend)


@pytest.mark.parametrize(("ref", "message"), [
    (BackendRef(name="beta", target=f"{__name__}:AlphaBackend", aliases=("a", "first")), "named 'alpha'"),
    (BackendRef(name="alpha", target=f"{__name__}:AlphaBackend"), "aliases"),
    (BackendRef(name="alpha", target=f"{__name__}:Nameless_missing"), "AttributeError"),
    (BackendRef(name="alpha", target="no_such_module_anywhere:Alpha"), "ModuleNotFoundError"),
    (BackendRef(name="alpha", target=f"{__name__}.AlphaBackend"), "package.module:ClassName"),
    (BackendRef(name="alpha", target=f"{__name__}:pytest"), "not a gpuflex.backend.Backend subclass"),
])
def test_a_ref_that_does_not_load_says_why(ref, message):
    registry = BackendRegistry()
    registry.register(ref)
    with pytest.raises(PluginError, match=message):
        registry.get(ref.name)


def test_a_process_using_the_local_backend_imports_no_other_backend(tmp_path):
    """The installed backends register by name: a first call on the local backend imports none of the others
    (RunPod's imports alone cost ~400 ms of every process's first call before)."""
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "app.py").write_text(
        "import sys\nimport gpuflex\n\n@gpuflex.endpoint\ndef double(x):\n    return 2 * x\n\n"
        "if __name__ == '__main__':\n"
        "    assert double(4) == 8\n"
        "    used = {m.split('.')[0] for m in sys.modules if m.startswith('gpuflex_') and '.' in m\n"
        "            and not m.endswith('.plugin')}\n"
        "    print(sorted(used | {'ray', 'modal', 'runpod'} & set(sys.modules)))\n"
        "    print(sorted(gpuflex.list_backends()))\n")
    done = subprocess.run([sys.executable, "app.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "GPUFLEX_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr
    imported, listed = map(ast.literal_eval, done.stdout.strip().splitlines()[-2:])
    assert "gpuflex_local" in imported, done.stdout  # the other plugins' packages hold only their entry point
    assert not {"gpuflex_pod", "gpuflex_modal", "gpuflex_ray", "gpuflex_runpod", "ray", "modal", "runpod"} & set(
        imported), done.stdout
    assert {"local", "pod", "serverless"} <= set(listed)
