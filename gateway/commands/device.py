"""`lora-gateway device add|import|list|reset-counter|set-counter`: the devices file and a device's frame counter."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

from gateway.commands.common import CONFIG_HELP, load
from gateway.config import ConfigError, GatewayConfig
from gateway.uplink.devices import DeviceEntry, add_device, add_devices, firmware_snippet, import_devices, load_devices


def _devices_file(args: argparse.Namespace) -> Path:
    if args.devices:
        return Path(args.devices)
    return load(args.config).devices_file


def cmd_add(args: argparse.Namespace) -> int:
    path = _devices_file(args)
    if args.count is None:
        if args.name is None:
            raise ConfigError("device add: give a NAME, or --count N [--prefix P] for many")
        entry = add_device(path, args.name, args.period, parents=args.parents)
        print(firmware_snippet(args.name, entry), end="")
        print(f"Added to {path}.", file=sys.stderr)
        return 0
    if args.name is not None:
        raise ConfigError("device add: give either a NAME or --count, not both")
    width = len(str(args.count))
    names = [f"{args.prefix}{i:0{width}d}" for i in range(1, args.count + 1)]
    added = add_devices(path, names, args.period, parents=args.parents)
    _print_csv(added)
    print(f"Added {len(added)} devices to {path}; their keys are above, shown once.", file=sys.stderr)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    path = _devices_file(args)
    added = import_devices(path, Path(args.csv))
    print(f"Imported {len(added)} devices from {args.csv} into {path}.", file=sys.stderr)
    return 0


def _print_csv(devices: dict[str, DeviceEntry]) -> None:
    """The form `device import` reads, and provisioning scripts can use."""
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["name", "dev_addr", "nwk_skey", "app_skey"])
    for name, e in devices.items():
        out.writerow([name, e.dev_addr, e.nwk_skey, e.app_skey])


def _count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100_000:
        raise argparse.ArgumentTypeError(f"{value}: between 1 and 100000 devices at a time")
    return value


def cmd_list(args: argparse.Namespace) -> int:
    path = _devices_file(args)
    for name, entry in load_devices(path).items():
        period = f"  every {entry.period_s:g} s" if entry.period_s else ""
        print(f"{name}  {entry.dev_addr}{period}")
    return 0


_RELOAD = "reload the gateway (systemctl reload lora-gateway, or SIGHUP) or restart it for it to take effect."


def _dev_addr(cfg: GatewayConfig, name: str) -> int:
    devices = load_devices(cfg.devices_file)
    if name not in devices:
        raise ConfigError(f"{cfg.devices_file}: no device named {name!r}")
    return int(devices[name].dev_addr, 16)


def cmd_reset_counter(args: argparse.Namespace) -> int:
    from gateway.service.state import StateStore

    cfg = load(args.config)
    dev_addr = _dev_addr(cfg, args.name)
    store = StateStore(cfg.state_path)
    forgotten = store.reset_frame_counter(dev_addr)
    store.close()
    print(f"{args.name}: frame counter {'forgotten' if forgotten else 'was not set'}; the next frame is a fresh "
          f"start once you {_RELOAD}")
    return 0


def cmd_set_counter(args: argparse.Namespace) -> int:
    from gateway.service.state import StateStore

    cfg = load(args.config)
    dev_addr = _dev_addr(cfg, args.name)
    store = StateStore(cfg.state_path)
    store.set_frame_counter(dev_addr, args.counter)
    store.close()
    print(f"{args.name}: frames from counter {args.counter} on are accepted once you {_RELOAD}")
    return 0


def _counter(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"{value} is not a 32-bit frame counter (0 to 4294967295)")
    return value


def register(subparsers: Any) -> None:
    device = subparsers.add_parser("device", help="manage devices and their keys").add_subparsers(
        dest="device_command", metavar="ACTION", required=True
    )
    for name, func, text in (
        ("add", cmd_add, "create a device with fresh random DevAddr, NwkSKey and AppSKey (printed once)"),
        ("import", cmd_import, "add ABP devices whose keys were made elsewhere, from a CSV file with the header "
         "name,dev_addr,nwk_skey,app_skey[,period_s] (what `device add --count` prints)"),
        ("list", cmd_list, "list devices (names and DevAddr, never keys)"),
        ("reset-counter", cmd_reset_counter, "let a device that really reset back in (forget its frame counter)"),
        ("set-counter", cmd_set_counter, "accept a device's frames from counter N on (a device first heard past "
         "65535, or after the state database was lost, is otherwise rejected as bad_mic)"),
    ):
        p = device.add_parser(name, help=text, description=text)
        if name == "add":
            p.add_argument("name", nargs="?", help="device name (or --count for many)")
            p.add_argument("--count", type=_count, metavar="N",
                           help="add N devices at once, named PREFIX plus a number; prints their keys as CSV")
            p.add_argument("--prefix", default="node-", help="name prefix with --count (default: node-)")
        elif name == "import":
            p.add_argument("csv", metavar="FILE.csv", help="name,dev_addr,nwk_skey,app_skey[,period_s] per line")
        elif name != "list":
            p.add_argument("name", help="device name")
        p.add_argument("--config", "-c", help=CONFIG_HELP)
        if name == "set-counter":
            p.add_argument("counter", metavar="N", type=_counter,
                           help="the frame counter of the device's next frame (as its log or display shows it)")
        if name in ("add", "import", "list"):
            p.add_argument("--devices", help="devices file (default: devices_file of the configuration)")
        if name == "add":
            p.add_argument("--period", type=float, help="expected reporting period in seconds")
            p.add_argument("--parents", action="store_true", help="create the devices file's folder if missing")
        p.set_defaults(func=func)
