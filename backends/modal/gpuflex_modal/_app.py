"""Build the ``modal.App``: one Modal class per endpoint, from its :class:`ModalPlan` and the bundle.

Every endpoint (function, generator or class) becomes a class with an ``@modal.enter`` that loads the endpoint
from the bundle in the container (a class endpoint's ``setup()`` runs there, once per container) and one
generator method, ``run``, that takes gpuflex's call envelope as bytes and yields the call's start, its chunks and
its outcome (see ``_runner``). Every call goes through it, so the caller learns when the call really starts.
An endpoint deployed with ``gpuflex deploy`` also has a ``web`` method, an ``@modal.asgi_app`` taking plain JSON
(see ``_web``), and pydantic in its image.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import attrs

from gpuflex.errors import ConfigError

from ._plan import BUNDLE_DIR, ModalPlan

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    import modal

    from gpuflex import Bundle

    from ._config import ModalConfig

__all__ = ["WebSide", "build_app", "endpoint_class", "image_for", "web_requirements"]


@attrs.frozen
class WebSide:
    """A deployed endpoint's web side: its manifest (name, kind, methods, batching, bundle hash) and whether
    callers must send a Modal proxy-auth token (``Modal-Key``/``Modal-Secret``)."""

    manifest: dict[str, Any]
    proxy_auth: bool = True


def web_requirements() -> tuple[str, ...]:
    """What a deployed endpoint's web side adds to the image: pydantic, pinned to this machine's version, so the
    container validates JSON with the same schema as here."""
    import pydantic

    return (f"pydantic=={pydantic.VERSION}",)


def image_for(plan: ModalPlan, bundle: Bundle, *, web: bool = False) -> modal.Image:
    """Debian slim with this Python, the endpoint's system packages (apt), the runtime's packages and the
    endpoint's dependencies (uv), then gpuflex's own source and the bundle as local files (added last: they change
    on every edit, the layers above do not). The bundle lies beside gpuflex's source, in /root. ``web``: a deployed
    endpoint, which also takes plain JSON over HTTP (see ``_web``)."""
    import modal  # here, not at the top: importing modal takes most of a second, and plugins load at start-up

    image = modal.Image.debian_slim(python_version=plan.python_version)
    if plan.apt_packages:
        image = image.apt_install(*plan.apt_packages)
    return (
        image.uv_pip_install(*plan.pip_packages, *(web_requirements() if web else ()))
        .add_local_python_source("gpuflex", "gpuflex_modal")
        .add_local_dir(str(bundle.root), f"/root/{BUNDLE_DIR}")
    )


def endpoint_class(plan: ModalPlan, init: dict[str, Any], web: WebSide | None = None) -> type:
    """A fresh class for one endpoint (Modal serializes it: ``serialized=True``). ``web``: also a web endpoint
    (``@modal.asgi_app``) taking plain JSON, for a deployed endpoint."""
    import modal

    serves_web = web is not None
    manifest = dict(web.manifest) if web is not None else {}
    proxy_auth = web is not None and web.proxy_auth

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

        if serves_web:  # (a name of its own: ``web`` below is the method's, in the class body)
            @modal.asgi_app(requires_proxy_auth=proxy_auth)
            def web(self) -> Any:
                from gpuflex_modal._web import JsonWebApp

                return JsonWebApp(lambda: getattr(self, "runner", None), manifest)

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
              config: ModalConfig, name: str, webs: Mapping[str, WebSide] | None = None) -> \
        tuple[modal.App, dict[str, Any]]:
    """The app holding every planned endpoint; returns it and each endpoint's Modal class. ``webs``: the web side
    of each endpoint of a deployed release."""
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
        web = (webs or {}).get(endpoint)
        cls: Any = endpoint_class(plan, inits[endpoint], web)
        if plan.max_inputs > 1:
            cls = modal.concurrent(max_inputs=plan.max_inputs)(cls)
        classes[endpoint] = app.cls(
            image=image_for(plan, bundles[endpoint], web=web is not None),
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
