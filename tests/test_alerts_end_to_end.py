"""Alerts end to end with the real model: a fault on a simulated node raises an alert on MQTT and
its end clears it; no alert is lost across a broker outage or a kill -9 of the gateway."""

from __future__ import annotations

import json
import math
import random
import re
import signal
import time
from pathlib import Path

from firmware_sim.modules import EMULATORS
from firmware_sim.nodes import Sensor, SensorNode
from firmware_sim.pty_link import PtyModule
from gateway.uplink.devices import load_devices, session_keys

from .conftest import write_config

DETECTOR = "[detector]\nwarmup = 300\n"  # covers a whole cycle of the signal below (200 readings)
FAULT = range(600, 700)  # readings with a level shift of +6 degrees


def temperature(i: float, rng: random.Random) -> float:
    base = 20 + 2 * math.sin(2 * math.pi * i / 200) + rng.gauss(0, 0.2)
    return base + (6.0 if int(i) % 1000 in FAULT else 0.0)


def make_node(devices_file: Path) -> SensorNode:
    keys = {k.name: k for k in session_keys(load_devices(devices_file))}["pump-house"]
    return SensorNode(keys, [Sensor(1, "temperature", temperature)], rng=random.Random(11))


def stream(module: PtyModule, node: SensorNode, start: int, stop: int, pause: float = 0.001) -> None:
    for i in range(start, stop):
        frame, _ = node.uplink(float(i))
        module.send_frame(frame, -80, 7)
        time.sleep(pause)


def alerts(messages: list) -> list[dict]:
    return [json.loads(p) for t, p, _ in messages if t.endswith("/alert")]


def committed(log_text: str) -> set[tuple[str, str]]:
    """(id, state) of every alert the gateway committed to its outbox, from its log."""
    return set(re.findall(r"alert (\S+) (raised|cleared) committed", log_text))


def setup(tmp_path: Path, broker, devices_file: Path, module: PtyModule) -> Path:
    return write_config(tmp_path / "config.toml", port=module.port, dialect="rylr", mqtt_port=broker.port,
                        devices_file=devices_file, state_path=tmp_path / "state.db", extra=DETECTOR)


def test_fault_raises_and_its_end_clears(tmp_path: Path, broker, recorder_factory, gateways, devices_file) -> None:
    recorder = recorder_factory(broker.port, ["lora-gateway/#"])
    node = make_node(devices_file)
    with PtyModule(EMULATORS["rylr"]()) as module:
        gateway = gateways(setup(tmp_path, broker, devices_file, module)).start()
        recorder.wait_for(lambda m: any(t == "lora-gateway/bridge/state" for t, _, _ in m))
        stream(module, node, 0, 800)
        recorder.wait_for(lambda m: [a["state"] for a in alerts(m)][:2] == ["raised", "cleared"], timeout=120)
        assert gateway.stop() == 0, gateway.output()

    raised, cleared = alerts(recorder.messages)[:2]
    assert raised["id"] == cleared["id"] and raised["device"] == "pump-house"
    assert set(raised["channels"]) == {"temperature_1"} and raised["score"] >= raised["threshold"]
    assert raised["model"].startswith("default@")
    states = [json.loads(p) for t, p, _ in recorder.messages if t == "lora-gateway/pump-house"]
    first_raised = min(s["fcnt"] for s in states if s["alert_state"] == "raised")
    assert first_raised in FAULT  # raised by the fault, not before it
    assert all(s["alert_state"] == "ok" for s in states if s["fcnt"] < FAULT.start)


def test_no_alert_lost_across_a_broker_outage(tmp_path: Path, broker, recorder_factory, gateways, devices_file) -> None:
    recorder = recorder_factory(broker.port, ["lora-gateway/+/alert"], session="dashboard")
    node = make_node(devices_file)
    with PtyModule(EMULATORS["rylr"]()) as module:
        gateway = gateways(setup(tmp_path, broker, devices_file, module)).start().wait_ready()
        stream(module, node, 0, 550)
        broker.stop()  # the outage covers the whole fault, raise and clear
        stream(module, node, 550, 1000)
        gateway.wait_for_output(lambda text: len(committed(text)) >= 2, "the raise and the clear to be committed")
        assert alerts(recorder.messages) == []
        broker.start()
        expected = committed(gateway.output())
        assert {state for _, state in expected} == {"raised", "cleared"}
        recorder.wait_for(lambda m: {(a["id"], a["state"]) for a in alerts(m)} >= expected, timeout=120)
        assert gateway.stop() == 0
    assert {(a["id"], a["state"]) for a in alerts(recorder.messages)} == expected


def test_kill_9_loses_no_committed_alert_and_keeps_state(
    tmp_path: Path, broker, recorder_factory, gateways, devices_file
) -> None:
    recorder = recorder_factory(broker.port, ["lora-gateway/#"], session="dashboard")
    node = make_node(devices_file)
    with PtyModule(EMULATORS["rylr"]()) as module:
        config = setup(tmp_path, broker, devices_file, module)
        gateway = gateways(config).start().wait_ready()
        broker.stop()  # alerts pile up in the outbox, none acknowledged
        stream(module, node, 0, 640)
        expected = committed(gateway.wait_for_output(lambda text: bool(committed(text)), "an alert to be committed"))
        gateway.stop(signal.SIGKILL)
        old_frame, _ = node.uplink(650.0)
        node.fcnt -= 1

        broker.start()
        gateway = gateways(config).start()
        recorder.wait_for(lambda m: {(a["id"], a["state"]) for a in alerts(m)} >= expected, timeout=120)
        # Counters came back: a frame counter already accepted is a replay.
        stream(module, node, 640, 641)
        module.send_frame(old_frame, -80, 7)
        recorder.wait_for(lambda m: any(t == "lora-gateway/bridge/event" and json.loads(p).get("reason") == "replay"
                                        for t, p, _ in m))
        # Detector state came back: the first reading after the restart is scored at once (no warm-up).
        first_after = recorder.wait_for(lambda m: any(
            t == "lora-gateway/pump-house" and json.loads(p)["fcnt"] == 640 for t, p, _ in m))
        (state,) = [json.loads(p) for t, p, _ in first_after if t == "lora-gateway/pump-house"
                    and json.loads(p)["fcnt"] == 640]
        assert state["anomaly"], state
        assert gateway.stop() == 0
