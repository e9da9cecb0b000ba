"""The device registry: a TOML file of ABP session keys that only its owner may read."""

from __future__ import annotations

import csv
import io
import os
import re
import secrets
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.config import ConfigError, format_validation_error, mask_keys, read_toml
from gateway import private_files
from gateway.uplink.lorawan import SessionKeys

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class DeviceEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dev_addr: str = Field(description="DevAddr, 8 hex digits, big-endian as written on labels (26011BDA).")
    nwk_skey: str = Field(description="Network session key, 32 hex digits.", repr=False)
    app_skey: str = Field(description="Application session key, 32 hex digits.", repr=False)
    period_s: float | None = Field(None, gt=0, description="Expected reporting period; silence past 3x marks it offline.")
    telemetry_qos: int | None = Field(None, ge=0, le=1, description="QoS of this device's telemetry; default [mqtt] telemetry_qos.")

    @field_validator("dev_addr")
    @classmethod
    def _dev_addr(cls, v: str) -> str:
        if not re.fullmatch(r"[0-9A-Fa-f]{8}", v):
            raise ValueError("must be 8 hex digits")
        return v.upper()

    @field_validator("nwk_skey", "app_skey")
    @classmethod
    def _key(cls, v: str) -> str:
        # The message must not echo the key: pydantic would print the input, so say only its shape.
        if not re.fullmatch(r"[0-9A-Fa-f]{32}", v):
            raise ValueError(f"must be 32 hex digits (got {len(v)} characters)")
        return v.upper()


class DevicesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    devices: dict[str, DeviceEntry] = Field(default_factory=dict)


def telemetry_qos_overrides(devices: dict[str, DeviceEntry]) -> dict[str, int]:
    """The devices whose telemetry QoS differs from `[mqtt] telemetry_qos`, with theirs."""
    return {name: e.telemetry_qos for name, e in devices.items() if e.telemetry_qos is not None}


def load_devices(path: Path) -> dict[str, DeviceEntry]:
    if not path.exists():
        raise ConfigError(f"{path}: devices file not found (create one with: lora-gateway device add NAME)")
    if (unsafe := private_files.problem(path, "device keys")) is not None:
        raise ConfigError(unsafe)
    raw = read_toml(path)
    try:
        parsed = DevicesFile.model_validate(raw)
    except ValidationError as e:
        # Never let a key's value into a message.
        raise ConfigError(format_validation_error(str(path), e, model=DevicesFile, echo=False)) from None
    seen: dict[str, str] = {}
    for name, entry in parsed.devices.items():
        if not _NAME.match(name):
            raise ConfigError(
                f"{path}: devices.{mask_keys(name)}: a device name uses letters, digits, '-' and '_' only"
            )
        if entry.dev_addr in seen:
            raise ConfigError(
                f"{path}: devices.{name}.dev_addr: {entry.dev_addr} is already used by {seen[entry.dev_addr]}"
            )
        seen[entry.dev_addr] = name
    return parsed.devices


def session_keys(devices: dict[str, DeviceEntry]) -> list[SessionKeys]:
    return [
        SessionKeys(
            name=name,
            dev_addr=int(e.dev_addr, 16),
            nwk_skey=bytes.fromhex(e.nwk_skey),
            app_skey=bytes.fromhex(e.app_skey),
        )
        for name, e in devices.items()
    ]


def _toml_entry(name: str, e: DeviceEntry) -> str:
    lines = [f"[devices.{name}]", f'dev_addr = "{e.dev_addr}"', f'nwk_skey = "{e.nwk_skey}"', f'app_skey = "{e.app_skey}"']
    if e.period_s is not None:
        lines.append(f"period_s = {e.period_s}")
    if e.telemetry_qos is not None:
        lines.append(f"telemetry_qos = {e.telemetry_qos}")
    return "\n".join(lines) + "\n"


def add_device(path: Path, name: str, period_s: float | None = None, *, parents: bool = False) -> DeviceEntry:
    """Append a device with fresh random keys; the file is created 0600 if missing."""
    return add_devices(path, [name], period_s, parents=parents)[name]


def add_devices(
    path: Path, names: list[str], period_s: float | None = None, *, parents: bool = False
) -> dict[str, DeviceEntry]:
    """Append devices with fresh random keys in one write (the file is read once, not per device).

    A missing folder is made (private to its owner) only with `parents`: a mistyped path must not
    leave a new folder somewhere, at / when run as root.
    """
    _check_folder(path, parents)
    devices = load_devices(path) if path.exists() else {}
    used = {e.dev_addr for e in devices.values()}
    added: dict[str, DeviceEntry] = {}
    for name in names:
        if name in added:
            raise ConfigError(f"device {name!r} is given twice")
        while True:
            # NwkID 0x13 prefix (7 bits) is one the LoRa Alliance keeps for experimental/private networks.
            dev_addr = f"{(0x13 << 25) | secrets.randbits(25):08X}"
            if dev_addr not in used:
                used.add(dev_addr)
                break
        added[name] = DeviceEntry(
            dev_addr=dev_addr,
            nwk_skey=secrets.token_hex(16).upper(),
            app_skey=secrets.token_hex(16).upper(),
            period_s=period_s,
        )
    _append(path, devices, added)
    return added


def _check_folder(path: Path, parents: bool) -> None:
    if not path.parent.is_dir() and not parents:
        raise ConfigError(f"{path}: folder {path.parent} does not exist (create it, or give --parents)")


def import_devices(path: Path, source: Path, *, parents: bool = False) -> dict[str, DeviceEntry]:
    """Append the devices of a CSV file (`name,dev_addr,nwk_skey,app_skey[,period_s]`, with that header):
    ABP devices whose keys were made elsewhere, such as a ChirpStack export."""
    _check_folder(path, parents)
    entries = read_csv(source)
    _append(path, load_devices(path) if path.exists() else {}, entries)
    return entries


def read_csv(source: Path) -> dict[str, DeviceEntry]:
    """The devices of a CSV file; an error names the line and the column, never a value."""
    try:
        text = source.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise ConfigError(f"{source}: cannot read: {e.strerror}") from None
    rows = csv.DictReader(io.StringIO(text))
    missing = {"name", "dev_addr", "nwk_skey", "app_skey"} - set(rows.fieldnames or [])
    if missing:
        raise ConfigError(f"{source}: line 1: the header lacks {', '.join(sorted(missing))} "
                          "(wanted: name,dev_addr,nwk_skey,app_skey[,period_s])")
    out: dict[str, DeviceEntry] = {}
    for row in rows:
        where = f"{source}: line {rows.line_num}"
        name = (row.get("name") or "").strip()
        fields = {k: v.strip() for k, v in row.items() if k != "name" and isinstance(v, str) and v.strip()}
        try:
            entry = DeviceEntry.model_validate(fields)
        except ValidationError as e:
            raise ConfigError(format_validation_error(where, e, model=DeviceEntry, echo=False)) from None
        if name in out:
            raise ConfigError(f"{where}: device {mask_keys(name)!r} is twice in the file")
        out[name] = entry
    return out


def _append(path: Path, devices: dict[str, DeviceEntry], added: dict[str, DeviceEntry]) -> None:
    """Check the new devices against the file's, then append them in one write (created 0600)."""
    used = {e.dev_addr: name for name, e in devices.items()}
    for name, entry in added.items():
        if not _NAME.match(name):
            raise ConfigError(f"device name {mask_keys(name)!r}: use 1-64 letters, digits, '-' and '_'")
        if name in devices:
            raise ConfigError(f"{path}: device {name!r} already exists")
        if entry.dev_addr in used:
            raise ConfigError(f"{path}: {name}: DevAddr {entry.dev_addr} is already used by {used[entry.dev_addr]}")
        used[entry.dev_addr] = name
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write("".join(("\n" if f.tell() > 0 or i else "") + _toml_entry(name, entry)
                        for i, (name, entry) in enumerate(added.items())))


def firmware_snippet(name: str, e: DeviceEntry) -> str:
    """The keys in the form node firmware (LMIC, RadioLib, RUI3) expects."""
    def c_array(hexstr: str) -> str:
        return "{ " + ", ".join(f"0x{hexstr[i:i + 2]}" for i in range(0, len(hexstr), 2)) + " }"

    return (
        f"Device {name} (ABP, LoRaWAN 1.0.x). Shown once: keep it secret.\n"
        f"  DevAddr : {e.dev_addr}\n"
        f"  NwkSKey : {e.nwk_skey}\n"
        f"  AppSKey : {e.app_skey}\n"
        f"C (LMIC / RadioLib, MSB first):\n"
        f"  static const uint32_t DEVADDR = 0x{e.dev_addr};\n"
        f"  static const uint8_t NWKSKEY[16] = {c_array(e.nwk_skey)};\n"
        f"  static const uint8_t APPSKEY[16] = {c_array(e.app_skey)};\n"
        f"RAK3172 (RUI3): AT+DEVADDR={e.dev_addr}  AT+NWKSKEY={e.nwk_skey}  AT+APPSKEY={e.app_skey}\n"
    )
