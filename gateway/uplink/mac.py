"""MAC commands a device sends on FPort 0 (LoRaWAN 1.0.x, sections 4.3.2 and 5): network
management, never sensor data.

This gateway sends no downlinks, so it answers none of them; it decodes what they say (a
DevStatusAns carries the battery level and the link margin) for the `mac_commands` event.
"""

from __future__ import annotations

from typing import Any

from gateway.records import Rejected

# Uplink CID -> (name, payload length).
_COMMANDS: dict[int, tuple[str, int]] = {
    0x02: ("LinkCheckReq", 0),
    0x03: ("LinkADRAns", 1),
    0x04: ("DutyCycleAns", 0),
    0x05: ("RXParamSetupAns", 1),
    0x06: ("DevStatusAns", 2),
    0x07: ("NewChannelAns", 1),
    0x08: ("RXTimingSetupAns", 0),
    0x09: ("TxParamSetupAns", 0),
    0x0A: ("DlChannelAns", 1),
}


def _dev_status(body: bytes) -> dict[str, Any]:
    battery = body[0]
    margin = body[1] & 0x3F
    return {
        # 0: on external power; 1..254: level; 255: the device could not measure it.
        "battery": None if battery == 255 else battery,
        "external_power": battery == 0,
        "margin_db": margin - 64 if margin & 0x20 else margin,  # 6-bit signed SNR margin of the last downlink
    }


def decode(payload: bytes) -> list[dict[str, Any]]:
    """The commands in a FPort 0 payload, in order; Rejected on an unknown CID or a cut command."""
    if not payload:
        raise Rejected("mac_empty", "FPort 0 without MAC commands")
    out: list[dict[str, Any]] = []
    pos = 0
    while pos < len(payload):
        cid = payload[pos]
        known = _COMMANDS.get(cid)
        if known is None:
            raise Rejected("mac_unknown_command", f"CID 0x{cid:02X} at offset {pos}")
        name, size = known
        body = payload[pos + 1 : pos + 1 + size]
        if len(body) < size:
            raise Rejected("mac_truncated", f"{name} at offset {pos} wants {size} bytes, {len(body)} left")
        command: dict[str, Any] = {"command": name}
        if name == "DevStatusAns":
            command.update(_dev_status(body))
        elif size:
            command["status"] = body[0]
        out.append(command)
        pos += 1 + size
    return out
