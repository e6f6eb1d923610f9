"""The worker runtime: the one small program that runs calls on every target (``python -m gpuflex.runtime``).

It imports nothing from the client, the dev server or the CLI. Backends reach it through :mod:`gpuflex.worker`.
"""

__all__: list[str] = []
