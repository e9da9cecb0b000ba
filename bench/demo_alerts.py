"""The demo's farm without the broker: its scenario and detector settings, alerts by device.

    python -m bench.demo_alerts [--hours 12] [--seeds 3]

`lora-gateway demo` runs the farm of `gateway/commands/demo.py` (one fault: the cold room's door
open for an hour after five simulated hours) through the daemon over MQTT. Here the same nodes
run through the simulator's engine straight into the detector with the demo's settings, for
several seeds, and every raised alert is printed: the cold room's during its fault is the one
expected, every other is a false alert.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import tomllib
from pathlib import Path

from firmware_sim.engine import Engine
from firmware_sim.scenario import Scenario, build_nodes
from gateway.commands.demo import DETECTOR, FARM, FAULT_START_S
from gateway.detect.detector import Detector
from gateway.detect.model_store import packaged_default_bundle
from gateway.detect.scoring import OnnxScorer
from gateway.detect.settings import DetectorSettings
from gateway.records import Reading
from gateway.uplink import lpp
from gateway.uplink.devices import add_device, load_devices, session_keys

GRACE_S = 300.0


def run(seed: int, hours: float, scorer: OnnxScorer, workdir: Path) -> list[tuple[str, float, list[str], bool]]:
    """(device, hour, channels, expected) per raised alert."""
    spec = Scenario.model_validate({**FARM, "simulation": {**FARM["simulation"], "seed": seed,
                                                           "duration_s": hours * 3600}})
    devices = workdir / f"devices-{seed}.toml"
    for node in spec.nodes:
        add_device(devices, node.name)
    keys = {k.name: k for k in session_keys(load_devices(devices))}
    rng = random.Random(seed)
    nodes, _ = build_nodes(spec.nodes, keys, rng, 0.0)
    detector = Detector(scorer, DetectorSettings.model_validate(tomllib.loads(DETECTOR)["detector"]))
    out = []
    for d in Engine(nodes, spec.radio, rng=rng, origin=0.0).run(hours * 3600):
        if d.corrupted:
            continue
        (o,) = detector.observe([Reading(d.node, lpp.decode(lpp.encode(d.readings)), d.fcnt, d.rssi, d.snr, d.t)])
        if o.transition is not None and o.transition.state == "raised":
            expected = d.node == "cold-room" and FAULT_START_S <= d.t <= FAULT_START_S + 3600 + GRACE_S
            out.append((d.node, d.t / 3600, list(o.transition.channels), expected))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hours", type=float, default=12.0)
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    scorer = OnnxScorer(packaged_default_bundle())
    workdir = Path(tempfile.mkdtemp(prefix="demo-alerts-"))
    false = found = 0
    for seed in range(FARM["simulation"]["seed"], FARM["simulation"]["seed"] + args.seeds):
        alerts = run(seed, args.hours, scorer, workdir)
        found += any(a[3] for a in alerts)
        false += sum(not a[3] for a in alerts)
        print(f"seed {seed}: " + "; ".join(f"{d} at {h:.2f} h {'+'.join(c)}{'' if ok else ' FALSE'}"
                                           for d, h, c, ok in alerts))
    print(f"\n{args.seeds} runs of {args.hours:g} simulated hours: the fault found in {found}, false alerts {false}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
