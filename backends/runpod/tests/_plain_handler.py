"""A plain RunPod handler (no gpuflex): the emulator runs any ``runpod.serverless.start`` worker."""

import time

import runpod


def handler(job):
    data = job["input"]
    if data.get("sleep"):
        time.sleep(data["sleep"])
    if data.get("fail"):
        raise ValueError("plain failure")
    return {"echo": data}


runpod.serverless.start({"handler": handler})
