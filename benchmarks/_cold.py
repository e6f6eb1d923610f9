"""One cold start, in a fresh interpreter: ``python benchmarks/_cold.py gpuflex|ppe`` prints one JSON line.

gpuflex: import gpuflex (and its public names, which load on first use), import a ``min_workers=0``
endpoint, then time its first call (session, bundle, worker
start, call) and a second, warm one. ppe: the first result of a fresh ``ProcessPoolExecutor(2)``.
"""

from __future__ import annotations

import json
import sys
import time


def cold_gpuflex() -> dict[str, float]:
    started = time.perf_counter()
    import gpuflex

    gpuflex.endpoint  # noqa: B018 - the public names load on first use: count them as part of the import
    imported = time.perf_counter()
    from _endpoints import cold_noop_ep

    defined = time.perf_counter()
    cold_noop_ep(1)
    first = time.perf_counter()
    cold_noop_ep(2)
    second = time.perf_counter()
    gpuflex.shutdown()
    stopped = time.perf_counter()
    return {"import_s": imported - started, "define_s": defined - imported, "first_call_s": first - defined,
            "second_call_s": second - first, "shutdown_s": stopped - second}


def cold_ppe() -> dict[str, float]:
    started = time.perf_counter()
    import concurrent.futures

    from _endpoints import noop

    imported = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        pool.submit(noop, 1).result()
        first = time.perf_counter()
        pool.submit(noop, 2).result()
        second = time.perf_counter()
    stopped = time.perf_counter()
    return {"import_s": imported - started, "first_call_s": first - imported, "second_call_s": second - first,
            "shutdown_s": stopped - second}


if __name__ == "__main__":
    which = sys.argv[1]
    result = cold_gpuflex() if which == "gpuflex" else cold_ppe()
    print("RESULT " + json.dumps(result), flush=True)
