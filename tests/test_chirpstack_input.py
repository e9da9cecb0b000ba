"""ChirpStack v4 uplink events, published to a real mosquitto as ChirpStack's MQTT integration does."""

from __future__ import annotations

import base64
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.records import Reading, Rejected
from gateway.uplink.chirpstack import ChirpStackInput, parse_uplink

APP = "f2ad2f2b-5c3c-4a83-9b0c-2a4b5e1d7f10"


def event(name: str, fcnt: int | None, **extra: object) -> dict:
    body: dict = {
        "deduplicationId": "3a8e1b0c-8f2c-4c1e-9a53-6b7d2a0f9e11",
        "time": "2026-11-28T05:00:00.123456+00:00",
        "deviceInfo": {"tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242", "tenantName": "farm",
                       "applicationId": APP, "applicationName": "sensors", "deviceProfileName": "lpp",
                       "deviceName": name, "devEui": "0101010101010101", "tags": {}},
        "devAddr": "01fb2b68", "adr": True, "dr": 5, "fPort": 1, "confirmed": False,
        "rxInfo": [{"gatewayId": "0016c001f153a14c", "rssi": -91, "snr": 4.5},
                   {"gatewayId": "0016c001f153a14d", "rssi": -67, "snr": 9.25}],
        "txInfo": {"frequency": 868100000},
        **extra,
    }
    if fcnt is not None:
        body["fCnt"] = fcnt
    return body


def test_data_object_and_chirpstack_cayenne_shapes() -> None:
    lpp = base64.b64encode(bytes.fromhex("03670110056700FF")).decode()  # DESIGN.md: 27.2 C ch3, 25.5 C ch5
    r = parse_uplink(json.dumps(event("cold room #2", 7, data=lpp)).encode(), 100.0)
    assert r == Reading("cold-room--2", {"temperature_3": 27.2, "temperature_5": 25.5}, 7, -67.0, 9.25, 100.0)

    cayenne = {"temperatureSensor": {"3": 27.2}, "accelerometer": {"6": {"x": 1.234, "y": -1.234, "z": 0}},
               "gpsLocation": {"1": {"latitude": 42.3519, "longitude": -87.9094, "altitude": 10}}}
    r = parse_uplink(json.dumps(event("pump", None, data=lpp, object=cayenne)).encode(), 1.0)
    assert r.fcnt == 0  # proto3 JSON leaves fCnt out when it is 0
    assert r.values == {"temperature_3": 27.2, "accelerometer_6_x": 1.234, "accelerometer_6_y": -1.234,
                        "accelerometer_6_z": 0.0, "gps_1_latitude": 42.3519, "gps_1_longitude": -87.9094,
                        "gps_1_altitude": 10.0}

    flat = {"temperature_1": 4.5, "door": "open", "ok": True, "battery_v": 3.31}
    r = parse_uplink(json.dumps(event("room", 3, object=flat, rxInfo=[])).encode(), 1.0)
    assert r.values == {"temperature_1": 4.5, "battery_v": 3.31}  # strings and booleans are not readings
    assert math.isnan(r.rssi) and math.isnan(r.snr)


@pytest.mark.parametrize(("payload", "reason"), [
    (b"\xff{", "chirpstack_not_json"),
    (b"[1, 2]", "chirpstack_not_json"),
    (json.dumps({"fCnt": 1, "data": "AQ=="}).encode(), "chirpstack_no_device"),
    (json.dumps(event("a", 1)).encode(), "chirpstack_no_payload"),
    (json.dumps(event("a", 1, data="not base64!")).encode(), "chirpstack_bad_data"),
    (json.dumps(event("a", 1, data=base64.b64encode(b"\x03\x67\x01").decode())).encode(), "lpp_truncated"),
    (json.dumps(event("a", 1, object={"status": "ok"})).encode(), "chirpstack_no_values"),
])
def test_unusable_events_are_rejected_by_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(Rejected) as e:
        parse_uplink(payload, 0.0)
    assert e.value.reason == reason


@pytest.mark.parametrize(("payload", "where"), [
    (b'{"deviceInfo": {"deviceName": "a"}, "fCnt": 1e400, "data": "AQ=="}', "fCnt"),
    (json.dumps(event("a", "seven", data="AQ==")).encode(), "fCnt"),  # type: ignore[arg-type]
    (json.dumps(event("a", -1, data="AQ==")).encode(), "fCnt"),
    (json.dumps(event("a", 2**32, data="AQ==")).encode(), "fCnt"),
    (json.dumps({**event("a", 1, data="AQ=="), "deviceInfo": "0102"}).encode(), "deviceInfo"),
    (json.dumps(event("a", 1, data="AQ==", rxInfo=[1, 2])).encode(), "rxInfo.0"),
    (json.dumps(event("a", 1, data="AQ==", rxInfo=[{"rssi": -80, "snr": "x"}])).encode(), "rxInfo.0.snr"),
    (json.dumps(event("a", 1, data="AQ==", rxInfo=[{"rssi": 1e400}])).encode(), "rxInfo.0.rssi"),
    (json.dumps(event("a", 1, object=[1, 2])).encode(), "object"),
    (json.dumps(event("a", 1, data=7)).encode(), "data"),
])
def test_malformed_events_are_rejected_naming_the_field(payload: bytes, where: str) -> None:
    with pytest.raises(Rejected) as e:
        parse_uplink(payload, 0.0)
    assert e.value.reason == "chirpstack_invalid"
    assert e.value.detail.startswith(f"{where}:")


@pytest.mark.parametrize("data", ["AQ\u00e9=", "\u0661\u0662==", "AQ==\x00"])
def test_data_that_is_not_ascii_base64_is_rejected(data: str) -> None:
    with pytest.raises(Rejected) as e:
        parse_uplink(json.dumps(event("a", 1, data=data)).encode(), 0.0)
    assert e.value.reason == "chirpstack_bad_data"


def test_object_keys_cannot_add_topic_levels_wildcards_or_template_code() -> None:
    template = "x'] }}{{ 7*7 }}{{ value_json['rssi"
    obj = {"a/b": 1, "t+": 2, "h#": 3, template: 4, "big": 10**400, "ok_1": 5, "a-b": 6, "": 7}  # "": no name
    r = parse_uplink(json.dumps(event("pump", 1, object=obj)).encode(), 0.0)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name) for name in r.values)
    assert r.values["a-b"] == 1  # 'a/b' made safe first; the later 'a-b' does not overwrite it
    assert r.values["t-"] == 2 and r.values["h-"] == 3 and r.values["ok_1"] == 5
    assert "big" not in r.values  # past float's range: not a reading
    assert len(r.values) == 5


def test_events_from_a_real_broker(broker) -> None:
    source = ChirpStackInput("127.0.0.1", broker.port).start()
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2)
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    try:
        assert source.subscribed.wait(60)
        lpp = base64.b64encode(bytes.fromhex("0167FFD7")).decode()  # -4.1 C
        for topic, body in (
            (f"application/{APP}/device/0101010101010101/event/up", event("cold-room", 41, data=lpp)),
            (f"application/{APP}/device/0101010101010101/event/status", {"margin": 7}),  # not an uplink
            (f"application/{APP}/device/0202020202020202/event/up", event("pump", 9, object={"current_1": 4.2})),
            (f"application/{APP}/device/0303030303030303/event/up", {"deviceInfo": {"deviceName": "x"}}),
        ):
            publisher.publish(topic, json.dumps(body), qos=1).wait_for_publish(5)
        got: list[Reading | Rejected] = []
        batches = source.batches()
        deadline = time.monotonic() + 120
        while len(got) < 3:
            assert time.monotonic() < deadline, got
            got += next(batches)
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        source.stop()
    readings = [r for r in got if isinstance(r, Reading)]
    assert [(r.device, r.fcnt, r.values) for r in readings] == [
        ("cold-room", 41, {"temperature_1": -4.1}), ("pump", 9, {"current_1": 4.2})]
    assert [r.reason for r in got if isinstance(r, Rejected)] == ["chirpstack_no_payload"]


def test_gateway_with_chirpstack_input(tmp_path: Path, broker, recorder_factory, gateways) -> None:
    """`input = "chirpstack"` on a real `lora-gateway run`: ChirpStack's uplinks come out as the gateway's topics."""
    config = tmp_path / "config.toml"
    config.write_text(f'gateway_id = "test"\nstate_path = "state.db"\ninput = "chirpstack"\n'
                      f"[chirpstack]\nport = {broker.port}\n[mqtt]\nport = {broker.port}\n")
    recorder = recorder_factory(broker.port, ["lora-gateway/#", "homeassistant/+/test_cold-room/+/config"])
    gateway = gateways(config).start()
    recorder.wait_for(lambda m: any(t == "lora-gateway/bridge/state" for t, _, _ in m))
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2)
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    try:
        # The gateway subscribes right after connecting; until its health says so, uplinks would be missed.
        deadline = time.monotonic() + 120
        while not status_of(config).get("module", {}).get("connected"):
            assert time.monotonic() < deadline, gateway.output()
            time.sleep(0.2)
        for fcnt in (1, 2):
            lpp = base64.b64encode(bytes.fromhex(f"016700{40 + fcnt:02X}")).decode()
            body = event("cold-room", fcnt, data=lpp)
            publisher.publish(f"application/{APP}/device/0101010101010101/event/up", json.dumps(body), qos=1)
        publisher.publish(f"application/{APP}/device/0101010101010101/event/up", b"{", qos=1).wait_for_publish(5)
        recorder.wait_for(lambda m: len(recorder.payloads("lora-gateway/cold-room")) == 2
                          and any(t == "lora-gateway/bridge/event" for t, _, _ in m))
    finally:
        publisher.loop_stop()
        publisher.disconnect()
    assert gateway.stop() == 0, gateway.output()
    readings = recorder.payloads("lora-gateway/cold-room")
    assert [(r["fcnt"], r["values"], r["rssi"], r["snr"]) for r in readings] == [
        (1, {"temperature_1": 4.1}, -67, 9.25), (2, {"temperature_1": 4.2}, -67, 9.25)]
    (rejected,) = recorder.payloads("lora-gateway/bridge/event")
    assert (rejected["stage"], rejected["reason"]) == ("chirpstack", "chirpstack_not_json")
    assert any(t.endswith("/temperature_1/config") for t, _, _ in recorder.messages)


def status_of(config: Path) -> dict:
    """`lora-gateway status --json`; before the daemon's first snapshot it holds only `running` and `reason`."""
    done = subprocess.run([sys.executable, "-m", "gateway", "status", "--json", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    return json.loads(done.stdout)
