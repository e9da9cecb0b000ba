"""Detector throughput: model windows/s batched vs one at a time, and `Detector.observe` readings/s.

Run: `nice python -m bench.bench_detector [--bundle DIR] [--seconds 2] [--repeats 3]`. Ratios are what
matter (one run, one machine); the model runs on one thread, as in the daemon.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gateway.detect.detector import Detector
from gateway.detect.scoring import Normalization, OnnxScorer
from gateway.detect.settings import DetectorSettings
from gateway.records import Reading
from gateway.service.state import StateStore


def _rate(fn, units_per_call: int, seconds: float) -> float:
    """Calls fn until `seconds` pass (after one warm-up call); units per second."""
    fn()
    n = 0
    t0 = time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        fn()
        n += 1
    return n * units_per_call / elapsed


class _ZeroScorer:
    """The detector without a model: what the buffers, normalization and likelihood cost."""

    def __init__(self, window: int, normalization: Normalization) -> None:
        self.window, self.normalization, self.name, self.version = window, normalization, "zero", "0"

    def score(self, windows: np.ndarray) -> np.ndarray:
        return np.abs(windows[:, -1]).astype(np.float32)


def _readings(devices: int, channels: int, n: int, seed: int = 1, step: float = 0.0) -> list[Reading]:
    """Noise of spread 1 around 20; rounded to `step` (0.1: as Cayenne LPP carries a temperature).
    The first two channels are named as the gateway names a Cayenne LPP temperature on channel 1
    and a humidity on channel 2, the pipeline bench's devices' two."""
    rng = np.random.default_rng(seed)
    names = ["temperature_1", "relative_humidity_2", "current_3", "pressure_4", "vibration_5"][:channels]
    out = []
    for i in range(n):
        v = 20 + rng.normal(0, 1, channels)
        if step:
            v = np.round(v / step) * step
        values = {c: float(x) for c, x in zip(names, v)}
        out.append(Reading(f"node{i % devices}", values, i, -60.0, 7.5, float(i)))
    return out


def steady_state(scorer: object, devices: int, channels: int, step: float, path: Path) -> StateStore:
    """A state database at `path` whose every channel is past warm-up on every time scale, buffers
    full, as in a long-running gateway: one device is fed until its coarsest scale judges
    likelihoods, and its persisted state is copied to the others (feeding 1,000 devices that far
    would take minutes)."""
    store = StateStore(path)
    template = Detector(scorer, DetectorSettings(), store)  # type: ignore[arg-type]
    warm = _readings(1, channels, 3_000, seed=0, step=step)  # scale 16: 64 scores need (32 + 32 + 64) * 16 readings
    for i in range(0, len(warm), 100):
        template.observe(warm[i : i + 100])
    template.flush()
    blobs = store.blobs("detector")
    store.put_blobs("detector", (
        (json.dumps([f"node{d}", *json.loads(key)[1:]], separators=(",", ":")), blob)
        for d in range(1, devices) for key, blob in blobs.items()
    ))
    return store


def observe_rate(scorer: object, devices: int, channels: int, batch: int, seconds: float, step: float = 0.0) -> float:
    det = Detector(scorer, DetectorSettings(), steady_state(scorer, devices, channels, step,  # type: ignore[arg-type]
                                                            Path(tempfile.mkdtemp()) / "state.db"))
    stream = _readings(devices, channels, 20_000, step=step)
    pos = [0]

    def step() -> None:
        i = pos[0]
        if i + batch > len(stream):
            i = 0
        det.observe(stream[i : i + batch])
        pos[0] = i + batch

    return _rate(step, batch, seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="model bundle (default: the packaged default model)")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--repeats", type=int, default=1, help="measurements per row; the median is shown")
    args = parser.parse_args(argv)
    from gateway.detect.model_store import packaged_default_bundle

    scorer = OnnxScorer(args.bundle or packaged_default_bundle(), threads=1)
    W = scorer.window
    rng = np.random.default_rng(0)
    print(f"model {scorer.name}@{scorer.version}, window {W}, history {scorer.normalization.history}, 1 thread\n")

    print("scoring (OnnxScorer.score)")
    print(f"{'batch':>8}{'windows/s':>14}{'vs batch 1':>12}")
    base = 0.0
    for b in (1, 8, 32, 128, 512):
        x = rng.normal(0, 1, (b, W)).astype(np.float32)
        r = _rate(lambda x=x: scorer.score(x), b, args.seconds)
        base = base or r
        print(f"{b:>8}{r:>14,.0f}{r / base:>11.1f}x")

    print("\nDetector.observe (steady state, buffers full; values exact, or in 0.1 steps: their medians grouped)")
    print(f"{'scorer':>8}{'values':>8}{'devices':>9}{'channels':>10}{'batch':>7}{'readings/s':>13}{'values/s':>12}")
    zero = _ZeroScorer(W, scorer.normalization)
    exact = ((1, 1, 1), *((1000, c, b) for c in (2, 3) for b in (1, 32, 128)))
    stepped = ((1, 1, 1), (1000, 2, 1), (1000, 2, 128))
    for name, sc in (("onnx", scorer), ("none", zero)):
        for step, rows in ((0.0, exact), (0.1, stepped)):
            for devices, channels, batch in rows:
                r = statistics.median(observe_rate(sc, devices, channels, batch, args.seconds, step)
                                      for _ in range(args.repeats))
                print(f"{name:>8}{step or 'exact':>8}{devices:>9}{channels:>10}{batch:>7}{r:>13,.0f}{r * channels:>12,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
