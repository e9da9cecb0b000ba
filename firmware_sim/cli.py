"""`lora-sim`: an emulated LoRa module on a pseudo-terminal, heard by simulated sensor nodes.

`lora-sim [run]` runs the devices file's nodes or a scenario's fleet; `lora-sim replay` sends a
recorded CSV series as one node's readings. `run` is the default, so `lora-sim` alone works.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

from firmware_sim.modules import EMULATORS
from firmware_sim.replay import check_encodable, read_series, replay_engine
from firmware_sim.scenario import load_scenario, resolve
from firmware_sim.simulation import RunOptions, Simulation
from gateway import __version__
from gateway.commands.common import closed_stdout_ends_quietly
from gateway.config import ConfigError
from gateway.uplink import lpp
from gateway.uplink.devices import add_device, load_devices, session_keys

_COMMANDS = ("run", "replay")
_LINGER_S = 2.0


def ensure_devices(path: Path, count: int) -> None:
    """A missing devices file gets `count` demo nodes with fresh keys (0600, as the gateway insists)."""
    if path.exists():
        return
    for i in range(1, count + 1):
        add_device(path, f"node-{i}")
    print(f"lora-sim: created {path} with {count} device(s)", file=sys.stderr)


def counters_file(devices: Path) -> Path:
    """Where the nodes' frame counters persist, as real ABP nodes keep them: a rerun is no replay."""
    return devices.with_name(f".{devices.name}.fcnt.json")


def _load_counters(sim: Simulation, path: Path) -> None:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    for node in sim.nodes:
        if isinstance(saved.get(node.name), int):
            node.fcnt = saved[node.name]


def _save_counters(sim: Simulation, path: Path) -> None:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = {}
    saved.update({node.name: node.fcnt for node in sim.nodes})
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(saved))
    os.replace(tmp, path)


# argparse names a type function that raises ValueError in its message ("invalid _speed value"):
# these raise ArgumentTypeError, whose text argparse shows as it is.
def _speed(text: str) -> float:
    try:
        value = math.inf if text in ("max", "inf") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (or 'max')") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be above 0 (or 'max')")
    return value


def _channel(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (an LPP channel is 0..255)") from None
    if not 0 <= value <= 255:
        raise argparse.ArgumentTypeError("an LPP channel is 0..255")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dialect", choices=sorted(EMULATORS), default="rylr", help="module to emulate (default: rylr)")
    p.add_argument(
        "--devices", type=Path, default=Path("devices.toml"),
        help="devices file shared with the gateway; missing nodes are added with fresh keys (default: devices.toml)",
    )
    p.add_argument(
        "--link", default="lora-sim.tty",
        help="symlink to the pty, a stable name for the config (default: lora-sim.tty; '' for none)",
    )
    p.add_argument("--speed", type=_speed, default=1.0,
                   help="simulated time runs N times faster than real time; 'max' unpaced (default: 1)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lora-sim",
        description="Emulate a LoRa module (REYAX RYLR, RAK3172 or RN2483) on a pseudo-terminal, heard by "
        "simulated sensor nodes that send Cayenne LPP in LoRaWAN ABP uplinks. Point the gateway's "
        "serial.port at the printed path or at --link. Without a command: run.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="the devices file's nodes, or a scenario's fleet with faults (default)",
                         description="Run nodes over a simulated EU868 radio channel. With --scenario the fleet, "
                         "its radio and the faults to inject come from a TOML file (bundled: farm.toml).")
    _common(run)
    run.add_argument("--scenario", type=Path, help="scenario TOML file, or the name of a bundled one (farm.toml)")
    run.add_argument("--nodes", type=int, help="without --scenario: nodes to create when the devices file is "
                     "missing (default: 3); with it: fleet size, padded with fault-free copies")
    run.add_argument("--period", type=float, default=5.0,
                     help="without --scenario: seconds between a node's uplinks (default: 5)")
    run.add_argument("--labels", type=Path, help="write the injected faults (ground truth) here: .csv or .json")
    run.add_argument("--duration", type=float, help="stop after this many simulated seconds")
    run.add_argument("--frames", type=int, help="stop after sending this many frames")
    run.add_argument("--seed", type=int, help="random seed for reproducible runs")
    run.add_argument("--wait-gateway", action="store_true",
                     help="start the clock once a gateway has set up the module")
    run.set_defaults(func=_run)

    rp = sub.add_parser("replay", help="send a recorded CSV series as one node's readings",
                        description="Replay a CSV column (NAB's timestamp,value layout works as it is) as one "
                        "node's readings over a lossless simulated radio, at the CSV's own pace times --speed or at "
                        "--rate frames per second. Waits for a gateway to set up the module, then loses nothing.")
    _common(rp)
    rp.add_argument("--csv", type=Path, required=True, help="the recorded series")
    rp.add_argument("--column", default="value", help="column of values (default: value)")
    rp.add_argument("--time-column", default="timestamp",
                    help="column of times: unix seconds or ISO 8601, naive = UTC (default: timestamp; '' for none)")
    rp.add_argument("--device", required=True, help="node name in the devices file (added if missing)")
    rp.add_argument("--channel", type=_channel, default=1, help="LPP channel, 0..255 (default: 1)")
    rp.add_argument("--type", default="temperature", metavar="TYPE",
                    choices=sorted(t.name for t in lpp.TYPES.values() if len(t.mults) == 1),
                    help="a single-value LPP type: temperature, analog_input, current, voltage, generic_sensor, "
                    "... (default: temperature)")
    rp.add_argument("--rate", type=float, help="frames per second instead of the CSV's own times")
    rp.add_argument("--no-wait", action="store_true", help="start at once, not when a gateway has set up the module")
    rp.set_defaults(func=_replay)
    return p


def _serve(sim: Simulation, dialect: str, link: Path | None, devices: Path, what: str) -> int:
    """Run `sim` until it finishes or a signal; keep the counters; print what happened."""
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    counters = counters_file(devices)
    _load_counters(sim, counters)
    shown = f" (link {link})" if link is not None else ""
    print(f"{dialect} module on {sim.port}{shown}, {what}", flush=True)
    sim.start()
    try:
        while not done.wait(0.2) and not sim.finished.is_set():
            pass
        if sim.finished.is_set() and sim.frames_sent:
            done.wait(_LINGER_S)  # the port stays a moment, so the gateway reads the last events
    except KeyboardInterrupt:
        pass
    try:
        sim.stop()
    finally:
        _save_counters(sim, counters)
    stats = sim.engine.stats
    print(f"lora-sim: {stats.sampled} sampled, {stats.transmitted} on air, {stats.delivered} delivered, "
          f"{stats.collided} collided, {stats.too_weak} too weak, {stats.crc_error} CRC errors, "
          f"{stats.corrupted} corrupted, {stats.duplicates} duplicated, {stats.duty_delayed} delayed by duty cycle; "
          f"{sim.frames_sent} sent to the port ({sim.port_counts['corrupted']} corrupt, "
          f"{sim.port_counts['duplicate']} second copies), {sim.off_channel} off the module's channel",
          file=sys.stderr)
    return 0


def _run(args: argparse.Namespace) -> int:
    link = Path(args.link) if args.link else None
    if args.scenario is None:
        if args.period <= 0:
            raise ConfigError("--period must be above 0")
        ensure_devices(args.devices, args.nodes or 3)
        sim = Simulation(args.dialect, args.devices, period_s=args.period, link=link, seed=args.seed,
                         max_frames=args.frames, speed=args.speed, duration_s=args.duration,
                         wait_for_gateway=args.wait_gateway)
        return _serve(sim, args.dialect, link, args.devices, f"{len(sim.nodes)} node(s)")
    if args.nodes is not None and args.nodes < 1:
        raise ConfigError("--nodes must be at least 1")
    path = resolve(args.scenario)
    scenario = load_scenario(path)
    options: RunOptions = {"link": link, "max_frames": args.frames, "speed": args.speed,
                           "wait_for_gateway": args.wait_gateway}
    if args.duration is not None:
        options["duration_s"] = args.duration
    sim = Simulation.from_scenario(scenario, args.dialect, args.devices, count=args.nodes, seed=args.seed, **options)
    try:
        return _serve(sim, args.dialect, link, args.devices, f"{len(sim.nodes)} node(s) from {path}")
    finally:
        if args.labels is not None:
            sim.write_labels(args.labels)
            print(f"lora-sim: {len(sim.labels)} label(s) written to {args.labels}", file=sys.stderr)


def _replay(args: argparse.Namespace) -> int:
    if args.rate is not None and args.rate <= 0:
        raise ConfigError("--rate must be above 0")
    if args.rate is not None and args.speed != 1.0:
        raise ConfigError("give --speed or --rate, not both")
    series = read_series(args.csv, args.column, args.time_column or None)
    for warning in series.warnings:
        print(f"lora-sim: warning: {warning}", file=sys.stderr)
    check_encodable(series, args.csv, args.column, args.channel, args.type)
    if not (args.devices.exists() and args.device in load_devices(args.devices)):
        add_device(args.devices, args.device)
    keys = {k.name: k for k in session_keys(load_devices(args.devices))}[args.device]
    engine = replay_engine(series, keys, channel=args.channel, lpp_type=args.type, rate=args.rate, now=time.time())
    link = Path(args.link) if args.link else None
    sim = Simulation(args.dialect, engine=engine, link=link, speed=args.speed, hold=True,
                     wait_for_gateway=not args.no_wait)
    waiting = "" if args.no_wait else "; waiting for a gateway to set it up"
    return _serve(sim, args.dialect, link, args.devices,
                  f"replaying {len(series.values)} row(s) of {args.csv} as {args.device} {args.type}_{args.channel}"
                  f"{waiting}")


def main(argv: list[str] | None = None) -> int:
    return closed_stdout_ends_quietly(lambda: _dispatch(list(sys.argv[1:] if argv is None else argv)))


def _dispatch(argv: list[str]) -> int:
    if not argv or (argv[0] not in _COMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "run")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(f"lora-sim: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
