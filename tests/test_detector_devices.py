"""A device's channels together: a second anomaly during an alert, `detect --columns`, and the
cross-validation's replay of recorded likelihoods, which must be the detector's own alerts."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from bench.replay import alerts_off, record, replay
from gateway.commands import main
from gateway.commands.detect import Row
from gateway.detect.detector import Detector
from gateway.detect.settings import DetectorSettings
from gateway.records import Reading
from gateway.service.state import StateStore
from gateway.uplink.channel_limit import ChannelLimit, ChannelSets
from tests.test_detector import FAST, StubScorer, series, two_faults


def pump(n: int = 800, faults: tuple[tuple[str, int], ...] = (("current_1", 500), ("pressure_2", 515))) -> dict[str, np.ndarray]:
    x = {"current_1": series(n, seed=1), "pressure_2": 3 + series(n, seed=2) / 10}
    for name, at in faults:
        x[name][at : at + 30] += 8.0
    return x


def feed(det: Detector, x: dict[str, np.ndarray], start: int = 0, stop: int | None = None) -> list:
    stop = len(next(iter(x.values()))) if stop is None else stop
    return [det.observe([Reading("pump", {k: float(v[i]) for k, v in x.items()}, i, -50.0, 9.0, float(i))])[0]
            for i in range(start, stop)]


def test_a_second_anomaly_during_an_alert_is_a_new_alert_and_one_clear_ends_both() -> None:
    outs = feed(Detector(StubScorer(), DetectorSettings(**FAST)), pump())
    transitions = [o.transition for o in outs if o.transition]
    assert [t.state for t in transitions] == ["raised", "raised", "cleared"]
    first, second, cleared = transitions
    assert 500 <= first.time < 510 and 515 <= second.time < 525
    assert first.id != second.id == cleared.id == f"pump-{int(second.time * 1000)}"
    assert set(first.channels) == {"current_1"} and "pressure_2" in second.channels
    assert all(o.alert_state == "raised" for o in outs[int(first.time) : int(cleared.time)])


def test_one_anomaly_on_two_channels_at_once_is_one_alert() -> None:
    outs = feed(Detector(StubScorer(), DetectorSettings(**FAST)), pump(faults=(("current_1", 500), ("pressure_2", 500))))
    transitions = [o.transition for o in outs if o.transition]
    assert [t.state for t in transitions] == ["raised", "cleared"]
    assert set(transitions[0].channels) == {"current_1", "pressure_2"}


SLOW_TO_CLEAR = {**FAST, "min_duration": 3, "raise_threshold": 0.4, "clear_threshold": 0.2}


@pytest.mark.parametrize(("x", "settings"), [
    (pump(), FAST), (pump(), SLOW_TO_CLEAR),
    ({"temperature_1": two_faults()}, FAST),  # the second raise needs the first alert's muted scales
], ids=["pump", "pump, slow to clear", "two faults"])
def test_replay_of_recorded_likelihoods_gives_the_detectors_own_alerts(
    x: dict[str, np.ndarray], settings: dict[str, int | float]
) -> None:
    names = list(x)
    outs = feed(Detector(StubScorer(), DetectorSettings(**settings)), x)
    raises = [int(o.transition is not None and o.transition.state == "raised") for o in outs]
    rows = (Row(i, "", float(i), tuple(float(x[k][i]) for k in names)) for i in range(len(x[names[0]])))
    off = DetectorSettings(**alerts_off(settings))
    ev, up = replay(record(Detector(StubScorer(), off), rows, names, "pump"), DetectorSettings(**settings))
    assert ev.tolist() == raises and sum(raises) >= 2
    assert up.tolist() == [o.alert_state == "raised" for o in outs]


def write_skab_like(path: Path, x: dict[str, np.ndarray]) -> list[str]:
    n = len(next(iter(x.values())))
    stamps = [f"2020-03-09 10:{i // 60 % 60:02d}:{i % 60:02d}" for i in range(n)]
    with path.open("w", newline="") as f:
        w = csv.writer(f, delimiter=";")
        w.writerow(["datetime", *x, "anomaly"])
        for i in range(n):
            w.writerow([stamps[i], *(round(float(v[i]), 4) for v in x.values()), 0])
    return stamps


def test_detect_columns_runs_one_device_and_names_the_channels(tmp_path: Path) -> None:
    x = pump(700)
    src, out = tmp_path / "pump.csv", tmp_path / "out.csv"
    stamps = write_skab_like(src, x)
    config = tmp_path / "c.toml"
    config.write_text("[detector]\nwarmup = 200\nhistory = 200\n")
    args = ["detect", "--csv", str(src), "--sep", ";", "--time-column", "datetime", "--out", str(out), "--config", str(config)]
    assert main([*args, "--columns", "current_1,pressure_2"]) == 0
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["timestamp", "current_1", "pressure_2", "score", "alert", "channels"]
    assert [r["timestamp"] for r in rows] == stamps
    raised = [i for i, r in enumerate(rows) if r["alert"] == "1"]
    assert raised and 500 <= raised[0] < 510
    assert "current_1" in rows[raised[0]]["channels"].split(";") and rows[-1]["channels"] == ""
    assert float(rows[0]["current_1"]) == round(float(x["current_1"][0]), 4)

    # every numeric column but the time column: here also `anomaly`, a third channel
    assert main([*args, "--columns", "all"]) == 0
    with out.open(newline="") as f:
        assert next(csv.reader(f)) == ["timestamp", "current_1", "pressure_2", "anomaly", "score", "alert", "channels"]


def test_the_newest_alert_id_survives_a_restart(tmp_path: Path) -> None:
    from gateway.service.state import StateStore

    x = pump()
    store = StateStore(tmp_path / "state.db")
    det = Detector(StubScorer(), DetectorSettings(**FAST), store)
    before = feed(det, x, 0, 512)
    det.flush()  # the first alert written; the second must be written by the next flush
    before += feed(det, x, 512, 530)
    raises = [o.transition for o in before if o.transition]
    assert [t.state for t in raises] == ["raised", "raised"]
    det.flush()
    store.close()
    again = Detector(StubScorer(), DetectorSettings(**FAST), StateStore(tmp_path / "state.db"))
    after = feed(again, x, 530)
    (cleared,) = [o.transition for o in after if o.transition]
    assert cleared.state == "cleared" and cleared.id == raises[1].id != raises[0].id


def test_a_restart_keeps_the_channel_cap_shut_from_the_detector_s_saved_channels(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    det = Detector(StubScorer(), DetectorSettings(), store)
    det.observe([Reading("node", {f"analog_input_{c}": 1.0 for c in range(3)}, 1, -80.0, 7.0, 60.0)])
    det.flush()
    restarted = Detector(StubScorer(), DetectorSettings(), StateStore(tmp_path / "state.db"))
    assert {d: sorted(c) for d, c in restarted.known_channels().items()} == {
        "node": ["analog_input_0", "analog_input_1", "analog_input_2"]}
    limit = ChannelLimit(3, restarted.known_channels())
    kept, rejection = limit.apply(Reading("node", {"analog_input_0": 2.0, "analog_input_9": 2.0}, 2, -80.0, 7.0, 120.0))
    assert kept is not None and set(kept.values) == {"analog_input_0"}
    assert rejection is not None and rejection.reason == "too_many_channels"


def test_devices_with_the_same_channels_share_one_set_and_a_new_channel_gives_its_device_another() -> None:
    sets = ChannelSets()
    limit = ChannelLimit(3, {"a": ["temperature_1"]}, sets)
    for device in ("a", "b", "c"):
        limit.apply(Reading(device, {"temperature_1": 1.0, "relative_humidity_2": 50.0}, 1, -80.0, 7.0, 60.0))
    assert limit._known["a"] is limit._known["b"] is limit._known["c"]
    assert sets.get(["relative_humidity_2", "temperature_1"]) is limit._known["a"]
    limit.apply(Reading("b", {"temperature_1": 1.0, "voltage_3": 3.3}, 2, -80.0, 7.0, 120.0))
    assert limit._known["b"] == {"temperature_1", "relative_humidity_2", "voltage_3"}
    assert limit._known["a"] == limit._known["c"] == {"temperature_1", "relative_humidity_2"}
