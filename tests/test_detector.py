"""Detector logic with a small numpy scorer: buffers, normalization, batching, likelihood,
alert state machine, settings, persistence. The real model is in test_detector_model.py."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from gateway.detect.alerts import AlertTransition, alert_step
from gateway.detect.channel import STUCK, Channel
from gateway.detect.detector import Detector
from gateway.detect.likelihood import _MIN_SCORES
from gateway.detect.scoring import Normalization
from gateway.detect.settings import DetectorSettings
from gateway.detect.windows import Scale
from gateway.records import Reading
from gateway.service.state import StateStore


class StubScorer:
    """Squared deviation of the last values from the window's start: a spike scores high."""

    def __init__(self, window: int = 16, history: int = 32, version: str = "1") -> None:
        self.window = window
        self.name = "stub"
        self.version = version
        self.normalization = Normalization(history=history)
        self.calls: list[np.ndarray] = []

    def score(self, windows: np.ndarray) -> np.ndarray:
        self.calls.append(windows.copy())
        w = windows.astype(np.float64)
        return ((w[:, -4:] - w[:, :-4].mean(axis=1, keepdims=True)) ** 2).mean(axis=1).astype(np.float32)


def reading(value: float | dict[str, float], t: float, device: str = "d1") -> Reading:
    values = value if isinstance(value, dict) else {"temperature_1": value}
    return Reading(device=device, values=values, fcnt=int(t), rssi=-50.0, snr=9.0, time=t)


def series(n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 20 + np.sin(np.arange(n) / 20) + rng.normal(0, 0.2, n)


def run(det: Detector, values: np.ndarray, start: int = 0, device: str = "d1") -> list:
    return [det.observe([reading(float(v), float(start + i), device)])[0] for i, v in enumerate(values)]


FAST = {"warmup": 200, "history": 200}


# -- buffers and normalization ------------------------------------------------------------------

def test_ring_buffer_keeps_the_last_values_in_order() -> None:
    sc = Scale(1, window=4, history=6)
    for x in range(25):
        assert sc.add(float(x))
    assert sc.last_values(10).tolist() == [float(x) for x in range(15, 25)]
    for x in range(25, 200):  # far past the buffer's slack, which moves the values to its front
        sc.add(float(x))
        assert sc.window().tolist() == [float(v) for v in range(x - 9, x + 1)]
    sc.add(200.0)
    assert sc.last_values(10).tolist() == [float(x) for x in range(191, 201)]
    assert sc.last_values(3).tolist() == [198.0, 199.0, 200.0]
    sc = Scale(1, window=4, history=6)
    for x in range(25):
        sc.add(float(x))
    assert sc.last_values(3).tolist() == [22.0, 23.0, 24.0]
    assert sc.seen == 25
    coarse = Scale(3, window=4, history=6)  # block means of 3 readings
    assert [coarse.add(float(x)) for x in range(7)] == [False, False, True, False, False, True, False]
    assert coarse.last_values(2).tolist() == [1.0, 4.0]


def test_scales_share_their_empty_arrays_until_their_first_value_and_their_first_score() -> None:
    cfg = DetectorSettings().resolve("d", "c")
    a, b = Scale(4, window=4, history=6), Scale(4, window=4, history=6)
    assert a.buf is b.buf and a.recent is b.recent  # a device's coarse scales cost no arrays at first
    for x in range(4):
        a.add(float(x))
    assert a.buf is not b.buf and len(b.buf) == 0 and a.last_values(1).tolist() == [1.5]
    a.update_likelihood(1.0, cfg)
    assert a.recent is not b.recent and len(b.recent) == 0 and len(a.recent) == cfg.average


def test_a_scale_holds_memory_for_the_values_it_has_not_for_its_whole_length() -> None:
    sc = Scale(1, window=16, history=128)
    assert len(sc.buf) == 0  # a channel heard once costs its coarse scales nothing yet
    for x in range(3):
        sc.add(float(x))
    assert len(sc.buf) == 16  # a device heard 3 times: 16 values, not 144 + slack
    for x in range(3, 1000):
        sc.add(float(x))
        assert sc.window().tolist() == [float(v) for v in range(max(0, x - 143), x + 1)]
    assert len(sc.buf) == 144 + 32  # full: the length and the slack that the moves need


def test_scorer_sees_windows_normalized_as_the_manifest_says() -> None:
    scorer = StubScorer(window=16, history=32)
    det = Detector(scorer, DetectorSettings(scales=[1]))
    x = series(100)
    run(det, x)
    # The first window is scored once a quarter of the history (8 values) precedes it.
    assert len(scorer.calls) == 100 - (16 + 8) + 1
    kept = x.astype(np.float32)  # the values as a scale keeps them
    first = scorer.calls[0][0]
    np.testing.assert_allclose(first, scorer.normalization.apply(kept[:8], kept[8:24]), rtol=1e-6)
    last = scorer.calls[-1][0]
    np.testing.assert_allclose(last, scorer.normalization.apply(kept[100 - 48 : 100 - 16], kept[-16:]), rtol=1e-6)


def test_window_multiple_of_the_models_averages_groups() -> None:
    scorer = StubScorer(window=16, history=32)
    det = Detector(scorer, DetectorSettings(window=32, scales=[1]))
    x = series(200)
    run(det, x)
    g = x[-96:].reshape(48, 2).mean(axis=1).astype(np.float32)  # block means, kept as float32
    np.testing.assert_allclose(scorer.calls[-1][0], scorer.normalization.apply(g[:32], g[32:]), rtol=1e-5)
    assert len(scorer.calls) == 100 - (16 + 8) + 1  # one window per block of 2 readings
    with pytest.raises(ValueError, match="multiple"):
        Detector(StubScorer(window=16), DetectorSettings(window=20)).observe([reading(1.0, 0.0)])


def test_coarse_scale_scores_block_means_every_k_readings() -> None:
    scorer = StubScorer(window=16, history=32)
    det = Detector(scorer, DetectorSettings(scales=[1, 4]))
    x = series(400)
    run(det, x)
    g = x.reshape(100, 4).mean(axis=1).astype(np.float32)
    assert scorer.calls[-1].shape == (2, 16)  # reading 400 completes a block: both scales, one call
    np.testing.assert_allclose(scorer.calls[-1][1], scorer.normalization.apply(g[-48:-16], g[-16:]), rtol=1e-5)
    assert sum(len(c) for c in scorer.calls) == (400 - 23) + (100 - 23)


def test_all_ready_windows_go_to_the_model_in_one_call() -> None:
    scorer = StubScorer()
    det = Detector(scorer, DetectorSettings(scales=[1]))
    x = series(60)
    for i in range(59):
        det.observe([reading({"a": x[i], "b": -x[i]}, i, "d1"), reading({"a": 2 * x[i]}, i, "d2")])
    scorer.calls.clear()
    det.observe([reading({"a": 1.0, "b": 2.0}, 60, "d1"), reading({"a": 3.0}, 60, "d2"), reading({"a": 4.0}, 61, "d1")])
    assert len(scorer.calls) == 1 and scorer.calls[0].shape == (4, 16)


def test_a_batch_gives_what_one_reading_at_a_time_gives() -> None:
    x = spike_series(700, at=201)  # the fault right after the warm-up, inside one batch
    one = Detector(StubScorer(), DetectorSettings(**FAST))
    many = Detector(StubScorer(), DetectorSettings(**FAST))
    a = run(one, x)
    b = many.observe([reading(float(v), float(i)) for i, v in enumerate(x)])
    assert [(o.scores, o.likelihood, o.alert_state, o.transition) for o in a] == [
        (o.scores, o.likelihood, o.alert_state, o.transition) for o in b
    ]
    assert any(o.transition for o in a)


def test_absurd_readings_do_not_poison_the_statistics() -> None:
    det = Detector(StubScorer(), DetectorSettings(**FAST))
    x = series(800)
    x[400:420] = [1e300, -1e300] * 10
    outs = run(det, x)
    first = 400 + DetectorSettings().min_duration - 1  # raised once they held min_duration readings
    assert outs[first].score == 1.0 and outs[first].alert_state == "raised"
    assert all(math.isfinite(o.score) for o in outs)
    assert outs[-1].alert_state == "ok" and 0 <= outs[-1].score < 0.5  # and it recovers


def test_a_value_beyond_float32_is_kept_at_its_edge_not_as_inf() -> None:
    sc = Scale(1, window=4, history=6)
    for x in (1e300, -1e300, 21.5):
        sc.add(x)
    edge = float(np.finfo(np.float32).max)
    assert sc.last_values(3).tolist() == [edge, -edge, 21.5]


def test_ignored_and_non_finite_values_are_not_scored() -> None:
    scorer = StubScorer()
    det = Detector(scorer, DetectorSettings(ignore=["battery_*"]))
    for i in range(40):
        out = det.observe([reading({"t": float(i % 3), "battery_2": 3.3, "h": math.nan}, i)])[0]
    assert set(out.scores) == {"t"}


# -- likelihood ---------------------------------------------------------------------------------

def likelihoods(scores: list[float], average: int = 1, low: bool = False) -> list[float | None]:
    sc = Scale(1, window=4, history=4)
    cfg = DetectorSettings(average=average, low_scores=low).resolve("d", "c")
    return [sc.update_likelihood(s, cfg) for s in scores]


def test_likelihood_is_none_until_enough_scores_then_low_for_usual_scores() -> None:
    rng = np.random.default_rng(3)
    out = likelihoods(list(rng.lognormal(0, 0.5, 500)))
    assert out[0] is None and out[_MIN_SCORES - 1] is None and out[_MIN_SCORES] is not None
    assert max(v for v in out if v is not None) < 0.5


def test_likelihood_is_high_for_a_score_far_above_the_channels_own() -> None:
    rng = np.random.default_rng(3)
    usual = list(rng.lognormal(0, 0.3, 500))
    assert likelihoods(usual + [100.0])[-1] > 0.99  # 15 sigma above: a tail far below 1e-10
    assert likelihoods(usual + [1e6])[-1] > likelihoods(usual + [1e3])[-1]  # no saturation
    # A score that is high for a quiet channel is ordinary for a noisy one: scale-free.
    noisy = list(rng.lognormal(0, 2.0, 500))
    assert likelihoods(noisy + [10.0])[-1] < 0.3


def test_low_scores_count_only_when_asked() -> None:
    usual = [1.0 + 0.1 * math.sin(i) for i in range(500)]
    assert likelihoods(usual + [0.01])[-1] < 0.01
    assert likelihoods(usual + [0.01], low=True)[-1] > 0.9


def test_averaging_needs_more_than_one_high_score() -> None:
    usual = [1.0 + 0.1 * math.sin(i) for i in range(500)]
    single = likelihoods(usual + [4.0], average=4)[-1]
    sustained = likelihoods(usual + [4.0] * 4, average=4)[-1]
    assert single is not None and sustained is not None and sustained > single


# -- rules: out of range, stuck ----------------------------------------------------------------

def channel(**settings: object) -> Channel:
    return Channel(DetectorSettings.model_validate(settings).resolve("d", "c"), base=1, window=4, history=8)


def learned(ch: Channel, values: np.ndarray) -> Channel:
    """The channel after its first readings (the detector ignores the rules while they set the range)."""
    for v in values:
        ch.rules(float(v), hold=1)
    return ch


def test_a_reading_beyond_the_range_stays_anomalous_for_a_window() -> None:
    rng = np.random.default_rng(1)
    ch = learned(channel(range_tolerance=0.1), rng.uniform(0, 1, 100))
    assert not any(ch.rules(float(v), hold=4) for v in rng.uniform(0, 1, 200))
    assert [ch.rules(v, hold=4) for v in (1.05, 1.2, 0.5, 0.5, 0.5, 0.5, 0.5)] == [False, True, True, True, True, False, False]
    off = channel(range_tolerance=0)
    assert not any(off.rules(v, hold=4) for v in [*rng.uniform(0, 1, 200), 5.0])


def test_a_drift_is_measured_against_where_the_channel_was() -> None:
    rng = np.random.default_rng(2)
    ch = learned(channel(range_tolerance=0.1), rng.uniform(0, 1, 100))
    assert not any(ch.rules(float(v), hold=1) for v in rng.uniform(0, 1, 200))
    # +0.05 a reading: each new high is only just above the last one, but 4 readings (the
    # window) back the range ended lower.
    flags = [ch.rules(1.0 + 0.05 * i, hold=1) for i in range(1, 20)]
    assert any(flags[:4]) and all(flags[4:])


def test_a_channel_heard_a_few_times_holds_only_those_readings_for_its_range() -> None:
    ch = channel(range_tolerance=0.1)  # the range lags by 4 readings
    for x in (1.0, 2.0, 3.0):
        ch.rules(x, hold=1)
    assert ch.lag.tolist() == [1.0, 2.0, 3.0] and (ch.lo, ch.hi) == (math.inf, -math.inf)
    for x in (4.0, 5.0, 6.0):
        ch.rules(x, hold=1)
    assert sorted(ch.lag) == [3.0, 4.0, 5.0, 6.0] and (ch.lo, ch.hi) == (1.0, 2.0)


def test_a_run_of_identical_readings_longer_than_usual_is_stuck() -> None:
    ch = channel(range_tolerance=0)
    rng = np.random.default_rng(3)
    assert not any(ch.rules(float(v), hold=1) for v in np.round(rng.normal(0, 1, 200), 1))  # runs of 1-2
    flags = [ch.rules(0.5, hold=1) for _ in range(12)]
    assert flags.index(STUCK) == 7 and all(flags[7:])  # 8 identical readings
    assert not channel(stuck_runs=False).rules(0.5, hold=1)
    flat = channel(range_tolerance=0)
    assert not any(flat.rules(45.0, hold=1) for _ in range(500))  # a flat-lining channel from the start


def test_a_stuck_run_is_not_learned_by_the_time_scales() -> None:
    det = Detector(StubScorer(), DetectorSettings(**FAST))
    x = np.round(series(600), 1)
    x[400:500] = x[400]
    run(det, x[:500])
    ch = det._devices["d1"].channels["temperature_1"]
    # The channel's runs were at most 4 long, so the rules flag the run from its ninth identical
    # reading on: the scales took the readings up to then, and none after.
    assert ch.longest == 4 and ch.seen == 500 and ch.scales[0].seen == 408
    tail = ch.scales[0].last_values(9)
    assert tail[0] == np.float32(x[399]) and (tail[1:] == np.float32(x[400])).all()
    run(det, x[500:], start=500)
    assert ch.scales[0].seen == 508


# -- alert state machine ------------------------------------------------------------------------

def test_alert_step_hysteresis_min_duration_warmup() -> None:
    cfg = DetectorSettings(raise_threshold=0.6, clear_threshold=0.3, min_duration=2, warmup=10).resolve("d", "c")
    assert alert_step(False, 0, 0.9, 5, cfg) == (False, 0)  # warm-up
    assert alert_step(False, 0, 0.9, 10, cfg) == (False, 1)  # first reading over
    assert alert_step(False, 1, 0.5, 11, cfg) == (False, 0)  # run broken
    assert alert_step(False, 1, 0.6, 11, cfg) == (True, 2)  # second in a row: raised
    assert alert_step(True, 2, 0.4, 12, cfg) == (True, 2)  # between thresholds: stays
    assert alert_step(True, 2, 0.29, 13, cfg) == (False, 0)  # below clear: cleared


def test_settings_overrides_and_errors() -> None:
    s = DetectorSettings.model_validate({
        "warmup": 50,
        "channels": {"current_1": {"raise_threshold": 0.8}, "pump/current_1": {"min_duration": 3}},
        "devices": {"pump": {"raise_threshold": 0.7, "warmup": 10}},
    })
    assert s.resolve("other", "current_1").raise_threshold == 0.8
    assert s.resolve("pump", "current_1").raise_threshold == 0.7  # device beats channel name
    assert s.resolve("pump", "current_1").min_duration == 3  # device/channel beats both
    assert s.resolve("pump", "temperature_1").warmup == 10
    det = Detector(StubScorer(), s)
    det.observe([reading({"current_1": 1.0, "temperature_1": 2.0, "voltage_2": 3.0}, 0.0, device)
                 for device in ("a", "b", "pump")])
    a, b, pump = (det._devices[d].channels for d in ("a", "b", "pump"))
    # Channels under the same overrides share one settings object, and get what resolve() gives.
    assert a["temperature_1"].cfg is a["voltage_2"].cfg is b["temperature_1"].cfg
    assert a["current_1"].cfg is b["current_1"].cfg is not a["temperature_1"].cfg
    assert pump["temperature_1"].cfg is pump["voltage_2"].cfg is not pump["current_1"].cfg
    for device, channels in (("a", a), ("pump", pump)):
        for name, ch in channels.items():
            assert ch.cfg == s.resolve(device, name)
    with pytest.raises(ValidationError, match="clear_threshold"):
        DetectorSettings(raise_threshold=0.3, clear_threshold=0.4)
    with pytest.raises(ValidationError, match="devices.pump"):
        DetectorSettings.model_validate({"devices": {"pump": {"clear_threshold": 0.9}}})
    with pytest.raises(ValidationError, match="warmpu"):
        DetectorSettings.model_validate({"channels": {"x": {"warmpu": 3}}})


def spike_series(n: int = 700, at: int = 500, length: int = 30) -> np.ndarray:
    x = series(n)
    x[at : at + length] += 8.0
    return x


def test_a_fault_raises_once_and_its_end_clears_with_the_same_id() -> None:
    det = Detector(StubScorer(), DetectorSettings(**FAST))
    outs = run(det, spike_series())
    transitions = [o.transition for o in outs if o.transition]
    assert [t.state for t in transitions] == ["raised", "cleared"]
    raised, cleared = transitions
    assert 500 <= raised.time < 510 and cleared.time > raised.time
    assert raised.id == cleared.id == f"d1-{int(raised.time * 1000)}"
    payload = raised.to_payload()
    assert set(payload) == {"id", "device", "state", "time", "score", "threshold", "channels", "model"}
    assert payload["model"] == "stub@1" and set(payload["channels"]) == {"temperature_1"}
    assert payload["threshold"] == DetectorSettings().raise_threshold and payload["score"] >= payload["threshold"]
    states = [o.alert_state for o in outs]
    assert states[int(raised.time)] == "raised" and states[-1] == "ok"


def two_faults(second: int = 1600) -> np.ndarray:
    x = series(2000, seed=3)
    x[1500:1530] += 3.0
    x[second : second + 30] += 8.0
    return x


def test_an_anomaly_is_raised_once_though_the_coarse_scales_still_see_it_after_it_cleared() -> None:
    # Each fault raises one alert. The first clears while the 4- and 16-reading scales' windows
    # still hold it; had they counted, a coarse scale would have raised the faults again
    # after the second had cleared (a third alert, 144 readings after the second fault).
    outs = run(Detector(StubScorer(), DetectorSettings(**FAST)), two_faults())
    transitions = [(int(o.time), o.transition.state) for o in outs if o.transition]
    assert [state for _, state in transitions] == ["raised", "cleared", "raised", "cleared"]
    assert 1500 <= transitions[0][0] < 1505 and transitions[1][0] < 1600 <= transitions[2][0] < 1605


def test_a_restart_between_two_faults_keeps_what_the_last_alert_mutes(tmp_path: Path) -> None:
    x = two_faults()
    straight = run(Detector(StubScorer(), DetectorSettings(**FAST)), x)
    cleared = next(int(o.time) for o in straight if o.transition and o.transition.state == "cleared")
    store = StateStore(tmp_path / "state.db")
    first = Detector(StubScorer(), DetectorSettings(**FAST), store)
    before = run(first, x[: cleared + 1])
    first.flush()
    store.close()
    after = run(Detector(StubScorer(), DetectorSettings(**FAST), StateStore(tmp_path / "state.db")), x[cleared + 1 :],
                start=cleared + 1)
    assert [o.transition for o in straight] == [o.transition for o in before + after]


def test_no_alert_during_warmup() -> None:
    det = Detector(StubScorer(), DetectorSettings(warmup=600, history=200))
    assert not any(o.transition for o in run(det, spike_series()))


# -- persistence --------------------------------------------------------------------------------

def test_restart_from_the_store_continues_exactly(tmp_path: Path) -> None:
    x = spike_series(900, at=700)
    straight = run(Detector(StubScorer(), DetectorSettings(**FAST)), x)

    store = StateStore(tmp_path / "state.db")
    first = Detector(StubScorer(), DetectorSettings(**FAST), store)
    before = run(first, x[:400])
    assert first.flush() == 1 and first.flush() == 0  # only what changed is written
    store.close()
    store = StateStore(tmp_path / "state.db")
    after = run(Detector(StubScorer(), DetectorSettings(**FAST), store), x[400:], start=400)
    for a, b in zip(straight, before + after):
        assert (a.scores, a.likelihood, a.alert_state) == (b.scores, b.likelihood, b.alert_state)
        assert a.transition == b.transition


def test_a_periodic_flush_writes_a_channel_once_it_has_a_window_of_new_readings(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    det = Detector(StubScorer(), DetectorSettings(**FAST), store)
    run(det, series(100))
    assert det.flush(complete=False) == 1  # 100 new readings: written
    run(det, series(15, seed=2), start=100)
    assert det.flush(complete=False) == 0  # 15 new: the channel waits
    run(det, series(1, seed=3), start=115)
    assert det.flush(complete=False) == 1  # the 16th: written
    run(det, series(3, seed=4), start=116)
    assert det.flush() == 1  # a complete flush (an alert, a stop) writes whatever changed
    assert det.flush(complete=False) == 0
    # What a restart finds is what the last write held: 119 readings.
    (ch,) = Detector(StubScorer(), DetectorSettings(**FAST), store)._devices["d1"].channels.values()
    assert ch.seen == 119 and ch.saved == 119


def test_raised_alert_survives_a_restart(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    det = Detector(StubScorer(), DetectorSettings(**FAST), store)
    outs = run(det, spike_series(510))
    assert outs[-1].alert_state == "raised"
    det.flush()
    det2 = Detector(StubScorer(), DetectorSettings(**FAST), store)
    outs2 = run(det2, series(200, seed=5), start=510)
    cleared = [o.transition for o in outs2 if o.transition]
    assert [t.state for t in cleared] == ["cleared"] and cleared[0].id == next(o.transition for o in outs if o.transition).id


def test_a_flush_is_one_transaction_even_when_made_as_it_goes(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    det = Detector(StubScorer(), DetectorSettings(**FAST), store)
    for device in ("a", "b", "c"):
        run(det, series(50), device=device)
    assert det.flush() == 3
    run(det, series(10), start=50, device="a")
    run(det, series(10), start=50, device="b")
    det._dirty_devices.add("gone")  # its record comes after the channels' and fails
    with pytest.raises(KeyError):
        det.flush()
    # Nothing of the failed flush is on disk: channels a and b still have the 50 readings of the first.
    again = Detector(StubScorer(), DetectorSettings(**FAST), store)
    assert [again._devices[d].channels["temperature_1"].seen for d in "abc"] == [50, 50, 50]


def test_a_damaged_record_costs_only_that_channel(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    det = Detector(StubScorer(), DetectorSettings(**FAST), store)
    run(det, series(100), device="a")
    run(det, series(100), device="b")
    det.flush()
    store.put_blobs("detector", {'["a","temperature_1"]': b"\x05\x00\x00\x00{bad"})
    again = Detector(StubScorer(), DetectorSettings(**FAST), store)
    assert again._devices["b"].channels["temperature_1"].seen == 100
    assert "temperature_1" not in again._devices["a"].channels


def test_replace_scorer_keeps_state() -> None:
    x = series(600)
    straight = run(Detector(StubScorer(), DetectorSettings(**FAST)), x)
    det = Detector(StubScorer(), DetectorSettings(**FAST))
    part = run(det, x[:300])
    det.replace_scorer(StubScorer())  # same model reloaded: nothing changes
    part += run(det, x[300:], start=300)
    assert [o.likelihood for o in straight] == [o.likelihood for o in part]

    det.replace_scorer(StubScorer(version="2"))  # a new model: values kept, its scores relearned
    out = run(det, series(_MIN_SCORES + 1, seed=9), start=600)
    assert out[0].scores and not out[0].likelihood and det.model_label == "stub@2"
    assert out[_MIN_SCORES].likelihood


def test_transition_is_a_frozen_record() -> None:
    t = AlertTransition("d-1", "d", "raised", 1.0, 0.9, 0.5, {"c": 0.9}, "m@1")
    with pytest.raises(AttributeError):
        t.state = "cleared"  # type: ignore[misc]
