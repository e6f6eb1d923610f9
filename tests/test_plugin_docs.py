"""The test examples in docs/plugins/testing-a-backend.md run as written, with the template's names for acme's
(as the template's own rename recipe maps them): a backend author can copy them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import gpuflex

pytest_plugins = ["pytester"]

PAGE = Path(__file__).resolve().parents[1] / "docs" / "plugins" / "testing-a-backend.md"
RENAMES = [("gpuflex_acme", "gpuflex_subprocess_example"), ("AcmeBackend", "SubprocessBackend"),
           ("AcmeConfig", "SubprocessConfig"), ('"acme"', '"subprocess-example"')]


def _examples() -> dict[str, str]:
    """Python blocks that open with ``# tests/<file>.py``, by file name, with the template's names."""
    found = {}
    for block in re.findall(r"```python\n(# tests/(\w+\.py)\n.*?)```", PAGE.read_text(), flags=re.S):
        source, name = block
        for old, new in RENAMES:
            source = source.replace(old, new)
        found[name] = source
    return found


def test_the_page_has_the_examples():
    assert {"test_conformance.py", "test_registration.py", "test_every_backend.py"} <= set(_examples())


def test_the_registration_example_passes(pytester):
    pytester.makepyfile(test_registration=_examples()["test_registration.py"])
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_the_conformance_example_passes(pytester):
    pytester.makepyfile(test_conformance=_examples()["test_conformance.py"])
    pytester.runpytest("-p", "no:cacheprovider", "-k", "check_function").assert_outcomes(passed=1)


def test_the_every_backend_example_runs_or_skips_each_backend(pytester):
    pytest.importorskip("gpuflex_subprocess_example")
    pytester.makepyfile(test_every_backend=_examples()["test_every_backend.py"])
    result = pytester.runpytest("-p", "no:cacheprovider", "-k", "check_function")
    outcomes = result.parseoutcomes()
    assert "failed" not in outcomes and "error" not in outcomes, result.stdout.str()
    assert outcomes.get("passed", 0) >= 2  # local and the template run here, with no credentials
    assert outcomes.get("passed", 0) + outcomes.get("skipped", 0) == len(gpuflex.list_backends())
