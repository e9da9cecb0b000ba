"""`lora-gateway check-config`: what can be checked without starting, and what cannot.

Beyond the configuration and devices files: the serial port opens, the state database passes
SQLite's quick_check, the model that would run verifies. What needs the running gateway (the
module's replies to its set-up, the broker) is listed as skipped, so an OK promises no more
than was checked. The runtime's modules (pyserial, onnxruntime) are imported inside the checks,
so that the other subcommands do not load them.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any, Literal

from gateway.commands.common import CONFIG_HELP, config_path
from gateway.config import ConfigError, GatewayConfig, load_config


@dataclass(frozen=True)
class Check:
    name: str
    outcome: Literal["ok", "FAILED", "skipped"]
    detail: str


def check_devices(cfg: GatewayConfig) -> Check:
    from gateway.uplink.devices import load_devices

    if cfg.input != "serial":
        return Check("devices", "skipped", "ChirpStack holds the device keys (input = \"chirpstack\")")
    try:
        devices = load_devices(cfg.devices_file)
    except ConfigError as e:
        return Check("devices", "FAILED", str(e))
    return Check("devices", "ok", f"{len(devices)} device(s) in {cfg.devices_file}")


def check_serial(cfg: GatewayConfig) -> Check:
    from gateway.radio.dialects import DIALECTS
    from gateway.radio.serial_link import ModuleError, SerialLink

    if cfg.input != "serial":
        return Check("serial", "skipped", "no module: uplinks come from ChirpStack")
    link = SerialLink(cfg.serial, DIALECTS[cfg.serial.dialect]())
    try:
        link.probe()
    except ModuleError as e:
        return Check("serial", "FAILED", str(e))
    return Check("serial", "ok", f"{link.describe()}: the port opens")


def check_state(cfg: GatewayConfig) -> Check:
    from gateway.service.state import StateError, check_database

    path = cfg.state_path
    if not path.exists():
        folder = next(p for p in path.parents if p.exists())
        if not os.access(folder, os.W_OK):
            return Check("state", "FAILED", f"{path}: not there yet, and {folder} is not writable for this user")
        return Check("state", "ok", f"{path}: not there yet; run creates it")
    try:
        check_database(path)
    except StateError as e:
        return Check("state", "FAILED", str(e))
    return Check("state", "ok", f"{path}: passes PRAGMA quick_check")


def check_model(cfg: GatewayConfig) -> Check:
    from gateway.detect.model_store import active_bundle, default_model_root, packaged_default_bundle, verify_bundle
    from gateway.detect.scoring import BundleError

    root = cfg.model_root or default_model_root()
    active = active_bundle(root)
    bundle = active or packaged_default_bundle()
    try:
        manifest = verify_bundle(bundle, min_agreement=cfg.model.min_agreement)  # as the gateway reloads it
    except BundleError as e:
        fallback = "; run falls back to the packaged default model" if active is not None else ""
        return Check("model", "FAILED", f"{e}{fallback}")
    label = f"{manifest['name']}@{manifest['version']}"
    where = f"active in {root}" if active is not None else f"packaged default (nothing active in {root})"
    return Check("model", "ok", f"{label}, {where}: files, sha256 and int8 parity verified")


def skipped(cfg: GatewayConfig) -> list[Check]:
    """What only the running gateway can find out."""
    out = [Check("broker", "skipped", f"{cfg.mqtt.host}:{cfg.mqtt.port} not contacted: run connects, and retries "
                 "while it is away (alerts wait on disk)")]
    if cfg.input == "serial":
        out.append(Check("module", "skipped", "its replies to the set-up commands: run sends them"))
    else:
        c = cfg.chirpstack
        out.append(Check("chirpstack", "skipped", f"{c.host}:{c.port} not contacted"))
    return out


def handler(args: argparse.Namespace) -> int:
    """Exit 0 when every check passed, 1 when one failed, 2 for an invalid configuration file."""
    path = config_path(args.config)
    cfg = load_config(path)
    s = cfg.serial
    print(f"{path}: valid ({s.dialect} module on {s.port} at {s.effective_baud} baud, "
          f"broker {cfg.mqtt.host}:{cfg.mqtt.port})")
    checks = [check_devices(cfg), check_serial(cfg), check_state(cfg), check_model(cfg), *skipped(cfg)]
    for c in checks:
        print(f"  {c.name:<10} {c.outcome:<8} {c.detail}")
    failed = [c.name for c in checks if c.outcome == "FAILED"]
    print(f"{path}: {'FAILED: ' + ', '.join(failed) if failed else 'OK'}")
    return 1 if failed else 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "check-config",
        help="check configuration, devices, serial port, state database and model without starting",
        description="Validate the configuration and devices files (every problem names file, key and value), "
        "open the serial port, run SQLite's quick_check on the state database and verify the model that would "
        "run. The module's set-up replies and the broker are not tried: they are listed as skipped. "
        "Exit status 0 if every check passed, 1 if one failed, 2 if the configuration file is invalid.",
    )
    p.add_argument("--config", "-c", help=CONFIG_HELP)
    p.set_defaults(func=handler)
