"""A lossy, noisy radio against `lora-gateway run`: what the channel spoils, the gateway refuses.

Nodes at the edge of SF7's range: many packets carry bit errors, half of those get past the
module's CRC, and some packets are heard twice. The gateway must publish exactly the intact
first copies, refuse every corrupt frame as a bad MIC and every second copy as a replay.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from firmware_sim.scenario import Scenario, bundled, load_scenario
from firmware_sim.simulation import Simulation

from .conftest import EVERY_READING, write_config

RESOLUTION = {"temperature": 0.1, "relative_humidity": 0.5, "voltage": 0.01}
EDGE = {
    "simulation": {"seed": 11},
    "radio": {"crc_escape": 0.5, "duplicate_probability": 0.1, "shadowing_db": 0},
    "nodes": [
        {"name": f"edge-{i}", "period_s": 20, "distance_m": 2000 + 100 * i,
         "sensors": [{"kind": "temperature", "channel": 1}, {"kind": "humidity", "channel": 2},
                     {"kind": "battery", "channel": 3}]}
        for i in range(4)
    ],
}


def last_count(messages: list, reason: str) -> int:
    counts = [body["count"] for t, p, _ in messages if t == "lora-gateway/bridge/event"
              for body in [json.loads(p)] if body.get("reason") == reason]
    return max(counts, default=0)


def test_gateway_publishes_intact_frames_and_refuses_corrupt_and_repeated_ones(
    tmp_path: Path, broker, recorder_factory, gateways
) -> None:
    devices = tmp_path / "devices.toml"
    recorder = recorder_factory(broker.port, ["lora-gateway/#"])
    sim = Simulation.from_scenario(Scenario.model_validate(EDGE), "rylr", devices, speed=300.0, duration_s=1800.0,
                                   wait_for_gateway=True)
    config = write_config(tmp_path / "config.toml", port=sim.port, dialect="rylr", mqtt_port=broker.port,
                          devices_file=devices, state_path=tmp_path / "state.db")
    gateway = gateways(config).start(EVERY_READING)
    with sim:
        assert sim.finished.wait(120)
    counts = sim.port_counts
    assert counts["corrupted"] > 0 and counts["duplicate"] > 0 and sim.engine.stats.crc_error > 0

    def published(m: list) -> dict[tuple[str, int], dict]:
        return {(b["device"], b["fcnt"]): b for t, p, _ in m if t.count("/") == 1 and not t.endswith("/bridge")
                for b in [json.loads(p)] if "fcnt" in b}

    recorder.wait_for(lambda m: len(published(m)) >= counts["intact"]
                      and last_count(m, "bad_mic") >= counts["corrupted"]
                      and last_count(m, "replay") >= counts["duplicate"], timeout=120)
    assert gateway.stop() == 0, gateway.output()

    got = published(recorder.messages)
    sent = {(name, fcnt): readings for name, fcnt, readings, _, _ in sim.sent}
    assert set(got) == set(sent)
    for key, readings in sent.items():
        for channel, lpp_type, value in readings:
            assert got[key]["values"][f"{lpp_type}_{channel}"] == pytest.approx(value, abs=RESOLUTION[lpp_type] / 2 + 1e-9)
    assert last_count(recorder.messages, "bad_mic") == counts["corrupted"]
    assert last_count(recorder.messages, "replay") == counts["duplicate"]


@pytest.mark.slow
def test_a_thousand_node_farm_through_the_gateway(tmp_path: Path, broker, recorder_factory, gateways) -> None:
    # About 120 frames/s for 30 s against the real daemon: every intact frame is published once.
    devices = tmp_path / "devices.toml"
    recorder = recorder_factory(broker.port, ["lora-gateway/+"])
    sim = Simulation.from_scenario(load_scenario(bundled("farm.toml")), "rylr", devices, count=1000, speed=20.0,
                                   duration_s=600.0, wait_for_gateway=True, keep_sent=10**6)
    config = write_config(tmp_path / "config.toml", port=sim.port, dialect="rylr", mqtt_port=broker.port,
                          devices_file=devices, state_path=tmp_path / "state.db")
    gateway = gateways(config).start(EVERY_READING)

    def published(m: list) -> set[tuple[str, int]]:
        return {(b["device"], b["fcnt"]) for t, p, _ in m if t.count("/") == 1 and not t.endswith("/bridge")
                for b in [json.loads(p)] if "fcnt" in b}

    with sim:
        assert sim.finished.wait(120)
        sent = {(name, fcnt) for name, fcnt, *_ in sim.sent}
        assert len(sent) > 3000 and sim.engine.stats.collided > 0
        recorder.wait_for(lambda m: len(published(m)) >= len(sent), timeout=120)
    assert gateway.stop() == 0, gateway.output()
    assert published(recorder.messages) == sent


@pytest.mark.parametrize("dialect", ["rylr", "rak3172", "rn2483"])
def test_a_single_channel_module_hears_only_what_the_gateway_tuned_it_to(
    dialect: str, tmp_path: Path, broker, recorder_factory, gateways
) -> None:
    # The gateway's default set-up: 868.1 MHz, SF7. Nodes off that frequency or SF go unheard.
    node = {"period_s": 30, "jitter": 0, "distance_m": 300, "sensors": [{"kind": "temperature", "channel": 1}]}
    scenario = Scenario.model_validate({
        "radio": {"single_channel": True, "losses": False, "collisions": False, "duty_cycle": False},
        "nodes": [{**node, "name": "tuned", "channels_hz": [868_100_000]},
                  {**node, "name": "other-frequency", "channels_hz": [868_300_000]},
                  {**node, "name": "other-sf", "channels_hz": [868_100_000], "sf": 9}],
    })
    devices = tmp_path / "devices.toml"
    recorder = recorder_factory(broker.port, ["lora-gateway/+"])
    # Seed 2 starts the nodes 2.5, 9.2 and 4.8 s into their period: each sends 5 frames, none near
    # the end at 150 s. A random start could put the SF9 node's fifth frame, longer on air, past it.
    sim = Simulation.from_scenario(scenario, dialect, devices, speed=100.0, duration_s=150.0, wait_for_gateway=True,
                                   seed=2)
    config = write_config(tmp_path / "config.toml", port=sim.port, dialect=dialect, mqtt_port=broker.port,
                          devices_file=devices, state_path=tmp_path / "state.db")
    gateway = gateways(config).start()
    with sim:
        assert sim.finished.wait(120)
        assert sim.off_channel == 2 * sim.frames_sent >= 8
        recorder.wait_for(lambda m: sum(t == "lora-gateway/tuned" for t, _, _ in m) >= sim.frames_sent)
    assert gateway.stop() == 0, gateway.output()
    assert {t for t, _, _ in recorder.messages} == {"lora-gateway/tuned"}
