"""Tests of the example backend (a package, so its test modules do not clash with other backends' in one run)."""
