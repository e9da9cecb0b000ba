"""SIGHUP reloads the active model in a running gateway; a bundle that fails its checks never goes live."""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from firmware_sim.simulation import Simulation
from gateway.detect.model_store import activate, install_bundle, packaged_default_bundle

from .conftest import write_config


def new_version(tmp_path: Path, version: str) -> Path:
    """The shipped bundle under another version, as a fleet update would deliver it."""
    src = tmp_path / f"bundle-{version}"
    shutil.copytree(packaged_default_bundle(), src)
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["version"] = version
    (src / "manifest.json").write_text(json.dumps(manifest))
    return src


def infos(messages: list) -> list[dict]:
    return [json.loads(p) for t, p, _ in messages if t == "lora-gateway/bridge/info"]


def events(messages: list, kind: str) -> list[dict]:
    return [e for t, p, _ in messages if t == "lora-gateway/bridge/event" and (e := json.loads(p))["type"] == kind]


@contextmanager
def running_gateway(tmp_path: Path, root: Path, broker, recorder_factory, gateways, devices_file) -> Iterator[tuple]:
    """A gateway on a simulated module with its model store at `root`, running the shipped 1.0.0."""
    recorder = recorder_factory(broker.port, ["lora-gateway/#"])
    with Simulation("rylr", devices_file, period_s=0.2, seed=8) as sim:
        config = write_config(tmp_path / "config.toml", port=sim.port, dialect="rylr", mqtt_port=broker.port,
                              devices_file=devices_file, state_path=tmp_path / "state.db",
                              extra=f'model_root = "{root}"')
        gateway = gateways(config).start()
        recorder.wait_for(lambda m: infos(m) and infos(m)[0]["model"]["version"] == "1.0.0")
        yield gateway, recorder


def test_sighup_switches_to_the_activated_bundle_and_refuses_a_broken_one(
    tmp_path: Path, broker, recorder_factory, gateways, devices_file
) -> None:
    root = tmp_path / "models"
    with running_gateway(tmp_path, root, broker, recorder_factory, gateways, devices_file) as (gateway, recorder):
        install_bundle(new_version(tmp_path, "1.1.0"), root)
        activate(root, "default@1.1.0")
        gateway.proc.send_signal(signal.SIGHUP)
        recorder.wait_for(lambda m: events(m, "model_reloaded"))
        recorder.wait_for(lambda m: infos(m)[-1]["model"]["version"] == "1.1.0")

        # A file changed after install: the reload is refused and 1.1.0 keeps running.
        installed = root / "default" / "1.1.0" / "model.onnx"
        installed.chmod(0o644)
        installed.write_bytes(installed.read_bytes()[:-100])
        gateway.proc.send_signal(signal.SIGHUP)
        recorder.wait_for(lambda m: events(m, "model_reload_failed"))
        (failed,) = events(recorder.messages, "model_reload_failed")
        assert "1.1.0/model.onnx: size" in failed["detail"] and "truncated" in failed["detail"]
        # ... and the gateway goes on publishing readings.
        before = len(recorder.payloads("lora-gateway/pump-house"))
        recorder.wait_for(lambda m: len(recorder.payloads("lora-gateway/pump-house")) > before + 2)
        assert infos(recorder.messages)[-1]["model"]["version"] == "1.1.0"
        assert gateway.stop() == 0, gateway.output()


def test_sighup_applies_this_gateways_floor_not_the_installers(
    tmp_path: Path, broker, recorder_factory, gateways, devices_file
) -> None:
    pytest.importorskip("torch", reason="building a bundle needs the [train] extra")
    from .bundles import low_parity_bundle

    root = tmp_path / "models"
    low = tmp_path / "low"
    low_parity_bundle(low)
    with running_gateway(tmp_path, root, broker, recorder_factory, gateways, devices_file) as (gateway, recorder):
        # Installed and activated with the floor lowered to 50%; the daemon's floor is the default 99.5%.
        activate(root, install_bundle(low, root, min_agreement=0.5).ref, min_agreement=0.5)
        gateway.proc.send_signal(signal.SIGHUP)
        recorder.wait_for(lambda m: events(m, "model_reload_failed"))
        (failed,) = events(recorder.messages, "model_reload_failed")
        assert "lowparity/0.9.0/model.onnx: parity gate failed" in failed["detail"] and "99.50%" in failed["detail"]
        assert not events(recorder.messages, "model_reloaded")
        assert infos(recorder.messages)[-1]["model"]["version"] == "1.0.0"
        assert gateway.stop() == 0, gateway.output()
