"""Home Assistant discovery payloads: complete for a device, valid against HA's documented options,
and against Home Assistant's own schemas and template engine where HA is installed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_sim.simulation import Simulation
from gateway.config import MqttConfig
from gateway.publish.discovery import Discovery, channel_kind
from gateway.publish.mqtt import MqttPublisher
from gateway.publish.outbox import Outbox
from gateway.publish.telemetry import telemetry_payload
from gateway.records import Reading

from .conftest import Broker, wait_serviced, write_config

CHANNELS = [
    "temperature_1", "relative_humidity_2", "analog_input_3", "accelerometer_6_x", "accelerometer_6_y",
    "accelerometer_6_z", "gps_1_latitude", "gps_1_longitude", "gps_1_altitude", "barometric_pressure_4",
    "luminosity_5", "voltage_7", "current_8", "power_9", "energy_10", "distance_11", "frequency_12",
    "percentage_13", "concentration_14", "direction_15", "gyrometer_16_y", "colour_17_r", "unixtime_18",
    "digital_input_19", "presence_20", "switch_21", "altitude_22", "generic_sensor_23", "digital_output_24",
    "analog_output_25",
]
DISCOVERY = Discovery("site1", "lora-gateway", "homeassistant", "0.1.0")

# Options and their types, from https://www.home-assistant.io/integrations/sensor.mqtt/,
# https://www.home-assistant.io/integrations/binary_sensor.mqtt/ and the discovery section of
# https://www.home-assistant.io/integrations/mqtt/ (device, origin, availability blocks).
COMMON = {
    "availability": list, "availability_mode": str, "availability_template": str, "availability_topic": str,
    "device": dict, "device_class": str, "enabled_by_default": bool, "encoding": str, "entity_category": str,
    "entity_picture": str, "expire_after": int, "force_update": bool, "icon": str,
    "json_attributes_template": str, "json_attributes_topic": str, "name": str, "object_id": str,
    "default_entity_id": str, "origin": dict, "payload_available": str, "payload_not_available": str,
    "qos": int, "state_topic": str, "unique_id": str, "value_template": str,
}
DOCUMENTED = {
    "sensor": {**COMMON, "last_reset_value_template": str, "options": list, "suggested_display_precision": int,
               "state_class": str, "unit_of_measurement": str},
    "binary_sensor": {**COMMON, "off_delay": int, "payload_off": str, "payload_on": str},
}
DEVICE_KEYS = {"configuration_url": str, "connections": list, "hw_version": str, "identifiers": list,
               "manufacturer": str, "model": str, "model_id": str, "name": str, "serial_number": str,
               "suggested_area": str, "sw_version": str, "via_device": str}
ORIGIN_KEYS = {"name": str, "sw_version": str, "support_url": str}
AVAILABILITY_KEYS = {"topic": str, "payload_available": str, "payload_not_available": str, "value_template": str}
# Sensor device classes and state classes named on https://www.home-assistant.io/integrations/sensor/
SENSOR_DEVICE_CLASSES = {"temperature", "humidity", "pressure", "illuminance", "voltage", "current", "frequency",
                         "power", "energy", "distance", "signal_strength"}
STATE_CLASSES = {"measurement", "total", "total_increasing"}


def _typed(where: str, obj: dict, spec: dict) -> None:
    for key, value in obj.items():
        assert key in spec, f"{where}: {key!r} is not a documented option"
        documented = spec[key].__name__
        assert isinstance(value, spec[key]), f"{where}: {key} is {type(value).__name__}, documented {documented}"


def test_every_payload_uses_only_documented_options() -> None:
    for topic, payload in DISCOVERY.bridge() + DISCOVERY.device("pump-house", CHANNELS):
        component = topic.split("/")[1]
        _typed(topic, payload, DOCUMENTED[component])
        _typed(topic, payload["device"], DEVICE_KEYS)
        _typed(topic, payload["origin"], ORIGIN_KEYS)
        for block in payload.get("availability", []):
            _typed(topic, block, AVAILABILITY_KEYS)
        assert payload.get("state_class", "measurement") in STATE_CLASSES
        if component == "sensor" and "device_class" in payload:
            assert payload["device_class"] in SENSOR_DEVICE_CLASSES


def test_a_device_is_complete() -> None:
    configs = dict(DISCOVERY.device("pump-house", ["temperature_1", "relative_humidity_2", "analog_input_3"]))
    node = "homeassistant/{}/site1_pump-house/{}/config"
    assert set(configs) == {
        node.format("sensor", "temperature_1"), node.format("sensor", "relative_humidity_2"),
        node.format("sensor", "analog_input_3"), node.format("sensor", "rssi"), node.format("sensor", "snr"),
        node.format("sensor", "anomaly_score"), node.format("sensor", "warm_up"),
        node.format("binary_sensor", "alert"),
    }
    warm_up = configs[node.format("sensor", "warm_up")]
    assert (warm_up["unit_of_measurement"], warm_up["entity_category"]) == ("%", "diagnostic")
    temperature = configs[node.format("sensor", "temperature_1")]
    assert temperature["device_class"] == "temperature" and temperature["unit_of_measurement"] == "°C"
    assert temperature["state_class"] == "measurement"
    assert temperature["state_topic"] == "lora-gateway/pump-house"
    assert temperature["value_template"] == "{{ value_json['values']['temperature_1'] | default('') }}"
    assert configs[node.format("sensor", "relative_humidity_2")]["unit_of_measurement"] == "%"
    assert "device_class" not in configs[node.format("sensor", "analog_input_3")]
    rssi = configs[node.format("sensor", "rssi")]
    assert (rssi["device_class"], rssi["unit_of_measurement"], rssi["entity_category"]) == (
        "signal_strength", "dBm", "diagnostic")
    alert = configs[node.format("binary_sensor", "alert")]
    assert alert["device_class"] == "problem" and alert["state_topic"] == "lora-gateway/pump-house"
    for payload in configs.values():
        assert payload["availability_mode"] == "all"
        assert payload["availability"] == [
            {"topic": "lora-gateway/bridge/state", "value_template": "{{ value_json['state'] }}"},
            {"topic": "lora-gateway/pump-house/availability"},
        ]
        assert payload["device"] == {
            "identifiers": ["lora-gateway_site1_pump-house"], "name": "pump-house", "manufacturer": "lora-gateway",
            "model": "lora-gateway", "via_device": "lora-gateway_site1",
        }
    # The via_device is a device itself: the bridge's config names that identifier.
    ((_, bridge),) = DISCOVERY.bridge()
    assert bridge["device"]["identifiers"] == ["lora-gateway_site1"]
    # Unique ids are unique, and stable: the same inputs give the same ids whatever the channel order.
    ids = [p["unique_id"] for p in configs.values()]
    assert len(set(ids)) == len(ids)
    again = DISCOVERY.device("pump-house", ["analog_input_3", "relative_humidity_2", "temperature_1"])
    assert sorted(p["unique_id"] for _, p in again) == sorted(ids)
    assert DISCOVERY.device_topics("pump-house", ["temperature_1", "relative_humidity_2", "analog_input_3"]) == list(
        configs)


def test_units_follow_the_lpp_type() -> None:
    expected = {
        "temperature_1": ("temperature", "°C"), "relative_humidity_2": ("humidity", "%"),
        "barometric_pressure_4": ("pressure", "hPa"), "luminosity_5": ("illuminance", "lx"),
        "voltage_7": ("voltage", "V"), "current_8": ("current", "A"), "power_9": ("power", "W"),
        "energy_10": ("energy", "kWh"), "distance_11": ("distance", "m"), "frequency_12": ("frequency", "Hz"),
        "gps_1_altitude": ("distance", "m"), "gps_1_latitude": (None, "°"), "accelerometer_6_x": (None, "G"),
        "analog_input_3": (None, None),
    }
    for name, (device_class, unit) in expected.items():
        kind = channel_kind(name)
        assert (kind.device_class, kind.unit) == (device_class, unit), name
    assert channel_kind("energy_10").state_class == "total_increasing"


def _ha_python() -> str | None:
    """An interpreter with Home Assistant: $HOMEASSISTANT_PYTHON, or this one if it has it."""
    if os.environ.get("HOMEASSISTANT_PYTHON"):
        return os.environ["HOMEASSISTANT_PYTHON"]
    return sys.executable if importlib.util.find_spec("homeassistant") else None


def _ha_check(request: dict) -> list[str]:
    python = _ha_python()
    if python is None:
        pytest.skip("Home Assistant is not installed (it needs Python 3.13); set HOMEASSISTANT_PYTHON to a "
                    "python with `pip install homeassistant paho-mqtt`")
    script = Path(__file__).with_name("ha_check_discovery.py")
    done = subprocess.run([python, str(script)], input=json.dumps(request), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _request(configs: list) -> dict:
    state = {"device": "pump-house", "values": {c: 1.5 for c in CHANNELS}, "rssi": -80.0, "snr": 5.0, "fcnt": 1,
             "time": 1.0, "anomaly_score": 0.25, "alert_state": "raised", "warming_up": {"temperature_1": 37}}
    return {"prefix": "homeassistant", "configs": configs,
            "states": {"lora-gateway/pump-house": json.dumps(state),
                       "lora-gateway/bridge/state": json.dumps({"state": "online"})}}


def test_valid_for_home_assistants_own_schemas_and_templates() -> None:
    configs = DISCOVERY.bridge() + DISCOVERY.device("pump-house", CHANNELS)
    assert _ha_check(_request(configs)) == []


def test_home_assistant_check_catches_mistakes() -> None:
    """The check itself can fail: a stray key, a wrong unit, the `value_json.values` trap."""
    (topic, good), *_ = DISCOVERY.device("pump-house", ["temperature_1"])
    bad = [
        (topic, {**good, "unit": "°C"}),
        (topic, {**good, "unit_of_measurement": "K/s"}),
        (topic, {**good, "value_template": "{{ value_json.values.temperature_1 }}"}),
    ]
    problems = _ha_check(_request(bad))
    assert len(problems) == 3, problems
    assert "extra keys not allowed" in problems[0] and "not valid for device class" in problems[1]
    assert "not a number" in problems[2]


def test_the_running_gateway_announces_its_devices(tmp_path: Path, broker, recorder_factory, gateways,
                                                   devices_file) -> None:
    """A real `lora-gateway run`: retained configs for the bridge and each device reach mosquitto."""
    with Simulation("rylr", devices_file, period_s=0.3, seed=5) as sim:
        config = write_config(tmp_path / "config.toml", port=sim.port, dialect="rylr", mqtt_port=broker.port,
                              devices_file=devices_file, state_path=tmp_path / "state.db")
        gateway = gateways(config).start()
        recorder = recorder_factory(broker.port, ["homeassistant/#", "lora-gateway/+"])
        recorder.wait_for(lambda m: {t.split("/")[2] for t, _, _ in m if t.endswith("/alert/config")}
                          == {"test_pump-house", "test_cold-room"})
        assert gateway.stop() == 0, gateway.output()
    # A dashboard that connects now still gets every config: they are retained.
    late = recorder_factory(broker.port, ["homeassistant/#"])
    discovery = Discovery("test", "lora-gateway", "homeassistant")
    states = {t: p.decode() for t, p, _ in recorder.messages if t.startswith("lora-gateway/")}
    expected = {t for d in ("pump-house", "cold-room")
                for t in discovery.device_topics(d, json.loads(states[f"lora-gateway/{d}"])["values"])}
    expected.add(discovery.bridge()[0][0])
    late.wait_for(lambda m: {t for t, _, retained in m if retained} >= expected)
    configs = [(t, json.loads(p)) for t, p, _ in late.messages]
    for topic, payload in configs:
        _typed(topic, payload, DOCUMENTED[topic.split("/")[1]])
    states["lora-gateway/bridge/state"] = json.dumps({"state": "online"})
    if _ha_python() is not None:
        assert _ha_check({"prefix": "homeassistant", "configs": configs, "states": states}) == []


def test_a_broker_that_forgot_everything_gets_the_discovery_again(tmp_path: Path, recorder_factory, gateways,
                                                                  devices_file) -> None:
    """The configs are not kept as messages but made afresh for each connect: a broker restarted
    without persistence (its retained messages gone) has every device's configs again."""
    broker = Broker(tmp_path)
    broker.config.write_text(broker.config.read_text().replace("persistence true", "persistence false"))
    broker.start()
    try:
        with Simulation("rylr", devices_file, period_s=0.3, seed=5) as sim:
            config = write_config(tmp_path / "config.toml", port=sim.port, dialect="rylr", mqtt_port=broker.port,
                                  devices_file=devices_file, state_path=tmp_path / "state.db")
            gateway = gateways(config).start()
            recorder = recorder_factory(broker.port, ["homeassistant/#"])
            recorder.wait_for(lambda m: {t.split("/")[2] for t, _, _ in m if t.endswith("/alert/config")}
                              == {"test_pump-house", "test_cold-room"})
            before = {t: json.loads(p) for t, p, _ in recorder.messages}
            broker.stop()
            broker.start()
            again = recorder_factory(broker.port, ["homeassistant/#"])
            again.wait_for(lambda m: {t for t, _, _ in m} >= set(before))  # sent again after the reconnect
            late = recorder_factory(broker.port, ["homeassistant/#"])
            late.wait_for(lambda m: {t for t, _, retained in m if retained} >= set(before))
            assert {t: json.loads(p) for t, p, _ in late.messages if t in before} == before
            assert gateway.stop() == 0, gateway.output()
    finally:
        broker.stop()


def test_warm_up_shows_the_least_advanced_channel() -> None:
    """The template over the state payloads the daemon publishes, in Jinja's sandbox as Home Assistant
    renders it: the lowest percent while a channel warms up, 100 once none does."""
    sandbox = pytest.importorskip("jinja2.sandbox")

    (_, config), = [(t, c) for t, c in DISCOVERY.device("pump-house", ["temperature_1"]) if "/warm_up/" in t]
    template = sandbox.ImmutableSandboxedEnvironment().from_string(config["value_template"])
    reading = Reading("pump-house", {"temperature_1": 4.0, "relative_humidity_2": 80.0}, 1, -80.0, 5.0, 1.0)
    for warming, shown in (({"temperature_1": 37, "relative_humidity_2": 12}, "12"), ({}, "100")):
        assert template.render(value_json=json.loads(telemetry_payload(reading, warming_up=warming))) == shown


def test_discovery_made_while_the_broker_connects_goes_once(tmp_path: Path, broker: Broker, recorder_factory) -> None:
    # The daemon is ready, and reads frames, before its broker session is up: the discovery of a
    # device heard then went queued and again with the connect's announcements (each config twice).
    configs = [(f"homeassistant/sensor/t_pump/analog_input_{c}/config", {"name": f"analog {c}"}) for c in range(3)]
    recorder = recorder_factory(broker.port, ["homeassistant/#"])
    publisher = MqttPublisher(MqttConfig(port=broker.port), "t", {}, Outbox(tmp_path / "s.db"),
                              announcements=lambda: configs)
    publisher.start()
    publisher.publish_discovery(configs)  # before service() has seen the session
    wait_serviced(publisher.connected.is_set, publisher)
    assert publisher.drain(30)
    publisher.publish_discovery([("homeassistant/sensor/t_pump/end/config", {"name": "end"})])  # a fence, in order
    recorder.wait_for(lambda m: any(t.endswith("/end/config") for t, _, _ in m))
    publisher.stop()
    assert sorted(t for t, _, _ in recorder.messages if "analog_input" in t) == [t for t, _ in configs]
