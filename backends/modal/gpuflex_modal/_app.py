"""Build the ``modal.App``: one Modal class per endpoint, from its :class:`ModalPlan` and the bundle.

Every endpoint (function, generator or class) becomes a class with an ``@modal.enter`` that loads the endpoint
from the bundle in the container (a class endpoint's ``setup()`` runs there, once per container), a ``call``
method for one call and a ``stream`` method for generators, both speaking gpuflex's call envelope as bytes.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from gpuflex.errors import ConfigError

from ._plan import BUNDLE_PATH, ModalPlan

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    import modal

    from gpuflex import Bundle

    from ._config import ModalConfig

__all__ = ["build_app", "endpoint_class", "image_for"]


def image_for(plan: ModalPlan, bundle: Bundle) -> modal.Image:
    """Debian slim with this Python, the runtime's packages and the endpoint's dependencies (uv), then gpuflex's
    own source and the bundle as local files (added last: they change on every edit, the layers above do not)."""
    import modal  # here, not at the top: importing modal takes most of a second, and plugins load at start-up

    return (
        modal.Image.debian_slim(python_version=plan.python_version)
        .uv_pip_install(*plan.pip_packages)
        .add_local_python_source("gpuflex", "gpuflex_modal")
        .add_local_dir(str(bundle.root), BUNDLE_PATH)
    )


def endpoint_class(plan: ModalPlan, init: dict[str, Any]) -> type:
    """A fresh class for one endpoint (Modal serializes it: ``serialized=True``)."""
    import modal

    class Endpoint:
        @modal.enter()
        async def load(self) -> None:
            from gpuflex_modal._runner import EndpointRunner

            self.runner = EndpointRunner(init)
            await self.runner.start()

        @modal.method()
        async def call(self, payload: bytes) -> tuple[str, bytes, str]:
            return await self.runner.call(payload)

        @modal.method()
        async def stream(self, payload: bytes) -> AsyncIterator[tuple[str, bytes]]:
            async for item in self.runner.stream(payload):
                yield item

    Endpoint.__name__ = Endpoint.__qualname__ = plan.class_name
    return Endpoint


def _secrets(plan: ModalPlan, config: ModalConfig) -> list[Any]:
    import modal

    if not plan.secrets:
        return []
    if config.secrets_from == "modal":
        return [modal.Secret.from_name(name) for name in plan.secrets]
    missing = [name for name in plan.secrets if name not in os.environ]
    if missing:
        raise ConfigError(f"endpoint {plan.endpoint!r} needs the secret(s) {', '.join(missing)}, which are not set "
                          "in this environment (secrets_from='local')")
    return [modal.Secret.from_dict({name: os.environ[name] for name in plan.secrets})]


def build_app(plans: Mapping[str, ModalPlan], inits: Mapping[str, dict[str, Any]], bundles: Mapping[str, Bundle],
              config: ModalConfig) -> tuple[modal.App, dict[str, Any]]:
    """The app holding every planned endpoint; returns it and each endpoint's Modal class."""
    import modal

    app = modal.App(config.app_name)
    classes: dict[str, Any] = {}
    for name, plan in plans.items():
        cls: Any = endpoint_class(plan, inits[name])
        if plan.max_inputs > 1:
            cls = modal.concurrent(max_inputs=plan.max_inputs)(cls)
        classes[name] = app.cls(
            image=image_for(plan, bundles[name]),
            gpu=plan.gpu,
            min_containers=plan.min_containers,
            max_containers=plan.max_containers,
            scaledown_window=plan.scaledown_window,
            timeout=plan.timeout,
            retries=plan.retries or None,
            env=dict(plan.env) or None,
            secrets=_secrets(plan, config),
            serialized=True,
        )(cls)
    return app, classes

