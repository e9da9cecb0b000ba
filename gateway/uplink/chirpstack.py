"""Uplinks from ChirpStack v4's MQTT integration instead of a serial module.

For larger LoRaWAN networks the network server (ChirpStack) has already checked the MIC and
frame counter and decrypted the payload; this input turns its uplink events into the same
`Reading`s the serial pipeline makes, so detection and publishing are unchanged.

Fields relied on, from ChirpStack v4's `integration.UplinkEvent` as its MQTT integration
publishes it (JSON, proto field names in lowerCamelCase) on
`application/<application id>/device/<DevEUI>/event/up`:
- `deviceInfo.deviceName` (the reading's device; characters outside `[A-Za-z0-9_-]` become `-`),
  else `deviceInfo.devEui`;
- `fCnt` (absent means 0: proto3 JSON leaves out default values);
- `object`: the payload as the device profile's codec decoded it. Used when present: flat
  `{name: number}` keeps its names; ChirpStack's Cayenne LPP codec shape
  (`{"temperatureSensor": {"3": 27.2}, "accelerometer": {"6": {"x": ..}}}`) is renamed to this
  gateway's `<lpp_type>_<channel>[_field]` names;
- `data`: base64 FRMPayload, decoded here as Cayenne LPP when there is no `object`;
- `rxInfo[].rssi` / `rxInfo[].snr`: of the gateway that heard it best (highest RSSI).
The reading's time is when this input received the event, as for the serial input.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import queue
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.records import Reading, Rejected
from gateway.uplink import lpp

UPLINK_TOPIC = "application/+/device/+/event/up"

# ChirpStack's Cayenne LPP codec object keys -> this gateway's LPP type names.
_CHIRPSTACK_LPP = {
    "digitalInput": "digital_input", "digitalOutput": "digital_output", "analogInput": "analog_input",
    "analogOutput": "analog_output", "illuminanceSensor": "luminosity", "presenceSensor": "presence",
    "temperatureSensor": "temperature", "humiditySensor": "relative_humidity", "accelerometer": "accelerometer",
    "barometer": "barometric_pressure", "gyrometer": "gyrometer", "gpsLocation": "gps",
}
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _flatten(obj: dict[str, Any]) -> dict[str, float]:
    """Values of a decoded `object`: numbers by name, ChirpStack's Cayenne shape renamed, the rest left out."""
    out: dict[str, float] = {}
    for key, value in obj.items():
        lpp_type = _CHIRPSTACK_LPP.get(key)
        if lpp_type is not None and isinstance(value, dict):
            for channel, reading in value.items():
                if isinstance(reading, dict):
                    for field, x in reading.items():
                        if (n := _number(x)) is not None:
                            out[f"{lpp_type}_{channel}_{field}"] = n
                elif (n := _number(reading)) is not None:
                    out[f"{lpp_type}_{channel}"] = n
        elif (n := _number(value)) is not None:
            out[key] = n
    return out


def parse_uplink(payload: bytes, now: float) -> Reading:
    """One ChirpStack uplink event -> Reading; Rejected (reason `chirpstack_*` or `lpp_*`) if unusable."""
    try:
        event = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Rejected("chirpstack_not_json", str(e)) from None
    if not isinstance(event, dict):
        raise Rejected("chirpstack_not_json", "not a JSON object")
    info = event.get("deviceInfo") or {}
    name = info.get("deviceName") or info.get("devEui")
    if not isinstance(name, str) or not name:
        raise Rejected("chirpstack_no_device", "no deviceInfo.deviceName or devEui")
    obj = event.get("object")
    if isinstance(obj, dict) and obj:
        values = _flatten(obj)
    elif isinstance(event.get("data"), str) and event["data"]:
        try:
            values = lpp.decode(base64.b64decode(event["data"], validate=True))
        except binascii.Error as e:
            raise Rejected("chirpstack_bad_data", f"data is not base64: {e}") from None
    else:
        raise Rejected("chirpstack_no_payload", f"{name}: neither object nor data (fPort {event.get('fPort')})")
    if not values:
        raise Rejected("chirpstack_no_values", f"{name}: the decoded object holds no numbers")
    heard = [rx for rx in event.get("rxInfo") or [] if _number(rx.get("rssi")) is not None]
    best: dict[str, Any] = max(heard, key=lambda rx: rx["rssi"], default={})
    return Reading(
        device=_UNSAFE.sub("-", name)[:64],
        values=values,
        fcnt=int(event.get("fCnt", 0)),
        rssi=float(best.get("rssi", math.nan)),
        snr=float(best.get("snr", math.nan)),
        time=now,
    )


class ChirpStackInput:
    """Subscribes to the uplink events on a broker; `batches()` yields what arrived, like the serial link."""

    def __init__(self, host: str, port: int = 1883, *, topic: str = UPLINK_TOPIC, client_id: str = "",
                 username: str | None = None, password: str | None = None) -> None:
        self._queue: queue.SimpleQueue[tuple[bytes, float]] = queue.SimpleQueue()
        self.subscribed = threading.Event()  # set while the broker has our subscription
        self.host, self.port, self.topic = host, port, topic
        # A persistent session (with a client id) keeps QoS 1 uplinks at the broker while we are away.
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not client_id)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(self.topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.client.on_disconnect = lambda c, u, f, rc, p: self.subscribed.clear()
        self.client.on_message = lambda c, u, msg: self._queue.put((bytes(msg.payload), time.time()))

    def start(self) -> ChirpStackInput:
        self.client.connect_async(self.host, self.port)
        self.client.loop_start()
        return self

    def batches(self, wait_s: float = 0.1) -> Iterator[list[Reading | Rejected]]:
        """Everything that arrived, parsed, every `wait_s` at most (an empty list on a quiet wait)."""
        while True:
            batch: list[Reading | Rejected] = []
            try:
                item = self._queue.get(timeout=wait_s)
                while True:
                    try:
                        batch.append(parse_uplink(*item))
                    except Rejected as r:
                        batch.append(r)
                    item = self._queue.get_nowait()
            except queue.Empty:
                pass
            yield batch

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
