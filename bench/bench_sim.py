"""Simulator throughput: simulated frames per second on one core, for 10, 100 and 1,000 nodes.

Run: `nice python -m bench.bench_sim [--frames 20000]`. "engine" is the event loop, sensors,
LoRaWAN framing and the radio channel with no I/O; "pty" adds the module emulator writing each
receive event to a pseudo-terminal, drained by a reader thread in the same process (the gateway's
part), all pinned to one core. The farm scenario's fleet, padded with copies, at unpaced speed.
"""

from __future__ import annotations

import argparse
import os
import random
import threading
import time

from firmware_sim.engine import Engine
from firmware_sim.scenario import Scenario, build_nodes, bundled, load_scenario
from firmware_sim.simulation import Simulation
from gateway.uplink.lorawan import SessionKeys


def _engine(farm: Scenario, count: int) -> tuple[Engine, float]:
    """The fleet, and the simulated seconds in which it sends about one frame per node per mean period."""
    specs = farm.fleet(count)
    keys = {s.name: SessionKeys(s.name, 0x26000000 + i, random.Random(i).randbytes(16), bytes(16))
            for i, s in enumerate(specs)}
    rng = random.Random(1)
    origin = time.time()
    nodes, _ = build_nodes(specs, keys, rng, origin)
    per_second = sum(1 / s.period_s for s in specs)
    return Engine(nodes, farm.radio, rng=rng, origin=origin), per_second


def engine_rate(farm: Scenario, count: int, frames: int) -> float:
    engine, per_second = _engine(farm, count)
    t0 = time.perf_counter()
    heard = sum(1 for _ in engine.run(frames / per_second))
    return heard / (time.perf_counter() - t0)


def _drain(fd: int, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            os.read(fd, 65536)
        except OSError:
            return


def pty_rate(farm: Scenario, count: int, frames: int) -> float:
    engine, per_second = _engine(farm, count)
    sim = Simulation("rylr", engine=engine, speed=float("inf"), duration_s=frames / per_second, keep_sent=1000)
    fd = os.open(sim.port, os.O_RDWR | os.O_NOCTTY)
    stop = threading.Event()
    reader = threading.Thread(target=_drain, args=(fd, stop), daemon=True)
    reader.start()
    t0 = time.perf_counter()
    sim.start()
    sim.finished.wait()
    elapsed = time.perf_counter() - t0
    sim.stop()
    stop.set()
    os.close(fd)
    return sim.frames_sent / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=20_000, help="frames per measurement (default: 20000)")
    args = p.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, threads included
    farm = load_scenario(bundled("farm.toml"))
    print(f"simulated frames per second on one core ({args.frames} frames each, farm.toml fleet, unpaced)\n")
    print("| nodes | engine (no I/O) | engine + module + pty |")
    print("|------:|----------------:|----------------------:|")
    for count in (10, 100, 1000):
        print(f"| {count} | {engine_rate(farm, count, args.frames):,.0f} | {pty_rate(farm, count, args.frames):,.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
