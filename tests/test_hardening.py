"""Crafted input against the real gateway (a process, a pty, a mosquitto): it survives, counts, and
keeps hearing the good frames that follow."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from firmware_sim.modules import EMULATORS
from firmware_sim.pty_link import PtyModule
from gateway.service.state import StateStore
from gateway.uplink import lpp
from gateway.uplink.devices import load_devices, session_keys
from gateway.uplink.lorawan import SessionKeys, build_uplink

from .conftest import write_config

PUMP = "lora-gateway/pump-house"
COLD = "lora-gateway/cold-room"


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """The deadline only bounds a hang."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def events(messages: list[tuple[str, bytes, bool]]) -> list[dict]:
    return [json.loads(p) for t, p, _ in messages if t == "lora-gateway/bridge/event"]


def test_rn2483_rearms_after_a_malformed_radio_rx(tmp_path: Path, broker, recorder_factory, gateways,
                                                  devices_file: Path) -> None:
    keys = {k.name: k for k in session_keys(load_devices(devices_file))}["pump-house"]
    recorder = recorder_factory(broker.port, ["lora-gateway/#"])
    with PtyModule(EMULATORS["rn2483"]()) as module:
        config = write_config(tmp_path / "config.toml", port=module.port, dialect="rn2483", mqtt_port=broker.port,
                              devices_file=devices_file, state_path=tmp_path / "state.db")
        gateway = gateways(config).start().wait_ready()
        # Noise on the UART cuts the event to an odd number of hex digits: the module disarmed all the same.
        module.send_frame(build_uplink(keys, 1, 1, lpp.encode([(1, "temperature", 20.0)])), -80, 7,
                          garble=lambda line: line[:-1])
        recorder.wait_for(lambda m: any(e.get("reason") == "bad_hex" for e in events(m)))
        wait_until(lambda: module.emulator.armed, "the gateway to re-arm the receiver")
        module.send_frame(build_uplink(keys, 2, 1, lpp.encode([(1, "temperature", 21.0)])), -80, 7)
        recorder.wait_for(lambda m: any(t == PUMP for t, _, _ in m))
        assert gateway.stop() == 0


def test_set_counter_and_reset_counter_take_effect_on_reload(tmp_path: Path, broker, recorder_factory, gateways,
                                                             devices_file: Path) -> None:
    by_name = {k.name: k for k in session_keys(load_devices(devices_file))}
    pump, cold = by_name["pump-house"], by_name["cold-room"]
    recorder = recorder_factory(broker.port, ["lora-gateway/#"])

    def frame(fcnt: int, keys: SessionKeys = pump) -> bytes:
        return build_uplink(keys, fcnt, 1, lpp.encode([(1, "temperature", 20.0)]))

    def heard(fcnt: int, topic: str = PUMP) -> Callable[[list], bool]:
        return lambda m: any(t == topic and json.loads(p)["fcnt"] == fcnt for t, p, _ in m)

    def reloaded(count: int) -> Callable[[list], bool]:
        return lambda m: sum(e["type"] == "devices_reloaded" for e in events(m)) >= count

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "gateway", "device", *args, "--config", str(config)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    with PtyModule(EMULATORS["rylr"]()) as module:
        config = write_config(tmp_path / "config.toml", port=module.port, dialect="rylr", mqtt_port=broker.port,
                              devices_file=devices_file, state_path=tmp_path / "state.db")
        gateway = gateways(config).start().wait_ready()
        # A node installed late: its counter is past 65535, and only the low 16 bits travel.
        module.send_frame(frame(70_000), -80, 7)
        (rejected,) = [e for e in events(recorder.wait_for(
            lambda m: any(e.get("reason") == "bad_mic" for e in events(m)))) if e.get("reason") == "bad_mic"]
        assert "lora-gateway device set-counter pump-house N" in rejected["detail"]

        assert "from counter 70000 on" in cli("set-counter", "pump-house", "70000")
        assert gateway.proc is not None
        gateway.proc.send_signal(signal.SIGHUP)
        recorder.wait_for(reloaded(1))
        module.send_frame(frame(70_000), -80, 7)
        recorder.wait_for(heard(70_000))

        # Another node really reset: counter 1 again is a replay until the operator says so.
        module.send_frame(frame(500, cold), -80, 7)
        recorder.wait_for(heard(500, COLD))
        module.send_frame(frame(1, cold), -80, 7)
        recorder.wait_for(lambda m: any(e.get("reason") == "replay" for e in events(m)))
        assert "forgotten" in cli("reset-counter", "cold-room")
        gateway.proc.send_signal(signal.SIGHUP)
        recorder.wait_for(reloaded(2))
        module.send_frame(frame(1, cold), -80, 7)
        recorder.wait_for(heard(1, COLD))
        assert gateway.stop() == 0


def test_a_node_flooding_new_channels_is_capped_and_discovery_goes_once_per_channel(
    tmp_path: Path, broker, recorder_factory, gateways, devices_file: Path
) -> None:
    keys = {k.name: k for k in session_keys(load_devices(devices_file))}["pump-house"]
    recorder = recorder_factory(broker.port, ["lora-gateway/#", "homeassistant/#"])
    with PtyModule(EMULATORS["rak3172"]()) as module:
        config = write_config(tmp_path / "config.toml", port=module.port, dialect="rak3172", mqtt_port=broker.port,
                              devices_file=devices_file, state_path=tmp_path / "state.db",
                              extra="max_channels_per_device = 12")
        gateway = gateways(config).start().wait_ready()
        # Frame 1: channels 0-9; then 50 new channels a frame, while channels 0-9 keep reporting.
        module.send_frame(build_uplink(keys, 1, 1, lpp.encode([(c, "analog_input", 1.0) for c in range(10)])), -80, 7)
        for i in range(1, 5):
            readings = [(c, "analog_input", 2.0) for c in range(5)] + [(c, "analog_input", 3.0)
                                                                       for c in range(50 * i, 50 * i + 45)]
            module.send_frame(build_uplink(keys, 1 + i, 1, lpp.encode(readings)), -80, 7)
        done = recorder.wait_for(lambda m: any(t == PUMP and json.loads(p)["fcnt"] == 5 for t, p, _ in m))
        assert gateway.stop() == 0

    states = {json.loads(p)["fcnt"]: json.loads(p)["values"] for t, p, _ in done if t == PUMP}
    assert len(states[1]) == 10
    assert set(states[2]) == {f"analog_input_{c}" for c in [*range(5), 50, 51]}  # two more fit under the cap
    assert set(states[5]) == {f"analog_input_{c}" for c in range(5)}  # known channels still report
    capped = [e for e in events(recorder.messages) if e.get("reason") == "too_many_channels"]
    assert capped and "max_channels_per_device = 12" in capped[0]["detail"]
    announced = [(t, retained) for t, p, retained in recorder.messages
                 if t.startswith("homeassistant/sensor/test_pump-house/analog_input_") and p]
    sensors = [t for t, _ in announced]
    # Each channel announced once, none past the cap. (Under load, frames read before the broker
    # session was up sent every config twice: test_discovery.py's ..._while_the_broker_connects_...)
    assert len(sensors) == len(set(sensors)) == 12, announced


def test_telemetry_drops_counted_before_a_kill_9_are_reported_after_it(
    tmp_path: Path, broker, recorder_factory, gateways, devices_file: Path
) -> None:
    keys = {k.name: k for k in session_keys(load_devices(devices_file))}["pump-house"]
    with PtyModule(EMULATORS["rylr"]()) as module:
        config = write_config(tmp_path / "config.toml", port=module.port, dialect="rylr", mqtt_port=broker.port,
                              devices_file=devices_file, state_path=tmp_path / "state.db")
        config.write_text(config.read_text().replace("[mqtt]\n", "[mqtt]\ntelemetry_queue = 5\n"))
        gateway = gateways(config).start().wait_ready()
        broker.stop()
        for fcnt in range(1, 101):  # 100 readings, 5 kept: 95 dropped while the broker is away
            module.send_frame(build_uplink(keys, fcnt, 1, lpp.encode([(1, "temperature", 20.0)])), -80, 7)
        health = tmp_path / "state.health.json"
        counted = 0  # discovery and availability messages are dropped too

        def saved_all() -> bool:
            nonlocal counted
            counted = json.loads(health.read_text())["telemetry_dropped"] if health.exists() else 0
            return counted >= 95 and _saved_drops(tmp_path / "state.db") == [counted, counted]

        wait_until(saved_all, "the drops to be counted and saved")
        gateway.stop(signal.SIGKILL)

        broker.start()
        recorder = recorder_factory(broker.port, ["lora-gateway/bridge/event"])
        gateway = gateways(config).start().wait_ready()
        got = recorder.wait_for(lambda m: any(e["type"] == "telemetry_dropped" for e in events(m)))
        assert gateway.stop() == 0
    (dropped,) = [e for e in events(got) if e["type"] == "telemetry_dropped"]
    assert dropped["count"] == counted


def _saved_drops(path: Path) -> list[int] | None:
    store = StateStore(path)
    try:
        saved = store.blobs("publisher").get("telemetry")
    finally:
        store.close()
    return None if saved is None else json.loads(saved)
