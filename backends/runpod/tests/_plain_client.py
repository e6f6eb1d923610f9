"""A plain HTTP client of deployed endpoints: ``requests`` and the standard library, no gpuflex in this process.

Usage: python _plain_client.py JOBS_URL API_KEY GREET_ID COUNT_ID TOOLS_ID; prints one JSON object of what it saw.
"""

import base64
import json
import sys
import time

import requests

url, key, greet, count, tools = sys.argv[1:6]
session = requests.Session()
session.headers["Authorization"] = f"Bearer {key}"


def runsync(endpoint, data):
    answer = session.post(f"{url}/{endpoint}/runsync", json={"input": data}, timeout=120)
    answer.raise_for_status()
    return answer.json()


seen = {}
seen["greet"] = runsync(greet, {"name": "ada", "times": 2})
seen["wrong_type"] = runsync(greet, {"name": "ada", "times": "two"})
seen["missing"] = runsync(greet, {"times": 2})
png = b"\x89PNG\r\n\x1a\n" + bytes(range(8))
seen["flip"] = runsync(tools, {"method": "flip", "data": {"base64": base64.b64encode(png).decode(),
                                                          "media_type": "image/png"}})
seen["add"] = runsync(tools, {"method": "add", "a": 2, "b": 3})
seen["bad_method"] = runsync(tools, {"method": "nope"})
seen["count_sync"] = runsync(count, {"n": 3})

job = session.post(f"{url}/{count}/run", json={"input": {"n": 4}}, timeout=60).json()
chunks, status = [], "IN_QUEUE"
deadline = time.time() + 120
while status not in ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT") and time.time() < deadline:
    answer = session.get(f"{url}/{count}/stream/{job['id']}", timeout=60).json()
    status = answer["status"]
    chunks += [item["output"] for item in answer.get("stream", [])]
seen["streamed"] = {"status": status, "chunks": chunks}
seen["gpuflex_imported"] = any(name == "gpuflex" or name.startswith("gpuflex.") for name in sys.modules)
print(json.dumps(seen))
