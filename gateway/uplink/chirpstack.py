"""Uplinks from ChirpStack v4's MQTT integration instead of a serial module.

For larger LoRaWAN networks the network server (ChirpStack) has already checked the MIC and
frame counter and decrypted the payload; this input turns its uplink events into the same
`Reading`s the serial pipeline makes, so detection and publishing are unchanged.

Fields relied on, from ChirpStack v4's `integration.UplinkEvent` as its MQTT integration
publishes it (JSON, proto field names in lowerCamelCase) on
`application/<application id>/device/<DevEUI>/event/up`:
- `deviceInfo.deviceName` (the reading's device; characters outside `[A-Za-z0-9_-]` become `-`),
  else `deviceInfo.devEui`; the names of `object`'s values are made safe the same way, so none
  adds a topic level or reaches into a Home Assistant template;
- `fCnt` (absent means 0: proto3 JSON leaves out default values);
- `object`: the payload as the device profile's codec decoded it. Used when present: flat
  `{name: number}` keeps its names; ChirpStack's Cayenne LPP codec shape
  (`{"temperatureSensor": {"3": 27.2}, "accelerometer": {"6": {"x": ..}}}`) is renamed to this
  gateway's `<lpp_type>_<channel>[_field]` names;
- `data`: base64 FRMPayload, decoded here as Cayenne LPP when there is no `object`;
- `rxInfo[].rssi` / `rxInfo[].snr`: of the gateway that heard it best (highest RSSI).
The reading's time is when this input received the event, as for the serial input. The event is
checked by a pydantic model (`UplinkEvent`): one that does not fit is rejected as
`chirpstack_invalid`, naming the field.
"""

from __future__ import annotations

import base64
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
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

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


class _Strict(BaseModel):
    # ChirpStack's JSON names (lowerCamelCase) onto Python names; fields not used here are ignored.
    model_config = ConfigDict(alias_generator=to_camel, extra="ignore", allow_inf_nan=False)


class _DeviceInfo(_Strict):
    device_name: str = ""
    dev_eui: str = ""


class _RxInfo(_Strict):
    rssi: float | None = None
    snr: float | None = None


class UplinkEvent(_Strict):
    """The fields of ChirpStack's `integration.UplinkEvent` this input relies on, checked."""

    device_info: _DeviceInfo
    f_cnt: int = Field(0, ge=0, le=0xFFFFFFFF)  # absent means 0: proto3 JSON leaves out default values
    f_port: int | None = Field(None, ge=0, le=255)
    object: dict[str, Any] | None = None
    data: str | None = None
    rx_info: list[_RxInfo] = Field(default_factory=list)


def safe_name(name: str) -> str:
    """A name that is one topic level and safe in a Home Assistant template: `[A-Za-z0-9_-]`, at most 64."""
    return _UNSAFE.sub("-", name)[:64]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer past float's range
        return None
    return number if math.isfinite(number) else None


def _flatten(obj: dict[str, Any]) -> dict[str, float]:
    """Values of a decoded `object`: numbers by name, ChirpStack's Cayenne shape renamed, the rest left
    out. Names are made safe as device names are; of two that come out the same, the first is kept."""
    out: dict[str, float] = {}

    def put(name: str, value: Any) -> None:
        if (n := _number(value)) is not None and (safe := safe_name(name)):
            out.setdefault(safe, n)

    for key, value in obj.items():
        lpp_type = _CHIRPSTACK_LPP.get(key)
        if lpp_type is not None and isinstance(value, dict):
            for channel, reading in value.items():
                if isinstance(reading, dict):
                    for field, x in reading.items():
                        put(f"{lpp_type}_{channel}_{field}", x)
                else:
                    put(f"{lpp_type}_{channel}", reading)
        else:
            put(key, value)
    return out


def _invalid(err: ValidationError) -> Rejected:
    """The first problem, by field path; never the value, which can be anything up to a whole payload."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return Rejected("chirpstack_invalid", f"{where}: {first['msg']}{more}")


def parse_uplink(payload: bytes, now: float) -> Reading:
    """One ChirpStack uplink event -> Reading; Rejected (reason `chirpstack_*` or `lpp_*`) if unusable."""
    try:
        raw = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise Rejected("chirpstack_not_json", str(e)[:200]) from None
    if not isinstance(raw, dict):
        raise Rejected("chirpstack_not_json", "not a JSON object")
    if raw.get("deviceInfo") is None:
        raise Rejected("chirpstack_no_device", "no deviceInfo")
    try:
        event = UplinkEvent.model_validate(raw)
    except ValidationError as e:
        raise _invalid(e) from None
    name = safe_name(event.device_info.device_name or event.device_info.dev_eui)
    if not name:
        raise Rejected("chirpstack_no_device", "no deviceInfo.deviceName or devEui")
    if event.object:
        values = _flatten(event.object)
    elif event.data:
        try:
            values = lpp.decode(base64.b64decode(event.data, validate=True))
        except ValueError as e:  # binascii.Error, and non-ASCII text
            raise Rejected("chirpstack_bad_data", f"data is not base64: {e}") from None
    else:
        raise Rejected("chirpstack_no_payload", f"{name}: neither object nor data (fPort {event.f_port})")
    if not values:
        raise Rejected("chirpstack_no_values", f"{name}: the decoded object holds no numbers")
    heard = [rx for rx in event.rx_info if rx.rssi is not None]
    best = max(heard, key=lambda rx: rx.rssi or 0.0, default=_RxInfo())
    return Reading(
        device=name,
        values=values,
        fcnt=event.f_cnt,
        rssi=math.nan if best.rssi is None else best.rssi,
        snr=math.nan if best.snr is None else best.snr,
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
