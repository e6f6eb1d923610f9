"""``python -m gpuflex_runpod.emulator``: the same as the ``gpuflex-runpod-emulator`` command."""

from __future__ import annotations

from . import main

main()
