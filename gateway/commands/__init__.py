"""`lora-gateway`: run the daemon, check the configuration, manage devices."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from gateway import __version__
from gateway.commands import demo, detect, model, report
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.service import health
from gateway.uplink.devices import add_device, firmware_snippet, load_devices

DEFAULT_CONFIG = Path("/etc/lora-gateway/config.toml")


def _config_path(value: str | None) -> Path:
    if value:
        return Path(value)
    env = os.environ.get("LORA_GATEWAY_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG


def setup_logging(level: str) -> None:
    # journald stamps every line itself; a second timestamp only clutters journalctl.
    fmt = "%(levelname)s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM") else (
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.basicConfig(level=level, format=fmt, stream=sys.stderr)


def _load(args: argparse.Namespace) -> GatewayConfig:
    return load_config(_config_path(args.config))


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.daemon import Daemon
    from gateway.radio.serial_link import ModuleError

    cfg = _load(args)
    setup_logging(cfg.log.level)
    try:
        return Daemon(cfg).run()
    except ModuleError as e:
        print(f"lora-gateway: {e}", file=sys.stderr)
        return 1


def cmd_check_config(args: argparse.Namespace) -> int:
    path = _config_path(args.config)
    cfg = load_config(path)
    devices = load_devices(cfg.devices_file)
    print(
        f"{path}: OK ({cfg.serial.dialect} module on {cfg.serial.port} at {cfg.serial.effective_baud} baud, "
        f"broker {cfg.mqtt.host}:{cfg.mqtt.port}, {len(devices)} device(s) in {cfg.devices_file})"
    )
    return 0


def _devices_file(args: argparse.Namespace) -> Path:
    if args.devices:
        return Path(args.devices)
    return _load(args).devices_file


def cmd_device_add(args: argparse.Namespace) -> int:
    path = _devices_file(args)
    entry = add_device(path, args.name, args.period)
    print(firmware_snippet(args.name, entry), end="")
    print(f"Added to {path}.", file=sys.stderr)
    return 0


def cmd_device_list(args: argparse.Namespace) -> int:
    path = _devices_file(args)
    for name, entry in load_devices(path).items():
        period = f"  every {entry.period_s:g} s" if entry.period_s else ""
        print(f"{name}  {entry.dev_addr}{period}")
    return 0


def cmd_device_reset_counter(args: argparse.Namespace) -> int:
    from gateway.service.state import StateStore

    cfg = _load(args)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lora-gateway",
        description="Edge gateway: LoRa serial module -> LoRaWAN (MIC, replay, decrypt) -> Cayenne LPP "
        "-> anomaly detection -> MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    config_help = f"configuration file (default: $LORA_GATEWAY_CONFIG or {DEFAULT_CONFIG})"

    p = sub.add_parser("run", help="run the gateway daemon", description="Run the gateway until SIGTERM or Ctrl-C.")
    p.add_argument("--config", "-c", help=config_help)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "check-config",
        help="validate the configuration and devices files without starting",
        description="Validate the configuration and devices files; every problem names file, key and value.",
    )
    p.add_argument("--config", "-c", help=config_help)
    p.set_defaults(func=cmd_check_config)

    device = sub.add_parser("device", help="manage devices and their keys").add_subparsers(
        dest="device_command", metavar="ACTION", required=True
    )
    for name, func, text in (
        ("add", cmd_device_add, "create a device with fresh random DevAddr, NwkSKey and AppSKey (printed once)"),
        ("list", cmd_device_list, "list devices (names and DevAddr, never keys)"),
        ("reset-counter", cmd_device_reset_counter, "let a device that really reset back in (forget its frame counter)"),
    ):
        p = device.add_parser(name, help=text, description=text)
        if name != "list":
            p.add_argument("name", help="device name")
        p.add_argument("--config", "-c", help=config_help)
        if name != "reset-counter":
            p.add_argument("--devices", help="devices file (default: devices_file of the configuration)")
        if name == "add":
            p.add_argument("--period", type=float, help="expected reporting period in seconds")
        p.set_defaults(func=func)

    for registrar in (model, detect, demo, health, report):
        registrar.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(f"lora-gateway: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

