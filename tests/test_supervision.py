"""Supervision with real processes: the port unplugged and back, systemd's notify socket, SIGTERM."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from firmware_sim.simulation import Simulation

from .conftest import write_config


def _readings(messages: list, device: str) -> list[dict]:
    return [json.loads(p) for t, p, _ in messages if t == f"lora-gateway/{device}"]


def _events(messages: list) -> list[dict]:
    return [json.loads(p) for t, p, _ in messages if t == "lora-gateway/bridge/event"]


def test_module_unplugged_and_replugged(tmp_path: Path, broker, recorder_factory, gateways, devices_file) -> None:
    link = tmp_path / "ttyLoRa"
    recorder = recorder_factory(broker.port, ["lora-gateway/#"])
    with Simulation("rn2483", devices_file, period_s=0.2, link=link, seed=3) as sim:
        config = write_config(tmp_path / "config.toml", port=str(link), dialect="rn2483", mqtt_port=broker.port,
                              devices_file=devices_file, state_path=tmp_path / "state.db")
        gateway = gateways(config).start()
        recorder.wait_for(lambda m: len(_readings(m, "pump-house")) >= 2)
        sim.unplug()
        recorder.wait_for(lambda m: any(e["type"] == "serial_lost" for e in _events(m)))
        before = len(_readings(recorder.messages, "pump-house"))
        sim.replug()
        recorder.wait_for(lambda m: any(e["type"] == "serial_back" for e in _events(m)))
        recorder.wait_for(lambda m: len(_readings(m, "pump-house")) >= before + 2)
        assert gateway.proc.poll() is None
    assert gateway.stop() == 0, gateway.output()
    # The loss is a warning; its coming back is good news, at INFO.
    log = gateway.output().splitlines()
    assert any(" WARNING " in line and "serial_lost" in line for line in log)
    back = [line for line in log if "serial_back" in line]
    assert len(back) == 1 and " INFO " in back[0], back


def _notify_socket(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    return sock


def test_systemd_notify_ready_watchdog_status_stopping(tmp_path: Path, broker, gateways, devices_file) -> None:
    # An abstract socket, as systemd itself uses: '@' in NOTIFY_SOCKET stands for the NUL byte.
    name = f"lora-gateway-test-{tmp_path.name}"
    sock = _notify_socket("\0" + name)
    with Simulation("rylr", devices_file, period_s=0.2, seed=4) as sim:
        config = write_config(tmp_path / "config.toml", port=sim.port, dialect="rylr", mqtt_port=broker.port,
                              devices_file=devices_file, state_path=tmp_path / "state.db")
        gateway = gateways(config).start(env={"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "400000"})
        lines: list[str] = []
        while lines.count("WATCHDOG=1") < 2:
            lines.extend(sock.recv(4096).decode().splitlines())
        assert lines.index("READY=1") < lines.index("WATCHDOG=1")
        assert any(line.startswith("STATUS=") and "frames" in line for line in lines)
        assert gateway.stop() == 0, gateway.output()
        while "STOPPING=1" not in lines:
            lines.extend(sock.recv(4096).decode().splitlines())
    sock.close()


def test_notify_socket_path(tmp_path: Path, broker, gateways, devices_file) -> None:
    path = tmp_path / "notify.sock"
    sock = _notify_socket(str(path))
    with Simulation("rak3172", devices_file, period_s=0.2, seed=5) as sim:
        config = write_config(tmp_path / "config.toml", port=sim.port, dialect="rak3172", mqtt_port=broker.port,
                              devices_file=devices_file, state_path=tmp_path / "state.db")
        gateway = gateways(config).start(env={"NOTIFY_SOCKET": str(path)})
        assert "READY=1" in sock.recv(4096).decode().splitlines()
        assert gateway.stop() == 0
    sock.close()


def test_a_notify_socket_nobody_reads_never_stalls_the_daemon(tmp_path: Path, broker, recorder_factory, gateways,
                                                                devices_file) -> None:
    path = tmp_path / "notify.sock"
    sock = _notify_socket(str(path))  # bound, never read after READY: its queue fills up
    recorder = recorder_factory(broker.port, ["lora-gateway/#"])
    with Simulation("rylr", devices_file, period_s=0.05, seed=6) as sim:
        config = write_config(tmp_path / "config.toml", port=sim.port, dialect="rylr", mqtt_port=broker.port,
                              devices_file=devices_file, state_path=tmp_path / "state.db")
        gateway = gateways(config).start(env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "2000"})
        # WATCHDOG_USEC of 2 ms: a ping on every housekeeping tick fills the queue within seconds.
        try:
            recorder.wait_for(lambda m: len(recorder.payloads("lora-gateway/pump-house")) >= 150)
        except AssertionError as e:
            raise AssertionError(f"{e}\ngateway log:\n{gateway.output()[-3000:]}") from None
        assert gateway.stop() == 0, gateway.output()
    sock.close()
