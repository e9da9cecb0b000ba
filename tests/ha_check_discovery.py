"""Check discovery messages with Home Assistant's own code; run by an interpreter that has `homeassistant`.

Not a test module: tests/test_discovery.py pipes it JSON {"prefix", "configs": [[topic, payload]...],
"states": {topic: payload}} and reads back a JSON list of problems (empty = all valid). Checks:
the topic against HA's discovery topic matcher; the payload against the platform's strict
schema (unknown keys fail, unlike the discovery schema that drops them); unit and state class
against the device class tables of the sensor integration; each value template rendered by
HA's template engine over the given state payloads, giving a number / ON-OFF.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile

import voluptuous as vol
from homeassistant.components.mqtt import binary_sensor, sensor
from homeassistant.components.mqtt.discovery import TOPIC_MATCHER
from homeassistant.components.sensor.const import DEVICE_CLASS_STATE_CLASSES, DEVICE_CLASS_UNITS
from homeassistant.core import HomeAssistant
from homeassistant.helpers.template import Template

SCHEMAS = {"sensor": sensor.PLATFORM_SCHEMA_MODERN, "binary_sensor": binary_sensor.PLATFORM_SCHEMA_MODERN}


async def check(request: dict) -> list[str]:
    hass = HomeAssistant(tempfile.mkdtemp())
    problems: list[str] = []
    for topic, payload in request["configs"]:
        where = f"{topic}:"
        match = TOPIC_MATCHER.match(topic.removeprefix(request["prefix"] + "/"))
        if match is None:
            problems.append(f"{where} not a discovery topic Home Assistant accepts")
            continue
        component = match["component"]
        try:
            config = SCHEMAS[component](dict(payload))
        except vol.Invalid as e:
            problems.append(f"{where} schema: {e}")
            continue
        device_class = config.get("device_class")
        if component == "sensor" and device_class:
            unit = config.get("unit_of_measurement")
            if unit not in DEVICE_CLASS_UNITS.get(device_class, {unit}):
                problems.append(f"{where} unit {unit!r} not valid for device class {device_class}")
            state_class = config.get("state_class")
            if state_class and state_class not in DEVICE_CLASS_STATE_CLASSES.get(device_class, {state_class}):
                problems.append(f"{where} state class {state_class} not valid for device class {device_class}")
        state = request["states"].get(config["state_topic"])
        if state is None or "value_template" not in payload:
            continue
        rendered = Template(payload["value_template"], hass).async_render_with_possible_json_value(state, "")
        if component == "binary_sensor":
            if rendered not in (config["payload_on"], config["payload_off"]):
                problems.append(f"{where} template gave {rendered!r}, not payload_on/payload_off")
        elif config.get("state_class") is not None:
            try:
                float(rendered)
            except ValueError:
                problems.append(f"{where} template gave {rendered!r}, not a number")
    return problems


if __name__ == "__main__":
    print(json.dumps(asyncio.run(check(json.load(sys.stdin)))))
