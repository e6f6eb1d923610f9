"""``python -m gpuflex._worker_entry``: start a worker (kept apart so importing gpuflex never imports it)."""

from __future__ import annotations

from ._worker import main

if __name__ == "__main__":
    main()
