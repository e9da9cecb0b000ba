"""Detector memory per device: what `Detector` holds for devices heard a few times and for
devices whose buffers are full, measured with tracemalloc in this process.

    python -m bench.bench_detector_memory [--devices 1000] [--restart 10000]

Each device sends two channels (temperature and humidity, as the pipeline bench's devices do),
through the shipped model. `heard` is the number of readings per device; 3000 fills every time
scale's buffers (the 16-reading scale needs 16 x (window + history) readings), the steady state.
The daemon's own figure (peak RSS of a real process) is `python -m bench --only daemon`
(`--restart-full`: a start on a database of devices with full buffers).

`--restart N`: a state database of N devices with full buffers (bench.bench_detector's: each a
copy of one device's two channels after 3000 readings), loaded by a `Detector` in a fresh process: its RSS before and after,
and the peak (VmHWM), against the records' size. 0 skips it.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

from bench.bench_detector import steady_state
from gateway.detect.detector import Detector
from gateway.detect.model_store import packaged_default_bundle
from gateway.detect.scoring import OnnxScorer
from gateway.detect.settings import DetectorSettings
from gateway.records import Reading
from gateway.service.state import StateStore


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


def _status_mb(field: str) -> float:
    text = Path("/proc/self/status").read_text()
    return int(text.split(f"{field}:")[1].split()[0]) / 1024


def load_and_report(path: Path) -> None:
    """In a fresh process: the detector's restart from `path`, as RSS in MB (before, after, peak)."""
    scorer = OnnxScorer(packaged_default_bundle())
    before = _status_mb("VmRSS")
    Detector(scorer, DetectorSettings(), StateStore(path))
    print(json.dumps([before, _status_mb("VmRSS"), _status_mb("VmHWM")]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=1000, help="devices heard (fewer for the full-buffer row)")
    p.add_argument("--restart", type=int, default=10000, help="devices in the restart's state database (0: skip)")
    p.add_argument("--load", type=Path, help=argparse.SUPPRESS)  # the restart's fresh process
    args = p.parse_args()
    if args.load:
        load_and_report(args.load)
        return 0
    scorer = OnnxScorer(packaged_default_bundle())
    rows = [(args.devices, 3), (args.devices, 8), (args.devices, 70), (20, 3000)]
    print("| devices | readings each | detector bytes a device |\n|---|---|---|")
    for devices, heard in rows:
        print(f"| {devices:,} | {heard:,} | {per_device(scorer, devices, heard):,.0f} |", flush=True)
    if args.restart:
        with tempfile.TemporaryDirectory(prefix="bench-restart-") as tmp:
            path = Path(tmp) / "state.db"
            # Two channels in LPP's 0.1 steps, as most of a farm's readings are.
            steady_state(scorer, args.restart, 2, 0.1, path).close()
            records = sum(len(blob) for _, blob in StateStore(path).iter_blobs("detector"))
            out = subprocess.run([sys.executable, "-m", "bench.bench_detector_memory", "--load", str(path)],
                                 capture_output=True, text=True, check=True).stdout
            before, after, peak = json.loads(out.splitlines()[-1])
        print("\n| restart: devices, full buffers | records | RSS before | after load | peak | peak - after |")
        print("|---|---|---|---|---|---|")
        print(f"| {args.restart:,} | {records / 1e6:.0f} MB | {before:.0f} MB | {after:.0f} MB | {peak:.0f} MB "
              f"| {peak - after:.0f} MB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
