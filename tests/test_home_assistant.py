"""A real Home Assistant discovers the gateway's devices: simulator -> `lora-gateway run` -> mosquitto -> HA.

Home Assistant needs Python 3.13 and is large, so it lives in its own environment:
    python3.13 -m venv /opt/ha && /opt/ha/bin/pip install homeassistant paho-mqtt home-assistant-frontend
    HOMEASSISTANT_PYTHON=/opt/ha/bin/python pytest tests/test_home_assistant.py
(home-assistant-frontend at the version homeassistant/components/frontend/manifest.json names).
HA's `mqtt_statestream` publishes every entity's state and attributes back to the broker, which
is how this test reads what Home Assistant made of the discovery messages.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from firmware_sim.simulation import Simulation

from .conftest import free_port, write_config

CONFIGURATION = """\
homeassistant:
  name: test
  unit_system: metric
  time_zone: UTC
  latitude: 0
  longitude: 0
  elevation: 0
  country: DE
http:
  server_host: 127.0.0.1
  server_port: {http_port}
logger:
  default: warning
mqtt_statestream:
  base_topic: hastate
  publish_attributes: true
"""


def _hass() -> Path:
    python = os.environ.get("HOMEASSISTANT_PYTHON")
    if not python:
        pytest.skip("set HOMEASSISTANT_PYTHON to a python with homeassistant installed (see this file's docstring)")
    return Path(python).with_name("hass")


def _ha_config(directory: Path, mqtt_port: int) -> Path:
    (directory / ".storage").mkdir(parents=True)
    (directory / "configuration.yaml").write_text(CONFIGURATION.format(http_port=free_port()))
    # The MQTT integration is set up through a config entry (the UI's job); Home Assistant migrates this minimal one.
    entry = {"entry_id": "01JLORAGATEWAYTESTMQTT00000", "version": 1, "minor_version": 1, "domain": "mqtt",
             "title": "mqtt", "data": {"broker": "127.0.0.1", "port": mqtt_port}, "options": {},
             "pref_disable_new_entities": False, "pref_disable_polling": False, "source": "user",
             "unique_id": None, "disabled_by": None}
    (directory / ".storage" / "core.config_entries").write_text(json.dumps(
        {"version": 1, "minor_version": 1, "key": "core.config_entries", "data": {"entries": [entry]}}))
    return directory


def test_home_assistant_shows_the_devices_and_follows_availability(
    tmp_path: Path, broker, recorder_factory, gateways, devices_file
) -> None:
    hass = _hass()
    states = recorder_factory(broker.port, ["hastate/#", "lora-gateway/+"])
    config_dir = _ha_config(tmp_path / "ha", broker.port)
    ha_log = (tmp_path / "ha.log").open("w")
    ha = subprocess.Popen([str(hass), "-c", str(config_dir), "--skip-pip"], stdout=ha_log, stderr=subprocess.STDOUT)
    try:
        with Simulation("rylr", devices_file, period_s=0.5, seed=6) as sim:
            config = write_config(tmp_path / "config.toml", port=sim.port, dialect="rylr", mqtt_port=broker.port,
                                  devices_file=devices_file, state_path=tmp_path / "state.db")
            gateway = gateways(config).start()

            def ha_state(entity: str):
                return lambda m: any(t == f"hastate/{entity}/state" and p not in (b"unknown", b"unavailable")
                                     for t, p, _ in m)

            states.wait_for(ha_state("binary_sensor/pump_house_alert"), timeout=90)
            reading = states.payloads("lora-gateway/pump-house")[-1]
            for channel in reading["values"]:
                states.wait_for(ha_state(f"sensor/pump_house_{channel}"))
            states.wait_for(ha_state("sensor/pump_house_rssi"))
            states.wait_for(ha_state("binary_sensor/lora_gateway_test_connection_state"))
            assert gateway.stop() == 0, gateway.output()

        # The gateway said offline: with availability_mode all, every entity of its devices is unavailable.
        states.wait_for(lambda m: (t := [p for tp, p, _ in m if tp == "hastate/sensor/pump_house_rssi/state"])
                        and t[-1] == b"unavailable")
    finally:
        ha.terminate()
        ha.wait(timeout=60)
        ha_log.close()

    def last(topic: str) -> str:
        return [p for t, p, _ in states.messages if t == topic][-1].decode()

    temperature = next(c for c in reading["values"] if c.startswith("temperature_"))
    assert json.loads(last(f"hastate/sensor/pump_house_{temperature}/unit_of_measurement")) == "°C"
    assert json.loads(last(f"hastate/sensor/pump_house_{temperature}/device_class")) == "temperature"
    assert json.loads(last("hastate/sensor/pump_house_rssi/unit_of_measurement")) == "dBm"
    assert json.loads(last("hastate/binary_sensor/pump_house_alert/device_class")) == "problem"
    seen = [float(p) for t, p, _ in states.messages
            if t == f"hastate/sensor/pump_house_{temperature}/state" and p not in (b"unknown", b"unavailable")]
    assert seen and all(-40 < v < 60 for v in seen)
    assert {p for t, p, _ in states.messages if t == "hastate/binary_sensor/pump_house_alert/state"} >= {b"off"}
    # Home Assistant took every message without complaint.
    complaints = [line for line in (tmp_path / "ha.log").read_text().splitlines()
                  if ("ERROR" in line or "WARNING" in line) and "mqtt" in line.lower()]
    assert complaints == []
