"""Build the ``modal.App``: one Modal class per endpoint, from its :class:`ModalPlan` and the bundle.

Every endpoint (function, generator or class) becomes a class with an ``@modal.enter`` that loads the endpoint
from the bundle in the container (a class endpoint's ``setup()`` runs there, once per container) and one
generator method, ``run``, that takes gpuflex's call envelope as bytes and yields the call's start, its chunks and
its outcome (see ``_runner``). Every call goes through it, so the caller learns when the call really starts.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from gpuflex.errors import ConfigError

from ._plan import BUNDLE_DIR, ModalPlan

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    import modal

    from gpuflex import Bundle

    from ._config import ModalConfig

__all__ = ["build_app", "endpoint_class", "image_for"]


def image_for(plan: ModalPlan, bundle: Bundle) -> modal.Image:
    """Debian slim with this Python, the endpoint's system packages (apt), the runtime's packages and the
    endpoint's dependencies (uv), then gpuflex's own source and the bundle as local files (added last: they change
    on every edit, the layers above do not). The bundle lies beside gpuflex's source, in /root."""
    import modal  # here, not at the top: importing modal takes most of a second, and plugins load at start-up

    image = modal.Image.debian_slim(python_version=plan.python_version)
    if plan.apt_packages:
        image = image.apt_install(*plan.apt_packages)
    return (
        image.uv_pip_install(*plan.pip_packages)
        .add_local_python_source("gpuflex", "gpuflex_modal")
        .add_local_dir(str(bundle.root), f"/root/{BUNDLE_DIR}")
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
        async def run(self, payload: bytes) -> AsyncIterator[tuple[Any, ...]]:
            async for item in self.runner.run(payload):
                yield item

    Endpoint.__name__ = Endpoint.__qualname__ = plan.class_name
    return Endpoint


def _secrets(plan: ModalPlan, config: ModalConfig) -> list[Any]:
    import modal

    if not plan.secrets:
        return []
    if config.secrets_from == "modal":  # the Secret must hold a key of its own name: checked when it is looked up
        return [modal.Secret.from_name(name, required_keys=[name]) for name in plan.secrets]
    missing = [name for name in plan.secrets if name not in os.environ]
    if missing:
        raise ConfigError(f"endpoint {plan.endpoint!r} needs the secret(s) {', '.join(missing)}, which are not set "
                          "in this environment (secrets_from='local')")
    return [modal.Secret.from_dict({name: os.environ[name] for name in plan.secrets})]


def build_app(plans: Mapping[str, ModalPlan], inits: Mapping[str, dict[str, Any]], bundles: Mapping[str, Bundle],
              config: ModalConfig, name: str) -> tuple[modal.App, dict[str, Any]]:
    """The app holding every planned endpoint; returns it and each endpoint's Modal class."""
    import modal

    seen: dict[str, str] = {}
    for endpoint, plan in plans.items():
        if plan.class_name in seen:  # Modal would silently keep only one of them
            raise ConfigError(f"endpoints {seen[plan.class_name]!r} and {endpoint!r} map to the same Modal class "
                              f"name {plan.class_name!r}; rename one")
        seen[plan.class_name] = endpoint
    app = modal.App(name)
    classes: dict[str, Any] = {}
    for endpoint, plan in plans.items():
        cls: Any = endpoint_class(plan, inits[endpoint])
        if plan.max_inputs > 1:
            cls = modal.concurrent(max_inputs=plan.max_inputs)(cls)
        classes[endpoint] = app.cls(
            image=image_for(plan, bundles[endpoint]),
            gpu=plan.gpu,
            cpu=plan.cpu,
            memory=plan.memory,
            min_containers=plan.min_containers,
            max_containers=plan.max_containers,
            scaledown_window=plan.scaledown_window,
            timeout=plan.timeout,
            startup_timeout=plan.startup_timeout,
            env=dict(plan.env) or None,
            secrets=_secrets(plan, config),
            serialized=True,
        )(cls)
    return app, classes
