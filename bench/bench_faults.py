"""Detection quality on simulated faults: precision, recall and delay per fault kind.

    python -m bench.bench_faults [--seeds 3] [--days 5] [--json out.json]

A fleet of farm nodes (pump current and vibration, temperature with a daily cycle, humidity,
battery) runs for several simulated days through the simulator's engine and radio channel; each
node gets one fault of every kind after the detector's warm-up, at its own time. The readings
(rounded through Cayenne LPP as on the wire) go through the daemon's detector with the shipped
model and default settings. An alert counts for a fault when it is raised on that device, with
the faulty channel among its channels, between the fault's start and its end plus a grace of
five reporting periods. Alerts matching no fault are false alerts; they are split by what came
before them on their node: no fault yet, or the end of a fault (on one of its channels or another),
less than 2 hours, 2 to 6 hours or more than 6 hours before.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from firmware_sim.engine import Engine  # noqa: E402
from firmware_sim.scenario import Label, Scenario, build_nodes  # noqa: E402
from gateway.detect.detector import Detector  # noqa: E402
from gateway.detect.model_store import packaged_default_bundle  # noqa: E402
from gateway.detect.scoring import OnnxScorer  # noqa: E402
from gateway.detect.settings import DetectorSettings  # noqa: E402
from gateway.records import Reading  # noqa: E402
from gateway.uplink import lpp  # noqa: E402
from gateway.uplink.devices import add_device, load_devices, session_keys  # noqa: E402

DAY = 86400.0
GRACE_PERIODS = 5
KINDS = ("spike", "drift", "stuck", "level_shift", "noise", "dropout")


def scenario(days: int, rng: random.Random, with_faults: bool = True) -> Scenario:
    """Pump houses and cold rooms, each with every fault kind once, spread over days 2..N (or none)."""
    nodes = []
    for i in range(4):
        pump = i % 2 == 0
        sensors = ([{"kind": "current", "channel": 1}, {"kind": "vibration", "channel": 2},
                    {"kind": "temperature", "channel": 3}] if pump else
                   [{"kind": "temperature", "channel": 1, "mean": 3.0, "swing": 0.3, "noise": 0.1},
                    {"kind": "humidity", "channel": 2}, {"kind": "battery", "channel": 3}])
        faults = []
        slots = rng.sample(range(int((days - 1.5) * 24 / 4)), len(KINDS))  # 4-hour slots after day 1.5
        for kind, slot in zip(KINDS, slots, strict=True):
            start = 1.5 * DAY + slot * 4 * 3600 + rng.uniform(0, 3600)
            fault: dict[str, Any] = {"kind": kind, "start_s": start, "duration_s": 2 * 3600 if kind != "spike" else 120}
            if kind != "dropout":
                fault["channel"] = rng.choice([1, 2, 3])
            faults.append(fault)
        nodes.append({"name": f"{'pump' if pump else 'cold'}-{i}", "period_s": 60, "sf": 7, "distance_m": 200,
                      "sensors": sensors, "faults": faults if with_faults else []})
    return Scenario.model_validate({"simulation": {"duration_s": days * DAY, "start": "2026-06-01T00:00:00"},
                                    "nodes": nodes})


def farm(seed: int, days: int, workdir: Path, with_faults: bool = True) -> tuple[list[Label], Iterator[Reading]]:
    """The fault labels, and the farm's readings as the gateway decodes them (rounded through
    Cayenne LPP, corrupted frames left out as the MIC rejects them), in time order."""
    rng = random.Random(seed)
    spec = scenario(days, rng, with_faults)
    devices = workdir / f"devices-{seed}.toml"
    for node in spec.nodes:
        add_device(devices, node.name)
    keys = {k.name: k for k in session_keys(load_devices(devices))}
    origin = 1_780_272_000.0  # 2026-06-01 UTC
    nodes, labels = build_nodes(spec.nodes, keys, rng, origin)
    engine = Engine(nodes, spec.radio, rng=rng, origin=origin)
    readings = (Reading(d.node, lpp.decode(lpp.encode(d.readings)), d.fcnt, d.rssi, d.snr, d.t)
                for d in engine.run(days * DAY) if not d.corrupted)
    return labels, readings


def run_seed(seed: int, days: int, scorer: OnnxScorer, workdir: Path,
             settings: DetectorSettings) -> tuple[list[Label], list[dict[str, Any]], int]:
    labels, farm_readings = farm(seed, days, workdir)
    detector = Detector(scorer, settings)
    alerts: list[dict[str, Any]] = []
    readings = 0
    for reading in farm_readings:
        (out,) = detector.observe([reading])
        readings += 1
        if out.transition is not None and out.transition.state == "raised":
            alerts.append({"device": reading.device, "t": reading.time, "channels": list(out.transition.channels)})
    return labels, alerts, readings


def evaluate(labels: list[Label], alerts: list[dict[str, Any]], period_s: float) -> dict[str, Any]:
    grace = GRACE_PERIODS * period_s
    # A dropout labels every channel of its node: one fault, whichever channel alerts.
    faults: dict[tuple[str, str, float], list[Label]] = defaultdict(list)
    for label in labels:
        faults[(label.node, label.fault, label.start_s)].append(label)
    matched_alerts: set[int] = set()
    per_kind: dict[str, dict[str, Any]] = {k: {"faults": 0, "detected": 0, "delays_s": []} for k in KINDS}
    for (node, kind, start), group in faults.items():
        end = max(label.end_s for label in group)
        channels = {label.channel for label in group}
        hits = [i for i, a in enumerate(alerts) if a["device"] == node and start <= a["t"] <= end + grace
                and channels & set(a["channels"])]
        per_kind[kind]["faults"] += 1
        if hits:
            per_kind[kind]["detected"] += 1
            per_kind[kind]["delays_s"].append(alerts[hits[0]]["t"] - start)
            matched_alerts.update(hits)
        for k in range(len(alerts)):
            a = alerts[k]
            if a["device"] == node and start <= a["t"] <= end + grace:
                matched_alerts.add(k)  # an alert during a fault is not a false alarm, whatever channel
    false_after: dict[str, int] = defaultdict(int)
    for k, a in enumerate(alerts):
        if k not in matched_alerts:
            false_after[_after_what(a, labels)] += 1
    return {"per_kind": per_kind, "alerts": len(alerts), "false_alerts": len(alerts) - len(matched_alerts),
            "false_after": dict(false_after)}


def _after_what(alert: dict[str, Any], labels: list[Label]) -> str:
    """What came before a false alert on its node: no fault, or the end of the last fault, how long before."""
    ended = [label for label in labels if label.node == alert["device"] and label.end_s < alert["t"]]
    if not ended:
        return "no fault before"
    last = max(ended, key=lambda label: label.end_s)
    hours = (alert["t"] - last.end_s) / 3600
    when = "< 2 h" if hours < 2 else "2-6 h" if hours < 6 else "> 6 h"
    return f"{when} after a fault, {'its' if last.channel in alert['channels'] else 'another'} channel"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--days", type=int, default=5)
    p.add_argument("--json", type=Path)
    p.add_argument("--settings", default="{}", help="detector settings as JSON (default: the detector's defaults)")
    args = p.parse_args()
    settings = DetectorSettings.model_validate(json.loads(args.settings))
    scorer = OnnxScorer(packaged_default_bundle())
    workdir = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    totals: dict[str, dict[str, Any]] = {k: {"faults": 0, "detected": 0, "delays_s": []} for k in KINDS}
    alerts = false_alerts = readings = 0
    false_after: dict[str, int] = defaultdict(int)
    node_days = 0
    for seed in range(args.seeds):
        labels, raised, n = run_seed(seed, args.days, scorer, workdir, settings)
        result = evaluate(labels, raised, 60.0)
        readings += n
        alerts += result["alerts"]
        false_alerts += result["false_alerts"]
        for what, count in result["false_after"].items():
            false_after[what] += count
        node_days += 4 * args.days
        for kind, r in result["per_kind"].items():
            totals[kind]["faults"] += r["faults"]
            totals[kind]["detected"] += r["detected"]
            totals[kind]["delays_s"] += r["delays_s"]
        print(f"seed {seed}: {n} readings, {result['alerts']} alerts, {result['false_alerts']} false", file=sys.stderr)
    print(f"\n{args.seeds} runs x 4 nodes x {args.days} days, one reading a minute, {readings} readings; "
          f"model {scorer.label}, detector settings {args.settings}\n")
    print("| fault | faults | detected | recall | median delay (readings) | max delay (readings) |")
    print("|---|---|---|---|---|---|")
    for kind, r in totals.items():
        delays = sorted(d / 60 for d in r["delays_s"])
        median = f"{delays[len(delays) // 2]:.0f}" if delays else "-"
        worst = f"{delays[-1]:.0f}" if delays else "-"
        print(f"| {kind} | {r['faults']} | {r['detected']} | {r['detected'] / max(1, r['faults']):.2f} | {median} | {worst} |")
    precision = (alerts - false_alerts) / alerts if alerts else float("nan")
    print(f"\nalerts raised {alerts}, false {false_alerts}: precision {precision:.2f}; "
          f"{false_alerts / node_days:.2f} false alerts per node-day")
    print("false alerts by what came before them on their node: "
          + "; ".join(f"{what} {count}" for what, count in sorted(false_after.items())))
    if args.json:
        args.json.write_text(json.dumps({"per_kind": totals, "alerts": alerts, "false_alerts": false_alerts,
                                         "false_after": false_after, "precision": precision, "readings": readings},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
