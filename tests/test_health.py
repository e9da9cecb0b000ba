"""Health snapshot and `lora-gateway status`: unit checks, then a real daemon, a real broker stopped under it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from firmware_sim.simulation import Simulation
from gateway.commands.status import format_report, not_running_reason, read_health
from gateway.config import load_config
from gateway.records import Reading
from gateway.service.health import (
    HEARTBEAT_S,
    BrokerHealth,
    DeviceHealth,
    DeviceTable,
    HealthReporter,
    HealthSnapshot,
    ModuleHealth,
    health_path,
    write_health,
)

from .conftest import write_config


def snapshot(pid: int, written_at: float) -> HealthSnapshot:
    return HealthSnapshot(
        pid=pid, started_at=written_at - 3725, written_at=written_at,
        module=ModuleHealth("/dev/ttyUSB0", "rak3172", True), broker=BrokerHealth("broker.lan", 8883, False),
        model="farm@2", devices=[DeviceHealth("pump-house", written_at - 5, -97.0, "raised", 0.93)],
        rejected={"bad_mic": 4, "replay": 11}, frames_accepted=1234, outbox_depth=2, telemetry_dropped=0,
    )


def test_write_read_round_trip_is_atomic(tmp_path: Path) -> None:
    path = health_path(tmp_path / "state.db")
    assert path == tmp_path / "state.health.json"
    s = snapshot(os.getpid(), time.time())
    write_health(path, s)
    write_health(path, s)
    assert read_health(path) == s
    assert json.loads(path.read_text())["uptime_s"] == 3725
    assert [p.name for p in tmp_path.iterdir()] == ["state.health.json"]  # no temporary file left behind
    assert path.stat().st_mode & 0o777 == 0o644


def test_running_stale_and_gone() -> None:
    now = time.time()
    assert not_running_reason(snapshot(os.getpid(), now - 1), now) is None
    assert "old" in not_running_reason(snapshot(os.getpid(), now - 60), now)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert not_running_reason(snapshot(gone.pid, now), now) == f"process {gone.pid} is gone"


def test_report_text() -> None:
    now = time.time()
    text = format_report(snapshot(os.getpid(), now), now)
    assert text.splitlines()[0] == f"lora-gateway: running (pid {os.getpid()}, up 01:02:05)"
    assert "rak3172 on /dev/ttyUSB0: connected" in text and "broker.lan:8883: DISCONNECTED" in text
    assert "farm@2" in text and "1234 accepted, 15 rejected" in text
    assert text.index("replay") < text.index("bad_mic")  # most frequent reason first
    assert "pump-house" in text and "5 s ago" in text and "-97 dBm" in text and "alert raised  score 0.930" in text
    stale = format_report(snapshot(os.getpid(), now - 600), now)
    assert stale.startswith("lora-gateway: NOT RUNNING: snapshot is 600 s old")


def test_device_table_keeps_the_latest() -> None:
    table = DeviceTable()
    table.saw(Reading("b", {}, 1, -80.0, 1.0, 10.0))
    table.saw(Reading("a", {}, 1, -70.0, 1.0, 11.0), "raised", 0.9)
    table.saw(Reading("b", {}, 2, -60.0, 1.0, 12.0))
    assert table.rows() == [DeviceHealth("a", 11.0, -70.0, "raised", 0.9), DeviceHealth("b", 12.0, -60.0, "ok", None)]
    table.saw(Reading("c", {}, 1, math.nan, math.nan, 13.0))  # no RSSI known (ChirpStack without rxInfo)
    assert table.rows()[-1].last_rssi is None


def status(config: Path, *extra: str) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "gateway", "status", "--config", str(config), *extra],
                          capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr


def status_json(config: Path) -> dict:
    return json.loads(status(config, "--json")[1])


def wait_until(predicate, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def test_status_of_a_real_daemon_follows_the_broker(tmp_path: Path, broker, gateways, devices_file) -> None:
    with Simulation("rylr", devices_file, period_s=0.3, seed=3) as sim:
        config = write_config(tmp_path / "config.toml", port=sim.port, dialect="rylr", mqtt_port=broker.port,
                              devices_file=devices_file, state_path=tmp_path / "state.db")
        code, text = status(config)
        assert code == 1 and "NOT RUNNING" in text and "no health snapshot" in text
        gateway = gateways(config).start()

        s = wait_until(lambda: (s := status_json(config)).get("running") and len(s["devices"]) == 2
                       and s["broker"]["connected"] and s, "both devices and the broker in status")
        assert s["pid"] == gateway.proc.pid and s["module"] == {"port": sim.port, "dialect": "rylr", "connected": True}
        assert {d["name"] for d in s["devices"]} == {"pump-house", "cold-room"} and s["frames_accepted"] >= 2
        code, text = status(config)
        assert code == 0 and text.startswith(f"lora-gateway: running (pid {gateway.proc.pid}")
        assert f"broker   127.0.0.1:{broker.port}: connected" in text and "pump-house" in text

        broker.stop()
        wait_until(lambda: not status_json(config)["broker"]["connected"], "the broker shown as disconnected")
        code, text = status(config)
        assert code == 0 and f"broker   127.0.0.1:{broker.port}: DISCONNECTED" in text

        broker.start()
        wait_until(lambda: status_json(config)["broker"]["connected"], "the broker shown as connected again")
        assert gateway.stop() == 0, gateway.output()

    code, text = status(config)
    assert code == 1 and text.startswith("lora-gateway: NOT RUNNING: process") and "is gone" in text


def test_snapshot_is_written_when_it_changed_and_at_least_every_heartbeat(tmp_path: Path) -> None:
    """An SD card's budget: the same snapshot is not rewritten every interval."""
    now = time.time()
    current = [snapshot(os.getpid(), now)]
    path = tmp_path / "state.health.json"
    reporter = HealthReporter(path, lambda: current[0])
    assert reporter.write_if_changed()
    first = path.stat().st_ino  # each write renames a new file over the old one
    current[0] = replace(current[0], written_at=now + 2)  # only the time moved
    assert not reporter.write_if_changed()
    assert path.stat().st_ino == first and read_health(path).written_at == now
    current[0] = replace(current[0], written_at=now + 4, frames_accepted=1235)
    assert reporter.write_if_changed()
    assert read_health(path).frames_accepted == 1235
    current[0] = replace(current[0], written_at=now + 4 + HEARTBEAT_S)  # unchanged, but a heartbeat is due
    assert reporter.write_if_changed()
    assert read_health(path).written_at == now + 4 + HEARTBEAT_S
    assert read_health(path).interval_s == HEARTBEAT_S  # `status` calls it stale only after missed heartbeats


def test_runtime_dir_from_systemd_or_the_config() -> None:
    assert load_config(None, {"RUNTIME_DIRECTORY": "/run/lora-gateway"}).runtime_dir == Path("/run/lora-gateway")
    assert load_config(None, {}).runtime_dir is None
    cfg = load_config(None, {"RUNTIME_DIRECTORY": "/run/a", "LORA_GATEWAY_RUNTIME_DIR": "/dev/shm/b"})
    assert cfg.runtime_dir == Path("/dev/shm/b")  # the configuration wins
    assert health_path(Path("/var/lib/lora-gateway/state.db"), Path("/run/lora-gateway")) == Path(
        "/run/lora-gateway/state.health.json")


def test_a_real_daemon_keeps_its_snapshot_in_the_runtime_dir(tmp_path: Path, broker, gateways, devices_file) -> None:
    with Simulation("rylr", devices_file, period_s=0.3, seed=5) as sim:
        config = write_config(tmp_path / "config.toml", port=sim.port, dialect="rylr", mqtt_port=broker.port,
                              devices_file=devices_file, state_path=tmp_path / "state.db", extra='runtime_dir = "run"')
        gateway = gateways(config).start()
        wait_until(lambda: (s := status_json(config)).get("running") and len(s["devices"]) == 2, "both devices")
        assert (tmp_path / "run" / "state.health.json").exists()
        assert not (tmp_path / "state.health.json").exists()
        assert gateway.stop() == 0, gateway.output()
    code, text = status(config)
    assert code == 1 and "is gone" in text
