"""Detector memory per device: what `Detector` holds for devices heard a few times and for
devices whose buffers are full, measured with tracemalloc in this process.

    python -m bench.bench_detector_memory [--devices 1000]

Each device sends two channels (temperature and humidity, as the pipeline bench's devices do),
through the shipped model. `heard` is the number of readings per device; 3000 fills every time
scale's buffers (the 16-reading scale needs 16 x (window + history) readings), the steady state.
The daemon's own figure (peak RSS of a real process) is `python -m bench --only memory`.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import tracemalloc

from gateway.detect.detector import Detector
from gateway.detect.model_store import packaged_default_bundle
from gateway.detect.scoring import OnnxScorer
from gateway.detect.settings import DetectorSettings
from gateway.records import Reading


def per_device(scorer: OnnxScorer, devices: int, heard: int) -> float:
    """Bytes a device costs the detector once each of `devices` has sent `heard` readings."""
    rng = random.Random(1)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    det = Detector(scorer, DetectorSettings())
    for i in range(heard):
        batch = [Reading(f"dev-{d:05d}", {"temperature_1": 20 + rng.gauss(0, 0.5), "relative_humidity_2":
                                          60 + rng.gauss(0, 2)}, i, -80.0, 7.0, 60.0 * i) for d in range(devices)]
        for start in range(0, devices, 64):  # the daemon's batches
            det.observe(batch[start : start + 64])
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del det
    return used / devices


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=1000, help="devices heard (fewer for the full-buffer row)")
    args = p.parse_args()
    scorer = OnnxScorer(packaged_default_bundle())
    rows = [(args.devices, 3), (args.devices, 8), (args.devices, 70), (20, 3000)]
    print("| devices | readings each | detector bytes a device |\n|---|---|---|")
    for devices, heard in rows:
        print(f"| {devices:,} | {heard:,} | {per_device(scorer, devices, heard):,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
