"""Backend selection order and backend options, from code, plugins, the environment and project files."""

from __future__ import annotations

import textwrap

import pytest

import gpuflex
from gpuflex import hookimpl
from gpuflex._config import (
    DEFAULT_BACKEND,
    BackendChoice,
    current_use,
    load_project_config,
    reload_project_config,
    resolve_backend,
)
from gpuflex._models import EndpointKind, EndpointSpec, FunctionRef
from gpuflex._plugins import get_plugin_manager
from gpuflex.errors import ConfigError, UnknownBackendError

SPEC = EndpointSpec(name="ep", kind=EndpointKind.FUNCTION, target=FunctionRef(module="m", qualname="f"))


@gpuflex.endpoint(name="config_never_runs")
def never_runs() -> None:
    raise AssertionError("resolving the backend fails before any worker starts")


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty project directory as the working directory, with no GPUFLEX_BACKEND."""
    monkeypatch.delenv("GPUFLEX_BACKEND", raising=False)
    monkeypatch.chdir(tmp_path)
    reload_project_config()
    yield tmp_path
    reload_project_config()  # the next reader sees the real working directory again


class Selector:
    def __init__(self, answer: str | None) -> None:
        self.answer = answer
        self.calls: list[EndpointSpec] = []

    @hookimpl
    def gpuflex_select_backend(self, spec):
        self.calls.append(spec)
        return self.answer


@pytest.fixture
def selector():
    pm = get_plugin_manager()
    plugin = Selector(None)
    pm.register(plugin, name="test-config-selector")
    yield plugin
    pm.unregister(plugin)


def write(path, text: str) -> None:
    path.write_text(textwrap.dedent(text))


# -- the order ---------------------------------------------------------------------------------------------------

LEVELS = ["explicit", "use", "hook", "per-endpoint", "env", "project", "default"]


@pytest.mark.parametrize("strongest", LEVELS)
@pytest.mark.parametrize("filename", ["gpuflex.toml", "pyproject.toml"])
def test_selection_order(project, selector, monkeypatch, strongest, filename):
    """Every source from ``strongest`` down is set, each naming a different backend: ``strongest`` wins."""
    active = LEVELS[LEVELS.index(strongest):]
    prefix = "[tool.gpuflex]\n" if filename == "pyproject.toml" else ""
    table = "tool.gpuflex." if filename == "pyproject.toml" else ""
    body = prefix
    if "project" in active:
        body += 'backend = "from-project"\n'
    if "per-endpoint" in active:
        body += f'[{table}endpoints.ep]\nbackend = "from-endpoint-entry"\n'
    write(project / filename, body)
    reload_project_config()
    if "env" in active:
        monkeypatch.setenv("GPUFLEX_BACKEND", "from-env")
    if "hook" in active:
        selector.answer = "from-hook"
    explicit = "from-explicit" if "explicit" in active else None
    expected = {
        "explicit": "from-explicit", "use": "from-use", "hook": "from-hook", "per-endpoint": "from-endpoint-entry",
        "env": "from-env", "project": "from-project", "default": DEFAULT_BACKEND,
    }[strongest]
    if "use" in active:
        with gpuflex.use("from-use"):
            choice = resolve_backend("ep", explicit, SPEC)
    else:
        choice = resolve_backend("ep", explicit, SPEC)
    assert choice.name == expected
    # the hook is asked only when neither the endpoint nor gpuflex.use decided
    assert selector.calls == ([SPEC] if strongest not in ("explicit", "use") else [])


def test_default_is_local(project):
    assert DEFAULT_BACKEND == "local"
    assert resolve_backend("ep", None, SPEC) == BackendChoice("local", {})


def test_hook_returning_none_falls_through(project, selector, monkeypatch):
    monkeypatch.setenv("GPUFLEX_BACKEND", "from-env")
    assert resolve_backend("ep", None, SPEC).name == "from-env"
    assert selector.calls == [SPEC]


def test_hook_is_not_asked_without_a_spec(project, selector):
    selector.answer = "from-hook"
    assert resolve_backend("ep", None).name == "local"
    assert selector.calls == []


def test_per_endpoint_entry_applies_only_to_that_endpoint(project):
    write(project / "gpuflex.toml", """
        backend = "default-one"
        [endpoints.ep]
        backend = "special"
    """)
    reload_project_config()
    assert resolve_backend("ep", None, SPEC).name == "special"
    assert resolve_backend("other", None, SPEC).name == "default-one"


def test_use_nests_and_restores(project):
    assert current_use() is None
    with gpuflex.use("outer", a=1) as outer:
        assert outer == BackendChoice("outer", {"a": 1})
        with gpuflex.use("inner"):
            assert resolve_backend("ep", None, SPEC).name == "inner"
        assert resolve_backend("ep", None, SPEC) == BackendChoice("outer", {"a": 1})
    assert current_use() is None
    assert resolve_backend("ep", None, SPEC).name == "local"


@pytest.mark.parametrize("name", ["", None, 3])
def test_use_needs_a_name(name):
    with pytest.raises(ConfigError, match="needs a backend name"), gpuflex.use(name):
        pass


# -- options -----------------------------------------------------------------------------------------------------


def test_options_merge_project_table_then_use(project):
    write(project / "pyproject.toml", """
        [project]
        name = "demo"

        [tool.gpuflex.backends.local]
        hourly_rate = 1.5
        prefetch = 2

        [tool.gpuflex.backends.other]
        region = "eu"
    """)
    reload_project_config()
    assert resolve_backend("ep", None, SPEC) == BackendChoice("local", {"hourly_rate": 1.5, "prefetch": 2})
    with gpuflex.use("local", hourly_rate=9.0, strict_gpu=True):
        choice = resolve_backend("ep", None, SPEC)
        assert choice.options == {"hourly_rate": 9.0, "prefetch": 2, "strict_gpu": True}
        # an endpoint that names the same backend keeps use()'s options...
        assert resolve_backend("ep", "local", SPEC).options == choice.options
        # ...one that names another gets only that backend's table
        assert resolve_backend("ep", "other", SPEC) == BackendChoice("other", {"region": "eu"})


def test_choice_key_ignores_option_order():
    assert BackendChoice("b", {"x": 1, "y": 2}).key() == BackendChoice("b", {"y": 2, "x": 1}).key()
    assert BackendChoice("b", {"x": 1}).key() != BackendChoice("b", {"x": 2}).key()


def test_bad_backend_options_are_a_config_error(project):
    with gpuflex.use("local", no_such_option=1), pytest.raises(ConfigError) as info:
        never_runs()
    assert "bad options for the local backend" in str(info.value)
    assert "no_such_option" in str(info.value)


def test_project_file_backend_reaches_the_public_api(project):
    write(project / "gpuflex.toml", 'backend = "not-installed-anywhere"\n')
    reload_project_config()
    with pytest.raises(UnknownBackendError) as info:
        never_runs()
    assert info.value.name == "not-installed-anywhere"


# -- project files ----------------------------------------------------------------------------------------------


def test_gpuflex_toml_is_read(project):
    write(project / "gpuflex.toml", """
        backend = "runpod"
        max_cost = 5
        [endpoints.embed]
        backend = "modal"
        [backends.runpod]
        region = "eu"
    """)
    config = load_project_config(project)
    assert config.path == project / "gpuflex.toml"
    assert config.backend == "runpod"
    assert config.endpoints == {"embed": {"backend": "modal"}}
    assert config.backends == {"runpod": {"region": "eu"}}
    assert config.settings == {"max_cost": 5}


def test_pyproject_without_a_gpuflex_table_is_skipped(project):
    write(project / "gpuflex.toml", 'backend = "from-parent"\n')
    sub = project / "pkg" / "sub"
    sub.mkdir(parents=True)
    write(project / "pkg" / "pyproject.toml", '[project]\nname = "x"\n')
    assert load_project_config(sub).backend == "from-parent"
    assert load_project_config(sub).path == project / "gpuflex.toml"


def test_nearest_project_file_wins(project):
    write(project / "gpuflex.toml", 'backend = "outer"\n')
    inner = project / "inner"
    inner.mkdir()
    write(inner / "pyproject.toml", '[tool.gpuflex]\nbackend = "inner"\n')
    assert load_project_config(inner).backend == "inner"
    assert load_project_config(project).backend == "outer"


def test_gpuflex_toml_beats_pyproject_in_the_same_directory(project):
    write(project / "pyproject.toml", '[tool.gpuflex]\nbackend = "py"\n')
    write(project / "gpuflex.toml", 'backend = "toml"\n')
    assert load_project_config(project).backend == "toml"


def test_no_project_file(project):
    config = load_project_config(project)
    assert config.path is None and config.backend is None and dict(config.endpoints) == {}


def test_start_directory_is_cached_until_reload(project):
    write(project / "gpuflex.toml", 'backend = "first"\n')
    reload_project_config()
    assert load_project_config().backend == "first"
    write(project / "gpuflex.toml", 'backend = "second"\n')
    assert load_project_config().backend == "first"
    reload_project_config()
    assert load_project_config().backend == "second"


@pytest.mark.parametrize("filename", ["gpuflex.toml", "pyproject.toml"])
def test_invalid_toml_names_the_file(project, filename):
    (project / filename).write_text("[tool.gpuflex\nbackend = ")
    reload_project_config()
    with pytest.raises(ConfigError) as info:
        load_project_config()
    assert str(project / filename) in str(info.value)
    assert "not valid TOML" in str(info.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("backend = 3\n", "'backend' must be a string"),
        ('endpoints = "x"\n', "'endpoints' must be a table"),
        ("backends = [1]\n", "'backends' must be a table"),
    ],
)
def test_invalid_values_name_the_file(project, text, fragment):
    write(project / "gpuflex.toml", text)
    with pytest.raises(ConfigError) as info:
        load_project_config(project)
    assert fragment in str(info.value)
    assert str(project / "gpuflex.toml") in str(info.value)
