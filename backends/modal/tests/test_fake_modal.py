"""The fake refuses what Modal's servers refuse where Modal's client sends it unchecked: GPU types and counts per
type, function names, inputs sent inline over the limit. Driven with the unmodified ``modal`` client alone."""

from __future__ import annotations

import pytest


@pytest.fixture
def modal_client(fake_modal):
    from modal.client import Client
    from modal_proto import api_pb2

    with Client(fake_modal.url, api_pb2.CLIENT_TYPE_CLIENT, ("ak-test", "as-test")) as client:
        yield client


def _app_with(name: str, **options):
    import modal

    app = modal.App("fake-checks")

    def make():
        class Probe:
            @modal.method()
            def echo(self, value):
                return value

        Probe.__name__ = Probe.__qualname__ = name
        return Probe

    cls = app.cls(serialized=True, **options)(make())
    return app, cls


@pytest.mark.parametrize(("gpu", "match"), [("A10:8", "at most 4"), ("H100:9", "at most 8"), ("V100", "Unknown")])
def test_gpu_requests_modal_refuses(modal_client, gpu, match):
    import modal

    app, _ = _app_with("Probe", gpu=gpu)
    with pytest.raises(modal.exception.InvalidError, match=match), app.run(client=modal_client):
        pass


def test_function_names_modal_refuses(modal_client):
    import modal

    app, _ = _app_with("Probe_\u00e9t\u00e9")
    with pytest.raises(modal.exception.InvalidError, match="function name"), app.run(client=modal_client):
        pass


def test_inputs_sent_inline_over_the_limit(fake_modal, modal_client):
    import _fake_modal
    import modal

    app, cls = _app_with("Probe")
    fake_modal.servicer.advertised_inline_bytes = 8 * 2**20  # tell the client more than the server takes
    with app.run(client=modal_client):
        with pytest.raises(modal.exception.InvalidError, match="inline"):
            cls().echo.remote(b"x" * (_fake_modal.MAX_INLINE_BYTES + 1024))
