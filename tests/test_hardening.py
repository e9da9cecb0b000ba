"""Crafted input against the real gateway (a process, a pty, a mosquitto): it survives, counts, and
keeps hearing the good frames that follow."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from firmware_sim.modules import EMULATORS
from firmware_sim.pty_link import PtyModule
from gateway.uplink import lpp
from gateway.uplink.devices import load_devices, session_keys
from gateway.uplink.lorawan import build_uplink

from .conftest import write_config

PUMP = "lora-gateway/pump-house"


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
