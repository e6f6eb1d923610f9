"""The ``gpuflex`` command line: ``serve``, ``run``, ``plan``, ``deploy``, ``teardown``, ``backends``, ``jobs``,
``costs``. ``app`` is the typer application; ``main`` the console script."""

from ._main import app, main

__all__ = ["app", "main"]
