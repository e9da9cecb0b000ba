"""`lora-gateway check-config`: validate the configuration and devices files without starting."""

from __future__ import annotations

import argparse
from typing import Any

from gateway.commands.common import CONFIG_HELP, config_path
from gateway.config import load_config
from gateway.uplink.devices import load_devices


def handler(args: argparse.Namespace) -> int:
    path = config_path(args.config)
    cfg = load_config(path)
    devices = load_devices(cfg.devices_file)
    print(
        f"{path}: OK ({cfg.serial.dialect} module on {cfg.serial.port} at {cfg.serial.effective_baud} baud, "
        f"broker {cfg.mqtt.host}:{cfg.mqtt.port}, {len(devices)} device(s) in {cfg.devices_file})"
    )
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "check-config",
        help="validate the configuration and devices files without starting",
        description="Validate the configuration and devices files; every problem names file, key and value.",
    )
    p.add_argument("--config", "-c", help=CONFIG_HELP)
    p.set_defaults(func=handler)
