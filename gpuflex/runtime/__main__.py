"""``python -m gpuflex.runtime``: start a worker."""

from __future__ import annotations

from ._runner import main

if __name__ == "__main__":
    main()
