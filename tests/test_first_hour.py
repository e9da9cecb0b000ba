"""A new user's mistakes, each met by one clear line: a corrupt state database, a corrupt active
model, a reader that closes the pipe early, and `check-config` finding them before `run` does.
Real processes, a real pty and real onnxruntime sessions."""

from __future__ import annotations

import argparse
import os
import re
import stat
import subprocess
import time
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_sim.cli import build_parser as sim_parser
from firmware_sim.modules import EMULATORS
from firmware_sim.pty_link import PtyModule
from gateway import __version__
from gateway.commands import build_parser
from gateway.detect.model_store import activate, install_bundle, packaged_default_bundle
from gateway.uplink.devices import add_device

GATEWAY = [sys.executable, "-m", "gateway"]


def run(*args: str, env: dict[str, str] | None = None, stdout: int | None = subprocess.PIPE
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GATEWAY, *args], stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120,
                          env=None if env is None else {**os.environ, **env})


@pytest.fixture
def module() -> Iterator[PtyModule]:
    with PtyModule(EMULATORS["rylr"]()) as m:
        yield m


@pytest.fixture
def site(tmp_path: Path, module: PtyModule) -> Path:
    """A configuration whose every check passes: a module on a pty, a device, no state yet."""
    add_device(tmp_path / "devices.toml", "pump-house")
    config = tmp_path / "config.toml"
    config.write_text(f'model_root = "models"\n[serial]\nport = "{module.port}"\nreply_timeout_s = 5\n'
                      "[mqtt]\nport = 1\n")
    return config


def corrupt(path: Path) -> bytes:
    """Garbage over the SQLite header, as a bad SD card or a stray `cat > state.db` leaves it."""
    garbage = b"this is not a database " * 200
    path.write_bytes(garbage)
    return garbage


def corrupt_active_bundle(root: Path) -> Path:
    """The packaged default installed and activated under `root`, then its int8 model overwritten."""
    bundle = install_bundle(packaged_default_bundle(), root)
    activate(root, bundle.ref)
    model = bundle.path / "model.onnx"
    bundle.path.chmod(stat.S_IRWXU)
    model.chmod(stat.S_IRUSR | stat.S_IWUSR)
    model.write_bytes(b"\0" * model.stat().st_size)
    return model


def test_check_config_checks_port_state_and_model_and_says_what_it_skipped(site: Path) -> None:
    done = run("check-config", "--config", str(site))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines[1:-1]] == ["devices", "serial", "state", "model", "broker", "module"]
    assert "ok" in lines[2] and "the port opens" in lines[2]
    assert "packaged default" in lines[4] and "verified" in lines[4]
    assert lines[5].split()[1] == "skipped" and lines[6].split()[1] == "skipped"
    assert lines[-1] == f"{site}: OK"


def test_check_config_fails_where_run_would(site: Path, module: PtyModule) -> None:
    state = site.parent / "state.db"
    corrupt(state)
    model = corrupt_active_bundle(site.parent / "models")
    missing = site.parent / "ttyUSB7"
    site.write_text(site.read_text().replace(module.port, str(missing)))
    done = run("check-config", "--config", str(site))
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert f"serial     FAILED   rylr module on {missing} at 115200 baud: no such port" in out
    assert f"state      FAILED   {state}: the state database is not usable (file is not a database)" in out
    assert f"model      FAILED   {model}: sha256" in out and "run falls back to the packaged default model" in out
    assert out.splitlines()[-1] == f"{site}: FAILED: serial, state, model"
    assert "Traceback" not in done.stderr


def test_a_corrupt_state_database_is_one_line_and_kept(site: Path, tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    garbage = corrupt(state)
    for args in (["run"], ["device", "reset-counter", "pump-house"], ["report", "--device", "pump-house"]):
        done = run(*args, "--config", str(site))
        assert done.returncode == 1, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert lines[-1].startswith(f"lora-gateway: {state}: the state database is not usable"), (args, done.stderr)
        assert f"mv {state} {state}.bad" in lines[-1] and "Traceback" not in done.stderr, args
        assert state.read_bytes() == garbage, args  # never replaced: it holds counters and unsent alerts


def test_status_into_a_closed_pipe_ends_quietly(site: Path) -> None:
    """`lora-gateway status | head`: the reader is gone before anything is written. Exit 141, as a
    shell reports a command that SIGPIPE ended; argparse's --help swallows the error itself (exit 0)."""
    sim = [sys.executable, "-m", "firmware_sim.cli"]
    devices = str(site.parent / "devices.toml")
    commands = [(GATEWAY, ["status", "--config", str(site)], 141),
                (GATEWAY, ["device", "list", "--config", str(site)], 141),
                (GATEWAY, ["check-config", "--config", str(site)], 141), (GATEWAY, ["--help"], 0),
                (sim, ["run", "--devices", devices, "--link", "", "--duration", "1"], 141)]
    for program, args, code in commands:
        read, write = os.pipe()
        os.close(read)
        done = subprocess.run([*program, *args], stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
        os.close(write)
        assert (done.returncode, done.stderr) == (code, ""), args


def _options(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, f"{path} {name}")
        else:
            yield path, action


def test_every_option_has_help_text() -> None:
    missing = [f"{path} {'/'.join(a.option_strings) or a.dest}"
               for parser, prog in ((build_parser(), "lora-gateway"), (sim_parser(), "lora-sim"))
               for path, a in _options(parser, prog) if not a.help]
    assert missing == []


def test_lora_sim_version_and_bad_numbers() -> None:
    done = subprocess.run([sys.executable, "-m", "firmware_sim.cli", "--version"], capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout) == (0, f"lora-sim {__version__}\n")
    done = subprocess.run([sys.executable, "-m", "firmware_sim.cli", "--speed", "fast"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "argument --speed: 'fast' is not a number (or 'max')" in done.stderr
    assert "_speed" not in done.stderr


def test_a_corrupt_active_model_at_start_falls_back_to_the_default(
    tmp_path: Path, broker, recorder_factory, gateways, devices_file
) -> None:
    from firmware_sim.simulation import Simulation

    from .conftest import write_config

    model = corrupt_active_bundle(tmp_path / "models")
    recorder = recorder_factory(broker.port, ["lora-gateway/#"])
    with Simulation("rylr", devices_file, period_s=0.2, seed=11) as sim:
        config = write_config(tmp_path / "config.toml", port=sim.port, dialect="rylr", mqtt_port=broker.port,
                              devices_file=devices_file, state_path=tmp_path / "state.db",
                              extra=f'model_root = "{tmp_path / "models"}"')
        gateway = gateways(config).start()
        events = recorder.wait_for(lambda m: any(t == "lora-gateway/bridge/event" and b"model_refused" in p
                                                 for t, p, _ in m))
        recorder.wait_for(lambda m: any(t == "lora-gateway/pump-house" for t, _, _ in m))
        assert gateway.stop() == 0, gateway.output()
    event = next(p for t, p, _ in events if t == "lora-gateway/bridge/event" and b"model_refused" in p).decode()
    assert str(model) in event and "sha256" in event
    errors = [line for line in gateway.output().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"active model refused: {model}: sha256" in errors[0], gateway.output()
    assert "running the packaged default model" in errors[0] and "Traceback" not in gateway.output()


def test_the_detector_tells_each_channels_warm_up() -> None:
    from gateway.detect.detector import Detector
    from gateway.detect.scoring import OnnxScorer
    from gateway.detect.settings import DetectorSettings
    from gateway.records import Reading

    detector = Detector(OnnxScorer(packaged_default_bundle()), DetectorSettings(warmup=70))
    seen: list[dict[str, float]] = []
    for i in range(80):
        detector.observe([Reading("d", {"temperature_1": 20 + (i % 7) * 0.1}, i, -80.0, 5.0, float(i))])
        seen.append(detector.warming_up("d"))
    fractions = [s["temperature_1"] for s in seen[:69]]
    assert fractions == sorted(fractions) and 0 < fractions[0] < fractions[-1] < 1
    assert seen[69:] == [{}] * 11  # done after `warmup` readings (the model's windows were ready earlier)
    assert detector.warming_up("never-heard") == {}


def test_warm_up_shows_in_the_state_payload_and_in_status(
    tmp_path: Path, broker, recorder_factory, gateways, devices_file
) -> None:
    import json

    from firmware_sim.simulation import Simulation

    from .conftest import write_config

    recorder = recorder_factory(broker.port, ["lora-gateway/pump-house"])
    with Simulation("rylr", devices_file, period_s=0.1, seed=12) as sim:
        config = write_config(tmp_path / "config.toml", port=sim.port, dialect="rylr", mqtt_port=broker.port,
                              devices_file=devices_file, state_path=tmp_path / "state.db",
                              extra="[detector]\nwarmup = 100000")
        gateway = gateways(config).start()
        try:
            recorder.wait_for(lambda m: len(m) >= 3, timeout=60)
        except AssertionError as e:
            raise AssertionError(gateway.output()) from e
        progress = [json.loads(p)["warming_up"] for _, p, _ in recorder.messages]
        assert set(progress[-1]) == set(json.loads(recorder.messages[-1][1])["values"])
        assert all(0 <= v < 100 for p in progress for v in p.values())

        def warming_line() -> str | None:
            text = run("status", "--config", str(config)).stdout
            return next((line for line in text.splitlines() if "warming up (no alerts yet):" in line), None)

        deadline = time.monotonic() + 60
        while (line := warming_line()) is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert gateway.stop() == 0, gateway.output()
    assert line is not None and re.search(r"warming up \(no alerts yet\): \S+ \d+%", line), line
