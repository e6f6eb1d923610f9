"""Cold start on the RunPod emulator: RunPod's public image bootstrapped by the start command, against a baked image
(``backends/runpod/Dockerfile``: RunPod's SDK already installed).

Each sample deploys a fresh endpoint and times its first call (worker start, bootstrap, the job with the runtime and
bundle inline). Modes: ``bootstrap`` (RunPod's image, no network volume: every worker installs RunPod's SDK into its
container disk through the shared package cache), ``volume`` (RunPod's image with a network volume whose environment
an earlier worker built), ``baked`` (an image that has the packages). The emulator has no image pull: on RunPod a
baked image is also smaller than runpod/pytorch, which this does not measure.

    python benchmarks/_runpod_coldstart.py [--samples 3]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gpuflex_runpod import RunPodBackend, RunPodConfig
from gpuflex_runpod._bootstrap import runtime_requirements
from gpuflex_runpod.emulator import start_emulator

from gpuflex.testing import backend_in_use

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends" / "runpod" / "tests"))
import _runpod_app as app  # noqa: E402


def baked_image(root: Path) -> Path:
    from uv import find_uv_bin

    uv = str(find_uv_bin())
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(root)], check=True)
    subprocess.run([uv, "pip", "install", "-q", "--python", str(root / "bin" / "python"), *runtime_requirements()],
                   check=True)
    (root / "bin" / "sh").symlink_to("/bin/sh")
    return root


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=3)
    args = parser.parse_args()
    key = secrets.token_hex(8)
    work = Path(tempfile.mkdtemp(prefix="gpuflex-coldstart-"))
    image = baked_image(work / "baked")
    modes = {"bootstrap": {"network_volume_id": None}, "volume": {"network_volume_id": "emuvol0001"},
             "baked": {"image": "gpuflex/baked:py", "network_volume_id": None}}
    with start_emulator(api_key=key, log_dir=work / "logs", images={"gpuflex/baked:py": image}) as url:
        timings: dict[str, list[float]] = {mode: [] for mode in modes}
        for sample in range(args.samples + 1):  # the first round warms the package cache and the volume
            for mode, options in modes.items():
                config = RunPodConfig(api_url=url, api_key=key, name_prefix=f"cs{sample}-{mode}-", **options)
                with backend_in_use(lambda config=config: RunPodBackend(config)):
                    begun = time.perf_counter()
                    app.cold()
                    if sample:
                        timings[mode].append(time.perf_counter() - begun)
        for mode, values in timings.items():
            print(f"{mode:10s} first call: median {statistics.median(values):.2f} s, "
                  f"min {min(values):.2f} s, max {max(values):.2f} s ({len(values)} endpoints)")


if __name__ == "__main__":
    main()
