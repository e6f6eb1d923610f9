"""Load a user's app file (``gpuflex serve app.py``, ``plan``, ``deploy``) and find its endpoints.

The file is imported under a private module name, so its ``if __name__ == "__main__":`` block does not run, and
importing it again (hot reload) replaces the old module. Endpoints defined in the file are pointed at the file
itself (``FunctionRef.path``), as scripts run with ``python app.py`` are, so workers import it from the bundle.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import cloudpickle

from .client._endpoint import Endpoint
from .errors import ConfigError

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["LoadedApp", "load_app", "module_name_for"]


@attrs.frozen
class LoadedApp:
    path: Path
    module: ModuleType
    endpoints: dict[str, Endpoint[Any, Any]]


def module_name_for(path: Path) -> str:
    stem = re.sub(r"\W", "_", path.stem)
    return f"__gpuflex_app_{stem}__"


def load_app(path: str | Path) -> LoadedApp:
    """Import ``path`` (again, if it was imported before) and return its endpoints.

    Raises whatever the file raises on import (a ``SyntaxError``, say); ``sys.modules`` then still holds the
    previous version of the module, if any.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise ConfigError(f"no such app file: {path}")
    name = module_name_for(path)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get(name)
    sys.modules[name] = module
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))  # sibling modules import as they do under ``python app.py``
    try:
        spec.loader.exec_module(module)
    except BaseException:
        if previous is not None:
            sys.modules[name] = previous
        else:
            sys.modules.pop(name, None)
        raise
    cloudpickle.register_pickle_by_value(module)  # the app's own classes travel by value, as a script's do
    return LoadedApp(path, module, _endpoints(module, path))


def _endpoints(module: ModuleType, path: Path) -> dict[str, Endpoint[Any, Any]]:
    found: dict[str, Endpoint[Any, Any]] = {}
    for value in vars(module).values():
        if not isinstance(value, Endpoint):
            continue
        other = found.get(value.name)
        if other is not None and other is not value:
            raise ConfigError(f"{path}: two endpoints are named {value.name!r}; give one another name=")
        if value.spec.target.module == module.__name__ and value.spec.target.pickled is None:
            _point_at_file(value, path)
        found[value.name] = value
    return dict(sorted(found.items()))


def _point_at_file(ep: Endpoint[Any, Any], path: Path) -> None:
    """Workers cannot import our private module name: make them import the file, as for ``__main__``."""
    root = ep.project_root.resolve()
    try:
        script = path.relative_to(root).as_posix()
        import_path = path.parent.relative_to(root).as_posix() or "."
    except ValueError:
        return
    target = attrs.evolve(ep.spec.target, path=script, import_path=import_path)
    ep.spec = attrs.evolve(ep.spec, target=target)
