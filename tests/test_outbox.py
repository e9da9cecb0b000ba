"""The alert outbox, alone and behind the publisher against a real mosquitto that goes away."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from gateway.config import MqttConfig
from gateway.publish import mqtt as mqtt_publisher
from gateway.publish.mqtt import MqttPublisher
from gateway.publish.outbox import Outbox
from gateway.publish.telemetry import telemetry_payload
from gateway.records import Reading

from .conftest import wait_serviced as _wait


def test_outbox_persists_and_keeps_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "state.db")
    ids = [box.add("t", f"{i}".encode())[0].id for i in range(5)]
    box.remove(ids[1])
    box.close()
    reopened = Outbox(tmp_path / "state.db")
    assert [m.payload for m in reopened.pending()] == [b"0", b"2", b"3", b"4"]
    assert len(reopened) == 4
    assert [m.payload for m in reopened.pending(limit=2, after_id=ids[2])] == [b"3", b"4"]


def test_outbox_cap_drops_oldest_and_counts(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "state.db", cap=3)
    drops = [box.add("t", bytes([i]))[1] for i in range(5)]
    assert drops == [0, 0, 0, 1, 1]
    assert [m.payload for m in box.pending()] == [b"\x02", b"\x03", b"\x04"]
    assert (len(box), box.dropped) == (3, 2)
    with pytest.raises(ValueError):
        Outbox(tmp_path / "other.db", cap=0)


def _alert(i: int) -> dict:
    return {"id": f"pump-{i}", "device": "pump", "state": "raised", "time": float(i)}


def test_alerts_survive_a_broker_outage_and_a_restart(tmp_path: Path, broker, recorder_factory) -> None:
    cfg = MqttConfig(port=broker.port)
    recorder = recorder_factory(broker.port, ["lora-gateway/+/alert"], session="dashboard")
    publisher = MqttPublisher(cfg, "t", {}, Outbox(tmp_path / "state.db"))
    publisher.start()
    _wait(publisher.connected.is_set, publisher)
    for i in range(10):
        publisher.publish_alert("pump", _alert(i))
    _wait(lambda: len(publisher.outbox) == 0, publisher)  # every one acknowledged

    broker.stop()
    _wait(lambda: not publisher.connected.is_set(), publisher)
    for i in range(10, 30):
        publisher.publish_alert("pump", _alert(i))
    assert len(publisher.outbox) == 20
    # The gateway stops (or dies) during the outage; a new process finds the outbox on disk.
    publisher.stop()
    publisher.outbox.close()

    broker.start()
    restarted = MqttPublisher(cfg, "t", {}, Outbox(tmp_path / "state.db"))
    restarted.start()
    _wait(lambda: len(restarted.outbox) == 0, restarted)
    recorder.wait_for(lambda m: {json.loads(p)["id"] for _, p, _ in m} >= {f"pump-{i}" for i in range(30)})
    ids = [json.loads(p)["id"] for _, p, _ in recorder.messages]
    assert all(retain is False for _, _, retain in recorder.messages)  # alerts are events, never retained
    assert set(ids) == {f"pump-{i}" for i in range(30)}
    restarted.stop()


def test_telemetry_queue_drops_oldest_while_broker_away(tmp_path: Path, broker, recorder_factory) -> None:
    publisher = MqttPublisher(MqttConfig(port=broker.port), "t", {}, Outbox(tmp_path / "s.db"), telemetry_queue=5)
    publisher.start()
    _wait(publisher.connected.is_set, publisher)
    broker.stop()
    _wait(lambda: not publisher.connected.is_set(), publisher)
    for i in range(8):
        publisher.publish_state("pump", telemetry_payload(Reading("pump", {"temperature_1": float(i)}, i, -80.0, 5.0, i)))
    assert not publisher.drain(0.5)  # nothing can be acknowledged while the broker is away
    assert publisher.telemetry_dropped == 3
    broker.start()
    recorder = recorder_factory(broker.port, ["lora-gateway/#"])
    _wait(publisher.connected.is_set, publisher)
    recorder.wait_for(lambda m: any(t == "lora-gateway/bridge/event" for t, _, _ in m))
    (event,) = recorder.payloads("lora-gateway/bridge/event")
    assert (event["type"], event["count"], event["total"]) == ("telemetry_dropped", 3, 3)
    recorder.wait_for(lambda m: {b["fcnt"] for b in recorder.payloads("lora-gateway/pump")} >= {3, 4, 5, 6, 7})
    # The three oldest went; the newest state is also republished (retained) on reconnect.
    assert {b["fcnt"] for b in recorder.payloads("lora-gateway/pump")} == {3, 4, 5, 6, 7}
    publisher.stop()


def test_drain_returns_once_the_broker_has_every_message(tmp_path: Path, broker, recorder_factory) -> None:
    recorder = recorder_factory(broker.port, ["lora-gateway/+"])
    publisher = MqttPublisher(MqttConfig(port=broker.port), "t", {}, Outbox(tmp_path / "s.db"))
    assert publisher.drain(0.1)  # nothing sent yet
    publisher.start()
    _wait(publisher.connected.is_set, publisher)
    for i in range(500):  # mosquitto queues at most 1,000 for a subscriber: the recorder must not lose any
        publisher.publish_state(f"node-{i % 20}", telemetry_payload(Reading(f"node-{i % 20}", {"temperature_1": i / 10},
                                                                            i, -80.0, 5.0, float(i))))
    assert publisher.drain(30)
    # Acknowledged means the broker has them: a subscriber that comes now gets every device's last state,
    late = recorder_factory(broker.port, ["lora-gateway/+"])
    retained = late.wait_for(lambda m: len(m) >= 20)
    assert sorted(json.loads(p)["fcnt"] for _, p, _ in retained) == list(range(480, 500))
    # and one subscribed all along gets all 500, in order per device.
    recorder.wait_for(lambda m: len(m) == 500)
    assert [b["fcnt"] for b in recorder.payloads("lora-gateway/node-7")] == list(range(7, 500, 20))
    publisher.stop()


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_publishes_over_mqtt_3_and_5(tmp_path: Path, broker, recorder_factory, protocol: str) -> None:
    """At QoS 1: over 3.1.1 paho sends all the window at once, over 5 as many as brokers allow (20)."""
    recorder = recorder_factory(broker.port, ["lora-gateway/+"])
    cfg = MqttConfig(port=broker.port, protocol=protocol, telemetry_qos=1)
    publisher = MqttPublisher(cfg, "t", {}, Outbox(tmp_path / "s.db"))
    publisher.start()
    _wait(publisher.connected.is_set, publisher)
    assert publisher.client.protocol == (5 if protocol == "5" else 4)
    assert publisher.client.max_inflight_messages == (20 if protocol == "5" else 0)  # 0: no limit of paho's
    for i in range(200):
        publisher.publish_state("pump", telemetry_payload(Reading("pump", {"current_3": i / 8}, i, -80.0, 5.0, i)))
    assert publisher.drain(30)
    recorder.wait_for(lambda m: len(m) == 200)
    assert [b["fcnt"] for b in recorder.payloads("lora-gateway/pump")] == list(range(200))
    publisher.stop()


def test_a_hung_broker_never_grows_what_paho_holds(tmp_path: Path, broker, recorder_factory,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker stops reading with the connection up (no disconnect for 1.5 keepalives): paho
    holds at most WINDOW messages, the queue keeps the newest, and every drop is counted."""
    monkeypatch.setattr(mqtt_publisher, "WINDOW", 50)
    recorder = recorder_factory(broker.port, ["lora-gateway/pump"])
    # Its own subscriber: mosquitto drops a QoS 0 event for one whose window of 20 is busy with telemetry.
    events = recorder_factory(broker.port, ["lora-gateway/bridge/event"])
    # QoS 1: at QoS 0 the socket's buffers take messages too, as many as fit.
    publisher = MqttPublisher(MqttConfig(port=broker.port, telemetry_qos=1), "t", {}, Outbox(tmp_path / "s.db"),
                              telemetry_queue=200)
    publisher.start()
    _wait(publisher.connected.is_set, publisher)
    assert publisher.drain(10)
    os.kill(broker.proc.pid, signal.SIGSTOP)
    stat = Path(f"/proc/{broker.proc.pid}/stat")
    deadline = time.monotonic() + 120
    while stat.read_text().rpartition(")")[2].split()[0] != "T":  # stopped for certain, acknowledging nothing
        assert time.monotonic() < deadline, "mosquitto did not stop"
        time.sleep(0.01)
    try:
        for i in range(1000):
            publisher.publish_state("pump", telemetry_payload(Reading("pump", {"current_3": i / 8}, i, -80.0, 5.0, i)))
            publisher.service()
        assert publisher.client.is_connected()  # still up: only the window and the queue hold messages
        assert not publisher.drain(0.2)
        assert publisher.telemetry_dropped == 1000 - 50 - 200
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)
    assert publisher.drain(30)
    fcnts = lambda: [b["fcnt"] for b in recorder.payloads("lora-gateway/pump")]  # noqa: E731
    recorder.wait_for(lambda m: len(fcnts()) >= 250)
    assert fcnts() == [*range(50), *range(800, 1000)]  # the first window, then the newest 200, in order
    (event,) = [json.loads(p) for _, p, _ in events.wait_for(lambda m: m)]
    assert (event["type"], event["count"], event["total"]) == ("telemetry_dropped", 750, 750)
    publisher.stop()


def test_more_alerts_waiting_than_the_window_all_go_in_order(tmp_path: Path, broker, recorder_factory,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mqtt_publisher, "WINDOW", 20)
    outbox = Outbox(tmp_path / "s.db")
    for i in range(150):  # committed while no broker was there
        outbox.add("lora-gateway/pump/alert", json.dumps(_alert(i)).encode())
    recorder = recorder_factory(broker.port, ["lora-gateway/+/alert"])
    publisher = MqttPublisher(MqttConfig(port=broker.port), "t", {}, outbox)
    publisher.start()
    _wait(publisher.connected.is_set, publisher)
    assert len(publisher._inflight) <= 20
    for i in range(150, 160):  # new ones queue behind those still waiting
        publisher.publish_alert("pump", _alert(i))
    _wait(lambda: len(publisher.outbox) == 0, publisher)
    recorder.wait_for(lambda m: len(m) >= 160)
    assert [json.loads(p)["id"] for _, p, _ in recorder.messages] == [f"pump-{i}" for i in range(160)]
    publisher.stop()


def test_messages_handed_to_paho_as_its_socket_went_down(tmp_path: Path, broker, recorder_factory) -> None:
    """Between paho losing the broker and the next service(), paho refuses messages (its
    is_published() raises for them ever after): nothing may crash, block the window or lose an alert."""
    publisher = MqttPublisher(MqttConfig(port=broker.port), "t", {}, Outbox(tmp_path / "s.db"))
    publisher.start()
    _wait(publisher.connected.is_set, publisher)
    broker.stop()
    deadline = time.monotonic() + 120
    while publisher.client.is_connected():  # paho's thread sees the loss; service() is not called
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert publisher.connected.is_set()
    publisher.publish_state("pump", telemetry_payload(Reading("pump", {"current_3": 1.0}, 1, -80.0, 5.0, 1)))
    publisher.publish_alert("pump", _alert(1))
    publisher.service()
    assert not publisher.connected.is_set() and len(publisher.outbox) == 1
    assert not publisher.drain(0.2)
    broker.start()
    recorder = recorder_factory(broker.port, ["lora-gateway/#"])
    _wait(lambda: len(publisher.outbox) == 0, publisher)  # the alert went once the broker was back
    for i in range(2, 5):
        publisher.publish_state("pump", telemetry_payload(Reading("pump", {"current_3": 1.0}, i, -80.0, 5.0, i)))
    assert publisher.drain(10)
    recorder.wait_for(lambda m: any(t == "lora-gateway/pump/alert" for t, _, _ in m)
                      and 4 in {b["fcnt"] for b in recorder.payloads("lora-gateway/pump")})
    publisher.stop()
