"""The dev server (``gpuflex serve``): every endpoint of an app file over JSON, async jobs, server-sent events,
hot reload on save. ``create_app`` builds the FastAPI application."""

from ._app import check_bind, create_app, is_loopback

__all__ = ["check_bind", "create_app", "is_loopback"]
