"""Endpoint identity across re-imports: a changed decorator redeploys, two endpoints may not share a name."""

from __future__ import annotations

import importlib
import sys

import pytest

import gpuflex
from gpuflex.errors import ConfigError

SOURCE = '''
import os

import gpuflex


@gpuflex.endpoint(name="{name}", env={{"GREETING": "{greeting}"}})
def {func}() -> str:
    return os.environ["GREETING"]
'''


@pytest.fixture
def project(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'rebind'\n")
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("rebind_")]:
        del sys.modules[name]
    gpuflex.shutdown()


def test_changed_options_are_deployed_after_a_reimport(project):
    source = project / "rebind_app.py"
    source.write_text(SOURCE.format(name="rebind_greet", greeting="hello", func="greet"))
    module = importlib.import_module("rebind_app")
    assert module.greet() == "hello"
    source.write_text(SOURCE.format(name="rebind_greet", greeting="bonjour", func="greet"))
    module = importlib.reload(module)  # what the dev server does on save
    gpuflex.reload()
    assert module.greet() == "bonjour", "the new env= was not deployed"


def test_two_endpoints_with_one_name_are_refused(project):
    (project / "rebind_one.py").write_text(SOURCE.format(name="rebind_same", greeting="one", func="first"))
    (project / "rebind_two.py").write_text(SOURCE.format(name="rebind_same", greeting="two", func="second"))
    one = importlib.import_module("rebind_one")
    two = importlib.import_module("rebind_two")
    assert one.first() == "one"
    with pytest.raises(ConfigError) as info:
        two.second()
    assert "rebind_one:first" in str(info.value) and "rebind_two:second" in str(info.value)
    assert one.first() == "one", "the first endpoint must keep working"


def test_class_instance_maps_and_spawns_its_call(project):
    (project / "rebind_cls.py").write_text(
        "import gpuflex\n\n\n@gpuflex.endpoint(name='rebind_cls')\nclass Add:\n"
        "    def __call__(self, x: int) -> int:\n        return x + 1\n"
    )
    module = importlib.import_module("rebind_cls")
    adder = module.Add()
    assert list(adder.map([1, 2, 3])) == [2, 3, 4]
    assert adder.spawn(5).result(timeout=60) == 6
