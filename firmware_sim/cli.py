"""`lora-sim`: an emulated LoRa module on a pseudo-terminal, with simulated sensor nodes."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from firmware_sim.modules import EMULATORS
from firmware_sim.simulation import Simulation
from gateway.config import ConfigError
from gateway.devices import add_device


def ensure_devices(path: Path, count: int) -> None:
    """A missing devices file gets `count` demo nodes with fresh keys (0600, as the gateway insists)."""
    if path.exists():
        return
    for i in range(1, count + 1):
        add_device(path, f"node-{i}")
    print(f"lora-sim: created {path} with {count} device(s)", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lora-sim",
        description="Emulate a LoRa module (REYAX RYLR, RAK3172 or RN2483) on a pseudo-terminal, heard by "
        "simulated sensor nodes that send Cayenne LPP in LoRaWAN ABP uplinks. Point the gateway's "
        "serial.port at the printed path or at --link.",
    )
    p.add_argument("--dialect", choices=sorted(EMULATORS), default="rylr", help="module to emulate (default: rylr)")
    p.add_argument(
        "--devices", type=Path, default=Path("devices.toml"),
        help="devices file shared with the gateway; created with --nodes demo nodes if missing (default: devices.toml)",
    )
    p.add_argument("--nodes", type=int, default=3, help="nodes to create when the devices file is missing (default: 3)")
    p.add_argument("--period", type=float, default=5.0, help="seconds between a node's uplinks (default: 5)")
    p.add_argument(
        "--link", type=Path, default=Path("lora-sim.tty"),
        help="symlink to the pty, a stable name for the config (default: lora-sim.tty; '' for none)",
    )
    p.add_argument("--frames", type=int, help="stop after sending this many frames")
    p.add_argument("--seed", type=int, help="random seed for reproducible readings")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.period <= 0:
        print("lora-sim: --period must be above 0", file=sys.stderr)
        return 2
    try:
        ensure_devices(args.devices, args.nodes)
        sim = Simulation(
            args.dialect, args.devices, period_s=args.period,
            link=args.link if str(args.link) else None, seed=args.seed, max_frames=args.frames,
        )
    except ConfigError as e:
        print(f"lora-sim: {e}", file=sys.stderr)
        return 2
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with sim:
        link = f" (link {args.link})" if str(args.link) else ""
        print(f"{args.dialect} module on {sim.port}{link}, {len(sim.nodes)} node(s)", flush=True)
        try:
            while not done.wait(0.2):
                if args.frames is not None and sim.frames_sent >= args.frames:
                    break
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
