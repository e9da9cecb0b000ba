"""`lora-gateway device add|list|reset-counter`: the devices file and a device's frame counter."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway.commands.common import CONFIG_HELP, load
from gateway.config import ConfigError
from gateway.uplink.devices import add_device, firmware_snippet, load_devices


def _devices_file(args: argparse.Namespace) -> Path:
    if args.devices:
        return Path(args.devices)
    return load(args.config).devices_file


def cmd_add(args: argparse.Namespace) -> int:
    path = _devices_file(args)
    entry = add_device(path, args.name, args.period, parents=args.parents)
    print(firmware_snippet(args.name, entry), end="")
    print(f"Added to {path}.", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    path = _devices_file(args)
    for name, entry in load_devices(path).items():
        period = f"  every {entry.period_s:g} s" if entry.period_s else ""
        print(f"{name}  {entry.dev_addr}{period}")
    return 0


def cmd_reset_counter(args: argparse.Namespace) -> int:
    from gateway.service.state import StateStore

    cfg = load(args.config)
    devices = load_devices(cfg.devices_file)
    if args.name not in devices:
        raise ConfigError(f"{cfg.devices_file}: no device named {args.name!r}")
    store = StateStore(cfg.state_path)
    forgotten = store.reset_frame_counter(int(devices[args.name].dev_addr, 16))
    store.close()
    print(
        f"{args.name}: frame counter {'forgotten' if forgotten else 'was not set'}; "
        "restart or reload the daemon so it accepts the device's next frame as a fresh start."
    )
    return 0


def register(subparsers: Any) -> None:
    device = subparsers.add_parser("device", help="manage devices and their keys").add_subparsers(
        dest="device_command", metavar="ACTION", required=True
    )
    for name, func, text in (
        ("add", cmd_add, "create a device with fresh random DevAddr, NwkSKey and AppSKey (printed once)"),
        ("list", cmd_list, "list devices (names and DevAddr, never keys)"),
        ("reset-counter", cmd_reset_counter, "let a device that really reset back in (forget its frame counter)"),
    ):
        p = device.add_parser(name, help=text, description=text)
        if name != "list":
            p.add_argument("name", help="device name")
        p.add_argument("--config", "-c", help=CONFIG_HELP)
        if name != "reset-counter":
            p.add_argument("--devices", help="devices file (default: devices_file of the configuration)")
        if name == "add":
            p.add_argument("--period", type=float, help="expected reporting period in seconds")
            p.add_argument("--parents", action="store_true", help="create the devices file's folder if missing")
        p.set_defaults(func=func)
