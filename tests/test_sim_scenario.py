"""Scenario files: validation, the labels file against what was injected, and the CLI around them."""

from __future__ import annotations

import csv
import json
import random
import stat
import statistics
from pathlib import Path

import pytest

from firmware_sim import cli
from firmware_sim.engine import Engine
from firmware_sim.scenario import Scenario, build_nodes, bundled, load_scenario
from firmware_sim.simulation import Simulation
from gateway.config import ConfigError
from gateway.uplink.devices import load_devices
from gateway.uplink.lorawan import SessionKeys

ORIGIN = 1_780_000_000.0

# A quiet channel and no period jitter: a run with faults and one without sample the same moments
# with the same noise, so their difference is exactly the fault.
FAULTY = """
[simulation]
seed = 3
[radio]
duty_cycle = false
collisions = false
losses = false
shadowing_db = 0
fading_db = 0

[[nodes]]
name = "pump"
period_s = 30
jitter = 0
channels_hz = [868100000]
sensors = [
  { kind = "current", channel = 1 },
  { kind = "vibration", channel = 2 },
  { kind = "temperature", channel = 3 },
  { kind = "humidity", channel = 4 },
  { kind = "battery", channel = 5 },
]
faults = [
  { kind = "spike", channel = 2, start_s = 600, duration_s = 45, magnitude = 9.0 },
  { kind = "stuck", channel = 1, start_s = 1200, end_s = 2400 },
  { kind = "drift", channel = 3, start_s = 3000, duration_s = 1800, magnitude = 6.0 },
  { kind = "level_shift", channel = 4, start_s = 5000, duration_s = 900, magnitude = -20.0 },
  { kind = "noise", channel = 3, start_s = 6000, duration_s = 1500, magnitude = 2.0 },
]

[[nodes]]
name = "tank"
period_s = 60
jitter = 0
channels_hz = [868300000]
sensors = [{ kind = "temperature", channel = 1 }, { kind = "battery", channel = 2 }]
faults = [{ kind = "dropout", start_s = 1800, duration_s = 1200 }]
"""


def scenario_of(text: str, path: Path) -> Scenario:
    path.write_text(text)
    return load_scenario(path)


def keys_for(scenario: Scenario) -> dict[str, SessionKeys]:
    return {n.name: SessionKeys(n.name, 0x26000000 + i, bytes([i + 1]) * 16, bytes([i + 2]) * 16)
            for i, n in enumerate(scenario.nodes)}


def run_engine(scenario: Scenario, until: float) -> tuple[Engine, dict[tuple[str, int], dict[str, float]], list]:
    rng = random.Random(scenario.simulation.seed)
    nodes, labels = build_nodes(scenario.nodes, keys_for(scenario), rng, ORIGIN)
    engine = Engine(nodes, scenario.radio, rng=rng, origin=ORIGIN, keep_log=True)
    values = {(d.node, d.fcnt): {f"{t}_{c}": v for c, t, v in d.readings} for d in engine.run(until)}
    return engine, values, labels


def test_labels_name_node_channel_fault_and_window(tmp_path: Path) -> None:
    scenario = scenario_of(FAULTY, tmp_path / "s.toml")
    _, _, labels = run_engine(scenario, 0)
    assert [(lb.node, lb.channel, lb.fault, lb.start_s, lb.end_s) for lb in labels] == [
        ("pump", "analog_input_2", "spike", 600, 645),
        ("pump", "current_1", "stuck", 1200, 2400),
        ("pump", "temperature_3", "drift", 3000, 4800),
        ("pump", "relative_humidity_4", "level_shift", 5000, 5900),
        ("pump", "temperature_3", "noise", 6000, 7500),
        ("tank", "temperature_1", "dropout", 1800, 3000),
        ("tank", "voltage_2", "dropout", 1800, 3000),
    ]


def test_injected_values_show_each_fault_and_nothing_else(tmp_path: Path) -> None:
    faulty = scenario_of(FAULTY, tmp_path / "faulty.toml")
    clean = faulty.model_copy(update={"nodes": [n.model_copy(update={"faults": []}) for n in faulty.nodes]})
    horizon = 9000.0
    engine, got, labels = run_engine(faulty, horizon)
    _, want, _ = run_engine(clean, horizon)
    assert engine.log is not None
    t_of = {(tx.node, tx.fcnt): tx.start for tx in engine.log}

    def window(node: str, channel: str, fault: str) -> tuple[float, float]:
        (lb,) = [lb for lb in labels if (lb.node, lb.channel, lb.fault) == (node, channel, fault)]
        return lb.start_s, lb.end_s

    def diffs(node: str, channel: str, fault: str) -> list[tuple[float, float, float]]:
        start, end = window(node, channel, fault)
        return [(t_of[k] - start, got[k][channel], want[k][channel])
                for k in got if k[0] == node and start <= t_of[k] < end]

    labelled = {(lb.node, lb.channel, lb.start_s, lb.end_s) for lb in labels}
    for key, values in got.items():  # outside every window the values are the clean ones
        for channel, value in values.items():
            if not any(n == key[0] and c == channel and s <= t_of[key] < e for n, c, s, e in labelled):
                assert value == want[key][channel], (key, channel)

    spike = diffs("pump", "analog_input_2", "spike")
    assert len(spike) >= 1 and all(g - w == pytest.approx(9.0) for _, g, w in spike)
    stuck = diffs("pump", "current_1", "stuck")
    assert len(stuck) >= 30 and len({g for _, g, _ in stuck}) == 1 and len({w for _, _, w in stuck}) > 1
    drift = diffs("pump", "temperature_3", "drift")
    assert [g - w for _, g, w in drift] == pytest.approx([6.0 * dt / 1800 for dt, _, _ in drift])
    assert drift[-1][1] - drift[-1][2] > 5.5
    shift = diffs("pump", "relative_humidity_4", "level_shift")
    assert all(g - w == pytest.approx(-20.0) or g == 0.0 for _, g, w in shift)
    noise = diffs("pump", "temperature_3", "noise")
    assert statistics.stdev(g - w for _, g, w in noise) == pytest.approx(2.0, rel=0.35)

    # Dropout: the tank sends nothing in its window (its counter still runs, as a real node's does)
    # and resumes after.
    start, end = window("tank", "temperature_1", "dropout")
    tank = sorted(t_of[k] for k in got if k[0] == "tank")
    assert not [t for t in tank if start <= t < end]
    assert any(t < start for t in tank) and any(t >= end for t in tank)
    assert engine.stats.silent == 20


@pytest.mark.parametrize("labels_name", ["labels.csv", "labels.json"])
def test_a_run_writes_its_labels_with_simulated_and_wall_times(tmp_path: Path, labels_name: str) -> None:
    scenario = scenario_of(FAULTY, tmp_path / "s.toml")
    devices = tmp_path / "devices.toml"
    sim = Simulation.from_scenario(scenario, "rylr", devices, speed=float("inf"), duration_s=4000.0)
    with sim:
        assert sim.finished.wait(120)
    sim.write_labels(tmp_path / labels_name)
    if labels_name.endswith(".csv"):
        with (tmp_path / labels_name).open() as f:
            rows = list(csv.DictReader(f))
    else:
        rows = json.loads((tmp_path / labels_name).read_text())
    assert [(r["node"], r["channel"], r["fault"], float(r["start_s"]), float(r["end_s"])) for r in rows] == [
        (lb.node, lb.channel, lb.fault, lb.start_s, lb.end_s) for lb in sim.labels
    ]
    for r in rows:  # reached within the 4000 s run: a wall time; beyond it: empty
        assert bool(r["start_wall"]) == (float(r["start_s"]) <= 4000)
        assert bool(r["end_wall"]) == (float(r["end_s"]) <= 4000)
        if r["end_wall"]:
            assert r["start_wall"] <= r["end_wall"] and r["end_wall"].endswith("Z")
    assert set(load_devices(devices)) == {"pump", "tank"}
    assert stat.S_IMODE(devices.stat().st_mode) == 0o600


def test_paced_wall_times_follow_the_speed(tmp_path: Path) -> None:
    scenario = scenario_of(FAULTY, tmp_path / "s.toml")
    sim = Simulation.from_scenario(scenario, "rylr", tmp_path / "devices.toml", speed=20_000.0, duration_s=2500.0)
    with sim:
        assert sim.finished.wait(120)
    rows = {(r["channel"], r["fault"]): r for r in sim.label_rows()}
    start, end = rows[("current_1", "stuck")]["start_wall"], rows[("current_1", "stuck")]["end_wall"]
    assert start is not None and end is not None
    assert end - start == pytest.approx((2400 - 1200) / 20_000)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("sf = 7", "sf = 13"), "nodes.0.sf: Input should be less than or equal to 12"),
        (('kind = "current", channel = 1', 'kind = "pressure", channel = 1'), "nodes.0.sensors.0: Input tag 'pressure'"),
        (("channel = 2, start_s = 600", "channel = 9, start_s = 600"), "nodes.0.faults.0.channel: channel 9 has no sensor"),
        (('{ kind = "dropout", start_s', '{ kind = "dropout", channel = 1, start_s'), "nodes.1.faults.0.channel: dropout takes no channel"),
        (("end_s = 2400", "end_s = 1000"), "nodes.0.faults.1.end_s: 1000.0 is not after start_s 1200.0"),
        (("channels_hz = [868300000]", "channels_hz = [915000000]"), "nodes.1.channels_hz: 915000000 Hz is in no EU868 sub-band"),
        (("seed = 3", "seed = 3\nspeed = 2"), "simulation.speed: Extra inputs are not permitted"),
    ],
)
def test_scenario_errors_name_the_file_and_the_key(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    text = FAULTY.replace("period_s = 30", "period_s = 30\nsf = 7", 1)
    assert change[0] in text
    path = tmp_path / "bad.toml"
    with pytest.raises(ConfigError) as err:
        scenario_of(text.replace(change[0], change[1], 1), path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_bundled_farm_scenario_is_valid_and_every_fault_is_labelled() -> None:
    farm = load_scenario(bundled("farm.toml"))
    _, _, labels = run_engine(farm, 0)
    assert {lb.fault for lb in labels} == {"spike", "drift", "stuck", "level_shift", "noise", "dropout"}
    assert sum(len(n.faults) for n in farm.nodes) <= len(labels)
    padded = farm.fleet(10)
    assert len(padded) == 10 and len({n.name for n in padded}) == 10 and not padded[-1].faults


def test_cli_run_scenario_creates_devices_and_writes_labels(tmp_path: Path, capsys) -> None:
    devices, labels = tmp_path / "devices.toml", tmp_path / "labels.csv"
    code = cli.main(["run", "--scenario", "farm.toml", "--devices", str(devices), "--link", "", "--speed", "max",
                     "--duration", "7200", "--nodes", "6", "--labels", str(labels)])
    assert code == 0
    assert len(load_devices(devices)) == 6 and stat.S_IMODE(devices.stat().st_mode) == 0o600
    with labels.open() as f:
        rows = list(csv.DictReader(f))
    assert ("pump-house", "current_1", "stuck") in {(r["node"], r["channel"], r["fault"]) for r in rows}
    err = capsys.readouterr().err
    assert "label(s) written" in err and "delivered" in err
    # The nodes' counters persist, so a second run is not a replay of the first.
    counters = json.loads(cli.counters_file(devices).read_text())
    assert counters["pump-house"] > 100


def test_cli_without_a_command_runs_the_devices_file_nodes(tmp_path: Path, capsys) -> None:
    devices = tmp_path / "devices.toml"
    assert cli.main(["--devices", str(devices), "--link", "", "--speed", "max", "--duration", "60"]) == 0
    assert sorted(load_devices(devices)) == ["node-1", "node-2", "node-3"]
    out = capsys.readouterr()
    assert "rylr module on /dev/pts/" in out.out and "3 node(s)" in out.out
    assert "37 sampled" in out.err  # 3 staggered nodes every 5 s over [0, 60]: 13 + 12 + 12


def test_cli_reports_a_bad_scenario_without_a_traceback(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[[nodes]]\nname = 'x'\n")
    assert cli.main(["run", "--scenario", str(bad), "--devices", str(tmp_path / "d.toml"), "--link", ""]) == 2
    assert f"lora-sim: {bad}: nodes.0.sensors: Field required" in capsys.readouterr().err
