"""End to end: simulated module on a real pty -> `lora-gateway run` (a real process) -> real mosquitto."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from firmware_sim.simulation import Simulation
from gateway.uplink.devices import load_devices, session_keys
from gateway.uplink.lorawan import SessionKeys, build_uplink

from .conftest import write_config

RESOLUTION = {"temperature": 0.1, "relative_humidity": 0.5, "analog_input": 0.01}


def readings_of(messages: list[tuple[str, bytes, bool]], base: str) -> dict[tuple[str, int], dict]:
    out = {}
    for topic, payload, _ in messages:
        parts = topic.split("/")
        if len(parts) == 2 and parts[0] == base and parts[1] != "bridge":
            body = json.loads(payload)
            out[(body["device"], body["fcnt"])] = body
    return out


@pytest.mark.parametrize("dialect", ["rylr", "rak3172", "rn2483"])
def test_readings_reach_mqtt_decoded(dialect, tmp_path: Path, broker, recorder_factory, gateways, devices_file) -> None:
    recorder = recorder_factory(broker.port, ["lora-gateway/#"])
    with Simulation(dialect, devices_file, period_s=0.3, seed=1) as sim:
        config = write_config(tmp_path / "config.toml", port=sim.port, dialect=dialect, mqtt_port=broker.port,
                              devices_file=devices_file, state_path=tmp_path / "state.db")
        gateway = gateways(config).start()
        recorder.wait_for(lambda m: len(readings_of(m, "lora-gateway")) >= 6, timeout=120)
        sent = {(name, fcnt): (readings, rssi, snr) for name, fcnt, readings, rssi, snr in sim.sent}
    assert gateway.stop() == 0, gateway.output()

    got = readings_of(recorder.messages, "lora-gateway")
    assert {device for device, _ in got} == {"pump-house", "cold-room"}
    for key, body in got.items():
        readings, rssi, snr = sent[key]
        assert (body["rssi"], body["snr"]) == (rssi, snr)
        assert set(body["values"]) == {f"{t}_{c}" for c, t, _ in readings}
        for channel, lpp_type, value in readings:
            assert body["values"][f"{lpp_type}_{channel}"] == pytest.approx(value, abs=RESOLUTION[lpp_type] / 2 + 1e-9)

    state = recorder.payloads("lora-gateway/bridge/state")
    assert state[0] == {"state": "online"} and state[-1] == {"state": "offline"}
    (info,) = recorder.payloads("lora-gateway/bridge/info")
    assert info["dialect"] == dialect and info["device_count"] == 2
    # A dashboard that subscribes late still sees each device's state: it is retained.
    late = recorder_factory(broker.port, ["lora-gateway/+"])
    late.wait_for(lambda m: {t for t, _, r in m if r} == {"lora-gateway/pump-house", "lora-gateway/cold-room"})


def test_forged_replayed_and_unknown_frames_are_rejected_and_reported(
    tmp_path: Path, broker, recorder_factory, gateways, devices_file
) -> None:
    keys = {k.name: k for k in session_keys(load_devices(devices_file))}
    pump = keys["pump-house"]
    stranger = SessionKeys("stranger", 0x26FFFFFF, bytes(16), bytes(16))
    recorder = recorder_factory(broker.port, ["lora-gateway/#"])
    with Simulation("rylr", devices_file, period_s=3600, seed=2) as sim:
        config = write_config(tmp_path / "config.toml", port=sim.port, dialect="rylr", mqtt_port=broker.port,
                              devices_file=devices_file, state_path=tmp_path / "state.db")
        gateway = gateways(config).start()
        recorder.wait_for(lambda m: any(t == "lora-gateway/bridge/state" for t, _, _ in m))

        good = build_uplink(pump, 10, 1, bytes.fromhex("0167 0110"))
        forged = good[:-1] + bytes([good[-1] ^ 0xFF])
        for frame in (good, forged, good, build_uplink(stranger, 1, 1, b"\x01\x67\x00\x10")):
            sim.module.send_frame(frame, -70, 5)
        sim.module.send_frame(b"\x00" * 3, -70, 5)

        def reasons(m: list) -> set[str]:
            return {json.loads(p)["reason"] for t, p, _ in m if t == "lora-gateway/bridge/event"}

        recorder.wait_for(lambda m: {"bad_mic", "replay", "unknown_device", "frame_too_short"} <= reasons(m))
        assert gateway.stop() == 0, gateway.output()

        telemetry = [json.loads(p) for t, p, _ in recorder.messages if t == "lora-gateway/pump-house"]
        assert [(b["fcnt"], b["values"]) for b in telemetry] == [(10, {"temperature_1": 27.2})]
        assert not any("stranger" in t for t, _, _ in recorder.messages)
        assert pump.nwk_skey.hex() not in gateway.output().lower()

        # The counter survives a restart: the same frame is still a replay.
        gateway = gateways(config).start()
        recorder.wait_for(lambda m: sum(t == "lora-gateway/bridge/info" for t, _, _ in m) >= 2)
        sim.module.send_frame(good, -70, 5)
        sim.module.send_frame(build_uplink(pump, 11, 1, bytes.fromhex("0167 0111")), -70, 5)
        recorder.wait_for(lambda m: any(t == "lora-gateway/pump-house" and json.loads(p)["fcnt"] == 11
                                        for t, p, _ in m))
        events = [json.loads(p) for t, p, _ in recorder.messages if t == "lora-gateway/bridge/event"]
        assert [e["reason"] for e in events].count("replay") == 2
        assert gateway.stop() == 0


def test_silent_module_is_a_clear_error(tmp_path: Path, broker, gateways, devices_file) -> None:
    from firmware_sim.modules import EMULATORS
    from firmware_sim.pty_link import PtyModule

    emulator = EMULATORS["rak3172"]()
    emulator.respond = False
    with PtyModule(emulator) as module:
        config = write_config(tmp_path / "config.toml", port=module.port, dialect="rak3172", mqtt_port=broker.port,
                              devices_file=devices_file, state_path=tmp_path / "state.db")
        config.write_text(config.read_text().replace("reply_timeout_s = 5", "reply_timeout_s = 0.5"))
        gateway = gateways(config).start()
        assert gateway.proc.wait(timeout=120) == 1
    out = gateway.output()
    assert f"rak3172 module on {module.port} at 115200 baud" in out and "no answer to 'AT'" in out


def test_running_daemon_never_loads_torch(tmp_path: Path, broker, recorder_factory, gateways, devices_file) -> None:
    recorder = recorder_factory(broker.port, ["lora-gateway/#"])
    with Simulation("rylr", devices_file, period_s=0.2, seed=9) as sim:
        config = write_config(tmp_path / "config.toml", port=sim.port, dialect="rylr", mqtt_port=broker.port,
                              devices_file=devices_file, state_path=tmp_path / "state.db")
        gateway = gateways(config).start()
        recorder.wait_for(lambda m: len(recorder.payloads("lora-gateway/pump-house")) >= 2)
        maps = Path(f"/proc/{gateway.proc.pid}/maps").read_text()
        assert "onnxruntime" in maps  # the model is loaded, from onnxruntime alone
        assert "torch" not in maps
        assert gateway.stop() == 0


def test_device_goes_offline_after_silence_and_back(tmp_path: Path, broker, recorder_factory, gateways,
                                                    devices_file) -> None:
    from firmware_sim.modules import EMULATORS
    from firmware_sim.pty_link import PtyModule

    pump = {k.name: k for k in session_keys(load_devices(devices_file))}["pump-house"]
    recorder = recorder_factory(broker.port, ["lora-gateway/pump-house/availability"])

    def states(m: list) -> list[bytes]:
        # A retained state sent again on (re)connect is not a change: keep the changes only.
        changes: list[bytes] = []
        for _, p, _ in m:
            if not changes or changes[-1] != p:
                changes.append(p)
        return changes

    with PtyModule(EMULATORS["rylr"]()) as module:
        config = write_config(tmp_path / "config.toml", port=module.port, dialect="rylr", mqtt_port=broker.port,
                              devices_file=devices_file, state_path=tmp_path / "state.db")
        gateway = gateways(config).start().wait_ready()
        for fcnt in range(5):  # every 0.2 s: the gateway learns that period
            module.send_frame(build_uplink(pump, fcnt, 1, bytes.fromhex("0167 0110")), -70, 5)
            time.sleep(0.2)
        recorder.wait_for(lambda m: states(m) == [b"online", b"offline"])  # silent for 3 periods
        module.send_frame(build_uplink(pump, 5, 1, bytes.fromhex("0167 0110")), -70, 5)
        recorder.wait_for(lambda m: states(m) == [b"online", b"offline", b"online"])
        assert gateway.stop() == 0
