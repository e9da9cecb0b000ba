"""The detector with the real default model bundle (int8, onnxruntime): faults raise alerts and
their end clears them, normal data raises none, a restart keeps what was learned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gateway.detect.detector import Detector, DetectorOutput
from gateway.detect.model_store import packaged_default_bundle
from gateway.detect.scoring import OnnxScorer
from gateway.detect.settings import DetectorSettings
from gateway.records import Reading
from gateway.service.state import StateStore

FAULT_START, FAULT_END = 2000, 2150


@pytest.fixture(scope="module")
def scorer() -> OnnxScorer:
    return OnnxScorer(packaged_default_bundle())


def sensor(n: int, seed: int) -> np.ndarray:
    """A temperature: daily cycle (288 readings a day), AR(1) noise."""
    rng = np.random.default_rng(seed)
    noise = np.zeros(n)
    e = rng.normal(0, 0.2, n)
    for i in range(1, n):
        noise[i] = 0.7 * noise[i - 1] + e[i]
    return 20 + 2 * np.sin(2 * np.pi * np.arange(n) / 288) + noise


def inject(x: np.ndarray, kind: str) -> np.ndarray:
    x = x.copy()
    a, b = FAULT_START, FAULT_END
    if kind == "spike":
        x[a] += 15
    elif kind == "level_shift":
        x[a:b] += 5
    elif kind == "stuck":
        x[a:b] = x[a]
    elif kind == "drift":
        x[a:b] += np.linspace(0, 8, b - a)
    elif kind == "noise_burst":
        x[a:b] += np.random.default_rng(9).normal(0, 2, b - a)
    return x


def feed(det: Detector, x: np.ndarray, start: int = 0, device: str = "node1") -> list[DetectorOutput]:
    return [
        det.observe([Reading(device, {"temperature_1": float(v)}, start + i, -70.0, 8.0, 1.7e9 + 60.0 * (start + i))])[0]
        for i, v in enumerate(x)
    ]


@pytest.mark.parametrize("kind", ["spike", "level_shift", "stuck", "drift", "noise_burst"])
def test_fault_raises_an_alert_and_its_end_clears_it(scorer: OnnxScorer, kind: str) -> None:
    outs = feed(Detector(scorer), inject(sensor(3000, seed=1), kind))
    transitions = [(i, o.transition) for i, o in enumerate(outs) if o.transition]
    assert transitions, f"{kind}: no alert"
    first_i, first = transitions[0]
    assert first.state == "raised" and FAULT_START <= first_i <= FAULT_END, (kind, transitions)
    assert first.model == "default@1.0.0" and first.channels["temperature_1"] >= first.threshold
    last_i, last = transitions[-1]
    assert last.state == "cleared" and last_i > FAULT_START and outs[-1].alert_state == "ok"
    # Every raise is followed by its clear, with the same id.
    states = [t.state for _, t in transitions]
    assert states == ["raised", "cleared"] * (len(states) // 2)
    assert all(a.id == b.id for (_, a), (_, b) in zip(transitions[::2], transitions[1::2]))


def test_normal_data_raises_no_alert(scorer: OnnxScorer) -> None:
    det = Detector(scorer)
    temp = sensor(6000, seed=2)
    rng = np.random.default_rng(3)
    humidity = 60 + 10 * np.sin(2 * np.pi * np.arange(6000) / 288 + 1) + np.cumsum(rng.normal(0, 0.05, 6000))
    outs = [
        det.observe([Reading("node2", {"temperature_1": float(t), "humidity_2": float(h)}, i, -70.0, 8.0, 60.0 * i)])[0]
        for i, (t, h) in enumerate(zip(temp, humidity))
    ]
    assert not [o.transition for o in outs if o.transition]
    assert all(o.alert_state == "ok" for o in outs) and outs[-1].likelihood


def test_restart_keeps_what_was_learned(scorer: OnnxScorer, tmp_path: Path) -> None:
    """A restart 100 readings before a fault: the fault is caught exactly as without the restart,
    where a fresh detector, in its warm-up, misses it."""
    x = inject(sensor(3000, seed=4), "level_shift")
    straight = feed(Detector(scorer), x)

    store = StateStore(tmp_path / "state.db")
    det = Detector(scorer, store=store)
    before = feed(det, x[:1900])
    assert det.flush() == 1 and det.flush() == 0  # the one channel; then nothing new
    store.close()
    restarted = Detector(OnnxScorer(packaged_default_bundle()), store=StateStore(tmp_path / "state.db"))
    after = feed(restarted, x[1900:], start=1900)

    for a, b in zip(straight, before + after):
        assert (a.scores, a.likelihood, a.alert_state, a.transition) == (b.scores, b.likelihood, b.alert_state, b.transition)
    assert any(o.transition and o.transition.state == "raised" for o in after[100:250])
    fresh = feed(Detector(scorer), x[1900:], start=1900)
    assert not any(o.transition for o in fresh[:300])


def test_model_reload_keeps_state(scorer: OnnxScorer) -> None:
    x = inject(sensor(2500, seed=5), "spike")
    straight = feed(Detector(scorer), x)
    det = Detector(scorer)
    part = feed(det, x[:1500])
    det.replace_scorer(OnnxScorer(packaged_default_bundle()))  # SIGHUP: the same bundle reloaded
    part += feed(det, x[1500:], start=1500)
    assert [(o.likelihood, o.transition) for o in straight] == [(o.likelihood, o.transition) for o in part]


def test_batched_readings_score_as_one_at_a_time(scorer: OnnxScorer) -> None:
    xs = [sensor(800, seed=s) for s in (6, 7, 8)]
    one = Detector(scorer)
    singles = [[feed(one, x[i : i + 1], start=i, device=f"n{d}")[0] for d, x in enumerate(xs)] for i in range(800)]
    batched = Detector(scorer)
    for i in range(800):
        outs = batched.observe(
            [Reading(f"n{d}", {"temperature_1": float(x[i])}, i, -70.0, 8.0, 1.7e9 + 60.0 * i) for d, x in enumerate(xs)]
        )
        for a, b in zip(singles[i], outs):
            assert a.scores == pytest.approx(b.scores, rel=1e-5) and a.alert_state == b.alert_state


def test_settings_reach_the_model_path(scorer: OnnxScorer) -> None:
    x = inject(sensor(2500, seed=1), "spike")
    quiet = Detector(scorer, DetectorSettings(devices={"node1": {"ignore": ["temperature_*"]}}))
    assert not any(o.scores for o in feed(quiet, x))
    late = Detector(scorer, DetectorSettings(channels={"temperature_1": {"warmup": 2100}}))
    assert not any(o.transition for o in feed(late, x[:2100]))


def test_a_stuck_sensor_raises_one_alert_and_its_recovery_none(scorer: OnnxScorer) -> None:
    """Read to 0.1 as Cayenne LPP carries it: 120 identical readings, then the sensor reads again.
    Its scales did not learn the run, so its first ordinary readings after it are judged against
    the readings before it, not against a spread of nearly nothing (a second alert, before)."""
    x = np.round(sensor(3000, seed=11), 1)
    x[FAULT_START : FAULT_START + 120] = x[FAULT_START]
    outs = feed(Detector(scorer), x)
    transitions = [(i, o.transition.state) for i, o in enumerate(outs) if o.transition]
    assert [state for _, state in transitions] == ["raised", "cleared"], transitions
    assert FAULT_START <= transitions[0][0] < FAULT_START + 120 <= transitions[1][0]
