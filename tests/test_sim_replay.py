"""`lora-sim replay` and `lora-gateway run` as real processes: a recorded CSV arrives value for value."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from firmware_sim.replay import read_series
from gateway.config import ConfigError

from .conftest import EVERY_READING, write_config

NAB_FILE = Path("/work/shared/data/nab/data/realKnownCause/machine_temperature_system_failure.csv")
RESOLUTION = {"temperature": 0.1, "analog_input": 0.01}


def nab_layout_csv(path: Path, rows: int) -> list[float]:
    """A series in NAB's layout with awkward values: negatives, rounding edges, long decimals."""
    values = [round(25 * math.sin(i / 7) + (i % 5) * 0.05 - 3.3333333, 7) for i in range(rows)]
    values[:4] = [0.0, -0.05, 20.05, -273.15]
    start = datetime(2024, 3, 1, tzinfo=UTC).timestamp()
    lines = ["timestamp,value"] + [
        f"{datetime.fromtimestamp(start + 300 * i, UTC):%Y-%m-%d %H:%M:%S},{v}" for i, v in enumerate(values)
    ]
    path.write_text("\n".join(lines) + "\n")
    return values


def replay(tmp_path: Path, csv_path: Path, devices: Path, link: Path, dialect: str, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "firmware_sim.cli", "replay", "--csv", str(csv_path), "--device", "pump-house",
         "--devices", str(devices), "--link", str(link), "--dialect", dialect, *extra],
        stdout=subprocess.PIPE, stderr=(tmp_path / "sim.log").open("w"), text=True,
    )
    assert proc.stdout is not None
    assert "replaying" in proc.stdout.readline()  # the pty and its link exist from here on
    return proc


def received(messages: list, device: str, channel: str) -> dict[int, float]:
    out = {}
    for topic, payload, _ in messages:
        if topic == f"lora-gateway/{device}":
            body = json.loads(payload)
            out[body["fcnt"]] = body["values"][channel]
    return out


def check_arrival(tmp_path: Path, broker, recorder_factory, gateways, devices_file: Path, csv_path: Path,
                  values: list[float], dialect: str, lpp_type: str, *extra: str) -> None:
    link = tmp_path / "ttyLoRa"
    recorder = recorder_factory(broker.port, ["lora-gateway/#"])
    sim = replay(tmp_path, csv_path, devices_file, link, dialect, "--type", lpp_type, *extra)
    config = write_config(tmp_path / "config.toml", port=str(link), dialect=dialect, mqtt_port=broker.port,
                          devices_file=devices_file, state_path=tmp_path / "state.db")
    gateway = gateways(config).start(EVERY_READING)
    channel = f"{lpp_type}_1"
    recorder.wait_for(lambda m: len(received(m, "pump-house", channel)) >= len(values), timeout=120)
    assert sim.wait(timeout=120) == 0, (tmp_path / "sim.log").read_text()
    assert gateway.stop() == 0, gateway.output()

    got = received(recorder.messages, "pump-house", channel)
    assert sorted(got) == list(range(len(values)))  # every row, once, in counter order
    for i, value in enumerate(values):
        assert abs(got[i] - value) <= RESOLUTION[lpp_type] / 2 + 1e-9, (i, got[i], value)
    assert "bad_mic" not in json.dumps(recorder.payloads("lora-gateway/bridge/event"))


@pytest.mark.parametrize("dialect", ["rylr", "rn2483"])
def test_replayed_csv_arrives_at_the_gateway_value_for_value(
    dialect: str, tmp_path: Path, broker, recorder_factory, gateways, devices_file
) -> None:
    # RN2483 re-arms after every packet: the replay holds a packet until the module hears it.
    csv_path = tmp_path / "series.csv"
    values = nab_layout_csv(csv_path, 150)
    check_arrival(tmp_path, broker, recorder_factory, gateways, devices_file, csv_path, values, dialect,
                  "temperature", "--speed", "30000")


def test_replayed_nab_file_at_a_fixed_rate(tmp_path: Path, broker, recorder_factory, gateways, devices_file) -> None:
    if not NAB_FILE.exists():
        pytest.skip(f"{NAB_FILE} not present (the NAB corpus is not part of the repository)")
    csv_path = tmp_path / NAB_FILE.name  # the first rows, in a scratch copy
    csv_path.write_text("".join(NAB_FILE.read_text().splitlines(keepends=True)[:201]))
    values = read_series(csv_path, "value", "timestamp").values
    check_arrival(tmp_path, broker, recorder_factory, gateways, devices_file, csv_path, values, "rak3172",
                  "analog_input", "--rate", "150")


def test_replay_uses_the_csv_timestamps_scaled_by_speed(tmp_path: Path) -> None:
    csv_path = tmp_path / "series.csv"
    nab_layout_csv(csv_path, 5)
    series = read_series(csv_path, "value", "timestamp")
    assert series.offsets == [0, 300, 600, 900, 1200]
    assert series.origin == datetime(2024, 3, 1, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ("timestamp,value\n2024-01-01 00:00:00,1\n", ["--column", "v"], "no column 'v' (columns: timestamp, value)"),
        ("timestamp,value\n2024-01-01 00:00:00,x\n", [], "row 2: value: not a number ('x')"),
        ("timestamp,value\n2024-01-01 00:00:00,5000\n", [], "row 2: value: temperature: value 5000.0 outside"),
    ],
)
def test_replay_refuses_a_bad_csv_naming_file_row_and_column(
    tmp_path: Path, content: str, args: list[str], message: str
) -> None:
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text(content)
    result = subprocess.run(
        [sys.executable, "-m", "firmware_sim.cli", "replay", "--csv", str(csv_path), "--device", "x",
         "--devices", str(tmp_path / "d.toml"), "--link", "", *args],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 2
    assert f"lora-sim: {csv_path}: {message}" in result.stderr


def test_read_series_without_times(tmp_path: Path) -> None:
    csv_path = tmp_path / "plain.csv"
    csv_path.write_text("value\n1.5\n2.5\n")
    series = read_series(csv_path, "value", None)
    assert series.origin is None and series.values == [1.5, 2.5]
    with pytest.raises(ConfigError, match="no rows"):
        (tmp_path / "empty.csv").write_text("value\n")
        read_series(tmp_path / "empty.csv", "value", None)


def test_a_clock_that_steps_back_is_replayed_in_the_files_order(tmp_path: Path) -> None:
    """NAB's machine_temperature file steps back an hour at row 10151 (a clock change), as the README's
    example meets it: a warning naming the row, and every row kept, in order, an hour later from there."""
    if not NAB_FILE.exists():
        pytest.skip(f"{NAB_FILE} not present (the NAB corpus is not part of the repository)")
    series = read_series(NAB_FILE, "value", "timestamp")
    assert len(series.values) == len(NAB_FILE.read_text().splitlines()) - 1
    assert all(b > a for a, b in zip(series.offsets, series.offsets[1:]))
    assert series.offsets[10149] - series.offsets[10148] == 300  # rows 10151 and 10150, spaced as usual
    assert len(series.warnings) == 1
    assert "row 10151: timestamp 2014-01-07 02:00:00 is 3300 s before the row before" in series.warnings[0]


def test_replayed_csv_with_a_step_back_arrives_in_order(
    tmp_path: Path, broker, recorder_factory, gateways, devices_file
) -> None:
    csv_path = tmp_path / "series.csv"
    values = nab_layout_csv(csv_path, 60)
    lines = csv_path.read_text().splitlines()
    stamps = [line.split(",")[0] for line in lines[1:]]
    # From row 32 on, the clock reads an hour earlier, as at the end of summer time.
    shifted = [datetime.fromisoformat(t).replace(tzinfo=UTC).timestamp() - (3600 if i >= 30 else 0)
               for i, t in enumerate(stamps)]
    csv_path.write_text("timestamp,value\n" + "".join(
        f"{datetime.fromtimestamp(t, UTC):%Y-%m-%d %H:%M:%S},{v}\n" for t, v in zip(shifted, values, strict=True)))
    check_arrival(tmp_path, broker, recorder_factory, gateways, devices_file, csv_path, values, "rylr",
                  "temperature", "--speed", "30000")
    assert "row 32: timestamp" in (tmp_path / "sim.log").read_text()
