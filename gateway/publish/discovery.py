"""Home Assistant MQTT discovery: config payloads for the gateway and each device (pure functions).

Every entity reads the device's retained state topic `<base>/<device>` with a template,
so nothing is published twice. Templates use subscript notation on purpose:
`value_json.values` would be the dict's `values` method in Jinja, not the key. A channel
missing from one uplink renders '', which Home Assistant ignores for a numeric sensor
(the last value stays) instead of logging a template warning.

The gateway itself is a device too (a connectivity binary sensor on `<base>/bridge/state`),
so each node's `via_device` points at a device Home Assistant knows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

MANUFACTURER = "lora-gateway"
MODEL = "lora-gateway"

_CHANNEL = re.compile(r"^(?P<type>[a-z_]+?)_(?P<channel>\d+)(?:_(?P<field>[a-z]+))?$")


@dataclass(frozen=True, slots=True)
class _Kind:
    """How one LPP type shows in Home Assistant; None leaves the option out."""

    device_class: str | None = None
    unit: str | None = None
    state_class: str | None = "measurement"
    icon: str | None = None


# LPP type name -> Home Assistant sensor options. Units are the ones each HA device class accepts.
LPP_KINDS: dict[str, _Kind] = {
    "temperature": _Kind("temperature", "°C"),
    "relative_humidity": _Kind("humidity", "%"),
    "barometric_pressure": _Kind("pressure", "hPa"),
    "luminosity": _Kind("illuminance", "lx"),
    "voltage": _Kind("voltage", "V"),
    "current": _Kind("current", "A"),
    "frequency": _Kind("frequency", "Hz"),
    "power": _Kind("power", "W"),
    # A meter reading only grows; HA's energy dashboard requires total_increasing for it.
    "energy": _Kind("energy", "kWh", "total_increasing"),
    "distance": _Kind("distance", "m"),
    "altitude": _Kind("distance", "m", icon="mdi:altimeter"),
    "percentage": _Kind(unit="%"),
    "concentration": _Kind(unit="ppm", icon="mdi:molecule"),
    "direction": _Kind(unit="°", icon="mdi:compass"),
    "accelerometer": _Kind(unit="G", icon="mdi:axis-arrow"),
    "gyrometer": _Kind(unit="°/s", icon="mdi:rotate-3d-variant"),
    "analog_input": _Kind(icon="mdi:gauge"),
    "analog_output": _Kind(icon="mdi:gauge"),
    "digital_input": _Kind(icon="mdi:numeric"),
    "digital_output": _Kind(icon="mdi:numeric"),
    "presence": _Kind(icon="mdi:motion-sensor"),
    "switch": _Kind(icon="mdi:toggle-switch"),
    "colour": _Kind(icon="mdi:palette"),
    # A clock value, not a measurement: statistics over it mean nothing.
    "unixtime": _Kind(state_class=None, icon="mdi:clock-outline"),
}
_GPS_FIELDS: dict[str, _Kind] = {
    "latitude": _Kind(unit="°", icon="mdi:latitude"),
    "longitude": _Kind(unit="°", icon="mdi:longitude"),
    "altitude": _Kind("distance", "m", icon="mdi:altimeter"),
}
_GENERIC = _Kind()


def channel_kind(name: str) -> _Kind:
    """Home Assistant options for a channel named `<lpp_type>_<channel>[_field]`."""
    m = _CHANNEL.match(name)
    if m is None:
        return _GENERIC
    if m["type"] == "gps" and m["field"] in _GPS_FIELDS:
        return _GPS_FIELDS[m["field"]]
    return LPP_KINDS.get(m["type"], _GENERIC)


def channel_label(name: str) -> str:
    """`relative_humidity_2` -> `Relative humidity 2`, `accelerometer_6_x` -> `Accelerometer 6 x`."""
    text = name.replace("_", " ")
    return text[:1].upper() + text[1:]


@dataclass(frozen=True, slots=True)
class Discovery:
    """Builds discovery messages for one gateway: (topic, payload) pairs, each to publish retained, QoS 1."""

    gateway_id: str
    base_topic: str = "lora-gateway"
    prefix: str = "homeassistant"
    sw_version: str | None = None

    @property
    def bridge_identifier(self) -> str:
        return f"lora-gateway_{self.gateway_id}"

    def node_id(self, device: str) -> str:
        return f"{self.gateway_id}_{device}"

    def topic(self, component: str, device: str, object_id: str) -> str:
        return f"{self.prefix}/{component}/{self.node_id(device)}/{object_id}/config"

    def _origin(self) -> dict[str, Any]:
        origin: dict[str, Any] = {"name": "lora-gateway"}
        if self.sw_version:
            origin["sw_version"] = self.sw_version
        return origin

    def _bridge_availability(self) -> dict[str, str]:
        return {"topic": f"{self.base_topic}/bridge/state", "value_template": "{{ value_json['state'] }}"}

    def bridge(self) -> list[tuple[str, dict[str, Any]]]:
        """The gateway as a device: its connection state. Publish before any device's configs."""
        device: dict[str, Any] = {
            "identifiers": [self.bridge_identifier],
            "name": f"LoRa gateway {self.gateway_id}",
            "manufacturer": MANUFACTURER,
            "model": f"{MODEL} bridge",
        }
        if self.sw_version:
            device["sw_version"] = self.sw_version
        payload = {
            "name": "Connection state",
            "unique_id": f"{self.bridge_identifier}_connection_state",
            "device_class": "connectivity",
            "entity_category": "diagnostic",
            "state_topic": f"{self.base_topic}/bridge/state",
            "value_template": "{{ value_json['state'] }}",
            "payload_on": "online",
            "payload_off": "offline",
            "qos": 1,
            "device": device,
            "origin": self._origin(),
        }
        topic = f"{self.prefix}/binary_sensor/{self.bridge_identifier}/connection_state/config"
        return [(topic, payload)]

    def device(self, device: str, channels: Iterable[str]) -> list[tuple[str, dict[str, Any]]]:
        """A sensor per channel, RSSI, SNR, anomaly score and the alert `problem` binary sensor."""
        add = self._adder(device)
        out = self.channels(device, channels)
        add(out, "sensor", "rssi", "RSSI", value_template="{{ value_json['rssi'] }}", device_class="signal_strength",
            unit_of_measurement="dBm", state_class="measurement", entity_category="diagnostic")
        add(out, "sensor", "snr", "SNR", value_template="{{ value_json['snr'] }}", unit_of_measurement="dB",
            state_class="measurement", entity_category="diagnostic", icon="mdi:signal-variant")
        add(out, "sensor", "anomaly_score", "Anomaly score", value_template="{{ value_json['anomaly_score'] }}",
            state_class="measurement", suggested_display_precision=3, icon="mdi:chart-bell-curve")
        # The least advanced channel's warm-up, 100 once every channel may raise alerts.
        add(out, "sensor", "warm_up", "Warm-up", unit_of_measurement="%", state_class="measurement",
            entity_category="diagnostic", icon="mdi:progress-clock",
            value_template="{{ ((value_json.get('warming_up', {}).values() | list) + [100]) | min }}")
        add(out, "binary_sensor", "alert", "Alert", device_class="problem",
            value_template="{{ 'ON' if value_json['alert_state'] == 'raised' else 'OFF' }}",
            payload_on="ON", payload_off="OFF")
        return out

    def channels(self, device: str, channels: Iterable[str]) -> list[tuple[str, dict[str, Any]]]:
        """The sensors of these channels only: for channels a known device adds later."""
        add = self._adder(device)
        out: list[tuple[str, dict[str, Any]]] = []
        for channel in sorted(set(channels)):
            kind = channel_kind(channel)
            add(
                out, "sensor", channel, channel_label(channel),
                value_template=f"{{{{ value_json['values']['{channel}'] | default('') }}}}",
                device_class=kind.device_class, unit_of_measurement=kind.unit,
                state_class=kind.state_class, icon=kind.icon,
            )
        return out

    def _adder(self, device: str) -> Callable[..., None]:
        state_topic = f"{self.base_topic}/{device}"
        common: dict[str, Any] = {
            "state_topic": state_topic,
            "availability": [self._bridge_availability(), {"topic": f"{state_topic}/availability"}],
            "availability_mode": "all",
            "qos": 1,
            "device": {
                "identifiers": [f"{self.bridge_identifier}_{device}"],
                "name": device,
                "manufacturer": MANUFACTURER,
                "model": MODEL,
                "via_device": self.bridge_identifier,
            },
            "origin": self._origin(),
        }

        def add(out: list[tuple[str, dict[str, Any]]], component: str, object_id: str, name: str,
                **options: Any) -> None:
            payload = {"name": name, "unique_id": f"{self.node_id(device)}_{object_id}", **options, **common}
            out.append((self.topic(component, device, object_id), {k: v for k, v in payload.items() if v is not None}))

        return add

    def device_topics(self, device: str, channels: Iterable[str]) -> list[str]:
        """Every discovery topic of a device: publish an empty retained payload to each to remove it."""
        return [topic for topic, _ in self.device(device, channels)]
