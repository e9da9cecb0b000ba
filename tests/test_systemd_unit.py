"""The systemd unit: notify type, watchdog, dedicated user, hardening, its exposure score, and that it starts."""

from __future__ import annotations

import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_sim.simulation import Simulation
from gateway.config import load_config

from .conftest import write_config

UNIT = Path(__file__).parent.parent / "systemd" / "lora-gateway.service"


def directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_unit_runs_supervised_and_confined() -> None:
    d = directives()
    expected = {
        "Type": "notify", "Restart": "on-failure", "User": "lora-gateway", "SupplementaryGroups": "dialout",
        "StateDirectory": "lora-gateway", "ProtectSystem": "strict", "NoNewPrivileges": "yes",
        "PrivateTmp": "yes", "ProtectHome": "yes",
        "RuntimeDirectory": "lora-gateway", "RuntimeDirectoryPreserve": "yes",
    }
    for key, value in expected.items():
        assert d.get(key) == [value], key
    assert d["WatchdogSec"] and d["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert d["CapabilityBoundingSet"] == [""]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not on this machine")
def test_exposure_score_is_low() -> None:
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNIT)], capture_output=True, text=True, check=True
    ).stdout
    score = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))
    assert score <= 2.0, out[-2000:]


def _unit_environment() -> dict[str, str]:
    """The variables the unit's Environment= lines set."""
    env: dict[str, str] = {}
    for line in directives().get("Environment", []):
        for assignment in shlex.split(line):
            name, _, value = assignment.partition("=")
            env[name] = value
    return env


def test_the_units_environment_is_not_read_as_settings(tmp_path: Path) -> None:
    env = _unit_environment()
    assert "LORA_GATEWAY_MODELS" in env  # the model store, as the README documents it
    config = tmp_path / "config.toml"
    config.write_text('[mqtt]\nhost = "broker"\n')
    assert load_config(config, environ=env).mqtt.host == "broker"


def test_run_started_as_the_unit_starts_it(tmp_path: Path, broker, recorder_factory, devices_file) -> None:
    """ExecStart's command line, Environment= and WorkingDirectory=, outside systemd: only the install
    prefix, the configuration file and the working directory point into the test's folder."""
    d = directives()
    program, *args = shlex.split(d["ExecStart"][0])
    assert program == "/opt/lora-gateway/bin/lora-gateway"  # where systemd/install.sh installs it
    assert args[:2] == ["run", "--config"] and args[2] == "/etc/lora-gateway/config.toml"
    installed = Path(sys.executable).with_name("lora-gateway")  # the console script of this installation
    assert installed.exists(), f"{installed}: the lora-gateway console script is not installed"
    workdir = tmp_path / "var-lib-lora-gateway"
    workdir.mkdir()
    recorder = recorder_factory(broker.port, ["lora-gateway/#"])
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(60)
    with Simulation("rylr", devices_file, period_s=0.2, seed=9) as sim:
        config = write_config(tmp_path / "config.toml", port=sim.port, dialect="rylr", mqtt_port=broker.port,
                              devices_file=devices_file, state_path=workdir / "state.db")
        # systemd's own variables for a unit like this one, then the unit's.
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
               "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), **_unit_environment()}
        check = subprocess.run([str(installed), "check-config", "--config", str(config)], env=env, cwd=workdir,
                               capture_output=True, text=True, timeout=120)
        assert check.returncode == 0, check.stdout + check.stderr
        log = (tmp_path / "gateway.log").open("w")
        proc = subprocess.Popen([str(installed), args[0], args[1], str(config)], env=env, cwd=workdir,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            assert "READY=1" in notify.recv(4096).decode().splitlines(), (tmp_path / "gateway.log").read_text()
            recorder.wait_for(lambda m: any(t == "lora-gateway/pump-house" for t, _, _ in m))
        finally:
            proc.terminate()
            code = proc.wait(timeout=30)
            notify.close()
    assert code == 0, (tmp_path / "gateway.log").read_text()
