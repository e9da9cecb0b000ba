"""Telemetry QoS (0 by default, 1 per device), what QoS 0 loses, and the order after an outage,
against a real mosquitto."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from firmware_sim.modules import EMULATORS
from firmware_sim.pty_link import PtyModule
from firmware_sim.simulation import Simulation
from gateway.config import ConfigError, MqttConfig, load_config
from gateway.publish.mqtt import MqttPublisher
from gateway.publish.outbox import Outbox
from gateway.publish.telemetry import telemetry_payload
from gateway.records import Reading
from gateway.uplink import lpp
from gateway.uplink.devices import load_devices, session_keys
from gateway.uplink.lorawan import build_uplink

from .conftest import wait_serviced as _wait
from .conftest import write_config


def _state(device: str, fcnt: int) -> str:
    return telemetry_payload(Reading(device, {"current_3": fcnt / 8}, fcnt, -80.0, 5.0, float(fcnt)))


class QosRecorder:
    """Keeps (topic, QoS as delivered, payload) of every message; subscribed at QoS 1, so the QoS
    delivered is the one the gateway published with."""

    def __init__(self, port: int, topic: str) -> None:
        self.messages: list[tuple[str, int, bytes]] = []
        self._cond = threading.Condition()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert subscribed.wait(10), "could not subscribe"

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, msg.qos, msg.payload))
            self._cond.notify_all()

    def wait_for(self, predicate, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                assert left > 0, f"timed out; got {self.messages[-10:]}"
                self._cond.wait(left)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_telemetry_at_qos_0_by_default_and_1_where_the_devices_file_asks(
        tmp_path: Path, broker, gateways, devices_file) -> None:
    text = devices_file.read_text()
    devices_file.write_text(text.replace("[devices.pump-house]\n", "[devices.pump-house]\ntelemetry_qos = 1\n"))
    recorder = QosRecorder(broker.port, "lora-gateway/#")
    try:
        with Simulation("rylr", devices_file, period_s=0.3, seed=4) as sim:
            config = write_config(tmp_path / "config.toml", port=sim.port, dialect="rylr", mqtt_port=broker.port,
                                  devices_file=devices_file, state_path=tmp_path / "state.db")
            gateway = gateways(config).start()

            def qos_of(topic: str, messages: list[tuple[str, int, bytes]]) -> set[int]:
                return {q for t, q, _ in messages if t == topic}

            recorder.wait_for(lambda m: len([t for t, _, _ in m if t in ("lora-gateway/pump-house",
                                                                           "lora-gateway/cold-room")]) >= 6)
            assert gateway.stop() == 0
        assert qos_of("lora-gateway/pump-house", recorder.messages) == {1}
        assert qos_of("lora-gateway/cold-room", recorder.messages) == {0}
        # Everything else stays at QoS 1.
        for topic in ("lora-gateway/bridge/state", "lora-gateway/cold-room/availability"):
            assert qos_of(topic, recorder.messages) == {1}, topic
    finally:
        recorder.close()


def test_sighup_applies_a_device_s_new_telemetry_qos_from_its_next_reading(
        tmp_path: Path, broker, gateways, devices_file) -> None:
    pump = {k.name: k for k in session_keys(load_devices(devices_file))}["pump-house"]
    topic = "lora-gateway/pump-house"
    recorder = QosRecorder(broker.port, "lora-gateway/#")

    def heard(fcnt: int):
        return lambda m: any(t == topic and json.loads(p)["fcnt"] == fcnt for t, _, p in m)

    def qos_at(fcnt: int) -> int:
        (q,) = {q for t, q, p in recorder.messages if t == topic and json.loads(p)["fcnt"] == fcnt}
        return q

    try:
        with PtyModule(EMULATORS["rylr"]()) as module:
            config = write_config(tmp_path / "config.toml", port=module.port, dialect="rylr", mqtt_port=broker.port,
                                  devices_file=devices_file, state_path=tmp_path / "state.db")
            gateway = gateways(config).start().wait_ready()
            module.send_frame(build_uplink(pump, 1, 1, lpp.encode([(1, "temperature", 20.0)])), -80, 7)
            recorder.wait_for(heard(1))
            text = devices_file.read_text()
            devices_file.write_text(text.replace("[devices.pump-house]\n", "[devices.pump-house]\ntelemetry_qos = 1\n"))
            assert gateway.proc is not None
            gateway.proc.send_signal(signal.SIGHUP)
            recorder.wait_for(lambda m: any(t == "lora-gateway/bridge/event"
                                            and json.loads(p)["type"] == "devices_reloaded" for t, _, p in m))
            module.send_frame(build_uplink(pump, 2, 1, lpp.encode([(1, "temperature", 20.5)])), -80, 7)
            recorder.wait_for(heard(2))
            assert gateway.stop() == 0
        assert (qos_at(1), qos_at(2)) == (0, 1)
    finally:
        recorder.close()


def test_qos_0_telemetry_paho_drops_with_the_connection_is_counted_and_reported(
        tmp_path: Path, broker, recorder_factory) -> None:
    publisher = MqttPublisher(MqttConfig(port=broker.port), "t", {}, Outbox(tmp_path / "s.db"))
    publisher.start()
    _wait(publisher.connected.is_set, publisher)
    broker.stop()
    deadline = time.monotonic() + 20
    while publisher.client.is_connected():  # paho's thread sees the loss; service() is not called yet
        assert time.monotonic() < deadline
        time.sleep(0.01)
    for fcnt in range(3):  # handed to paho with its socket down: paho refuses them, at QoS 0 for good
        publisher.publish_state("pump", _state("pump", fcnt))
    publisher.service()
    assert publisher.telemetry_lost == 3 and publisher.telemetry_dropped == 0
    broker.start()
    events = recorder_factory(broker.port, ["lora-gateway/bridge/event"])
    _wait(publisher.connected.is_set, publisher)
    events.wait_for(lambda m: m)
    (event,) = events.payloads("lora-gateway/bridge/event")
    assert (event["type"], event["count"], event["total"]) == ("telemetry_lost", 3, 3)
    publisher.stop()


def test_after_an_outage_a_device_state_never_goes_back(tmp_path: Path, broker, recorder_factory) -> None:
    """What waited through the outage goes first, then the last states: a subscriber sees each
    device's frame counter rise (it saw 7, then 3 to 7, before)."""
    recorder = recorder_factory(broker.port, ["lora-gateway/pump"], session="watcher")
    publisher = MqttPublisher(MqttConfig(port=broker.port, telemetry_qos=1), "t", {}, Outbox(tmp_path / "s.db"))
    publisher.start()
    _wait(publisher.connected.is_set, publisher)
    for fcnt in range(3):
        publisher.publish_state("pump", _state("pump", fcnt))
    assert publisher.drain(30)
    recorder.wait_for(lambda m: len(m) == 3)
    broker.stop()
    _wait(lambda: not publisher.connected.is_set(), publisher)
    for fcnt in range(3, 8):
        publisher.publish_state("pump", _state("pump", fcnt))
    broker.start()
    _wait(publisher.connected.is_set, publisher)
    assert publisher.drain(30)
    recorder.wait_for(lambda m: {b["fcnt"] for b in recorder.payloads("lora-gateway/pump")} == set(range(8)))
    # Live messages only: the recorder subscribes again as it reconnects, and gets the retained one then.
    fcnts = [json.loads(p)["fcnt"] for _, p, retained in recorder.messages if not retained]
    assert fcnts == sorted(fcnts), fcnts
    publisher.stop()


class _CountingWake:
    """paho's wake-up socket, counting the wake-ups sent through it."""

    def __init__(self, sock) -> None:
        self.sock, self.sent = sock, 0

    def send(self, data: bytes) -> int:
        self.sent += 1
        return self.sock.send(data)

    def close(self) -> None:
        self.sock.close()


def test_a_batch_wakes_paho_once_and_loses_nothing(tmp_path: Path, broker, recorder_factory) -> None:
    recorder = recorder_factory(broker.port, ["lora-gateway/+"])
    publisher = MqttPublisher(MqttConfig(port=broker.port), "t", {}, Outbox(tmp_path / "s.db"))
    publisher.start()
    _wait(publisher.connected.is_set, publisher)
    wake = publisher.client._sockpairW = _CountingWake(publisher.client._sockpairW)
    with publisher.batch():
        for fcnt in range(200):
            publisher.publish_state(f"node-{fcnt % 4}", _state(f"node-{fcnt % 4}", fcnt))
        with publisher.batch():  # nested: still one
            publisher.publish_state("node-0", _state("node-0", 200))
    assert wake.sent == 1
    publisher.publish_state("node-1", _state("node-1", 201))  # outside a batch: one each, as before
    assert wake.sent == 2 and publisher.client._sockpairW is wake
    assert publisher.drain(30)
    recorder.wait_for(lambda m: len(m) >= 202)
    assert [json.loads(p)["fcnt"] for t, p, _ in recorder.messages if t == "lora-gateway/node-0"] == [
        *range(0, 200, 4), 200]
    publisher.stop()


def test_paho_socket_sends_without_waiting_for_acks(tmp_path: Path, broker) -> None:
    """Nagle's algorithm off: a batch written at once went out behind the broker's delayed ACK."""
    publisher = MqttPublisher(MqttConfig(port=broker.port), "t", {}, Outbox(tmp_path / "s.db"))
    publisher.start()
    _wait(publisher.connected.is_set, publisher)
    assert publisher.client.socket().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    publisher.stop()


def test_telemetry_qos_from_the_environment_and_refused_out_of_range() -> None:
    assert load_config(None, {"LORA_GATEWAY_MQTT__TELEMETRY_QOS": "1"}).mqtt.telemetry_qos == 1
    assert load_config(None, {}).mqtt.telemetry_qos == 0
    with pytest.raises(ConfigError, match=r"mqtt\.telemetry_qos \(from LORA_GATEWAY_MQTT__TELEMETRY_QOS\): Input should be less than or equal to 1"):
        load_config(None, {"LORA_GATEWAY_MQTT__TELEMETRY_QOS": "2"})
