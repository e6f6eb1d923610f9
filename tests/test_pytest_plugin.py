"""The pytest plugin shipped for backend authors: fixtures and options, exercised in a real pytest run."""

from __future__ import annotations

import gpuflex

pytest_plugins = ["pytester"]


def test_gpuflex_backend_is_parametrized_over_installed_backends(pytester):
    pytester.makepyfile(
        """
        def test_factory_builds_a_fresh_backend(gpuflex_backend):
            first, second = gpuflex_backend(), gpuflex_backend()
            assert first is not second and first.name == second.name
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs", "-v")  # one Ray probe per process
    outcomes = result.parseoutcomes()
    # every installed backend (by name: none is imported here) ran or was skipped with the reason, never failed
    assert outcomes.get("passed", 0) + outcomes.get("skipped", 0) == len(gpuflex.list_backends()), outcomes
    assert "failed" not in outcomes and "error" not in outcomes, outcomes
    result.stdout.fnmatch_lines(["*test_factory_builds_a_fresh_backend*local*PASSED*"])
    if outcomes.get("skipped"):  # the others (no credentials, no hosts here)
        result.stdout.fnmatch_lines(["*cannot run here with its default options*--backend*"])


def test_backend_option_narrows_the_fixture(pytester):
    pytester.makepyfile(
        """
        def test_only_local(gpuflex_backend):
            assert gpuflex_backend().name == "local"
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider", "--backend", "local")
    result.assert_outcomes(passed=1)


def test_live_tests_are_skipped_without_run_live(pytester):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.live
        def test_talks_to_a_cloud():
            raise AssertionError("must not run without --run-live")
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(skipped=1)
    pytester.runpytest("-p", "no:cacheprovider", "--run-live").assert_outcomes(failed=1)


def test_conformance_check_fixture_lists_every_check(pytester):
    pytester.makepyfile(
        """
        from gpuflex.testing import CHECKS

        seen = []

        def test_each(conformance_check):
            assert conformance_check in CHECKS
            seen.append(conformance_check)
        """
    )
    from gpuflex.testing import CHECKS

    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=len(CHECKS))
