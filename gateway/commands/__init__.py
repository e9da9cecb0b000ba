"""`lora-gateway`: the front ends, one module per subcommand, out of the runtime.

Each module's `register` adds its subcommand to the parser; `main` dispatches. A subcommand
imports the runtime it needs (the daemon, the detector, the model store), never the reverse.
"""

from __future__ import annotations

import argparse

from gateway import __version__
from gateway.commands import check_config, demo, detect, device, model, report, run, status
from gateway.commands.common import closed_stdout_ends_quietly, error
from gateway.config import ConfigError
from gateway.detect.scoring import BundleError
from gateway.service.state import StateError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lora-gateway",
        description="Edge gateway: LoRa serial module -> LoRaWAN (MIC, replay, decrypt) -> Cayenne LPP "
        "-> anomaly detection -> MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in (run, check_config, device, model, detect, demo, status, report):
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return closed_stdout_ends_quietly(lambda: _dispatch(argv))


def _dispatch(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        error(e)
        return 2
    except (StateError, BundleError) as e:
        error(e)
        return 1
    except KeyboardInterrupt:
        return 130
