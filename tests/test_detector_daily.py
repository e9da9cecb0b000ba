"""The daily comparison: a time scale's newest window against the same hours a day before."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from gateway.detect.channel import Channel
from gateway.detect.detector import Detector
from gateway.detect.scoring import Normalization
from gateway.detect.seasonal import daily_score, fits, period_blocks
from gateway.detect.settings import DetectorSettings
from gateway.records import Reading
from gateway.service.state import StateStore
from tests.test_detector import StubScorer

QUARTER_HOUR = 900.0
PER_DAY = 96  # readings a day, one every 15 minutes


def days(n: int, missing_bump: int | None = None, seed: int = 1) -> np.ndarray:
    """n days of a channel that is 10 from 08:00 to 18:00 and 0 otherwise, with noise; on day
    `missing_bump` it stays at 0 (a heater that did not come on)."""
    rng = np.random.default_rng(seed)
    hour = (np.arange(n * PER_DAY) % PER_DAY) / 4
    bump = ((hour >= 8) & (hour < 18)).astype(float) * 10
    if missing_bump is not None:
        bump[missing_bump * PER_DAY : (missing_bump + 1) * PER_DAY] = 0
    return bump + rng.normal(0, 0.3, len(bump))


def run(det: Detector, x: np.ndarray, start: int = 0, gap_after: int | None = None) -> list:
    out = []
    for i, v in enumerate(x, start):
        t = i * QUARTER_HOUR + (86400.0 if gap_after is not None and i > gap_after else 0.0)
        out.append(det.observe([Reading("heater", {"temperature_1": float(v)}, i, -50.0, 9.0, t)])[0])
    return out


def detector(store: StateStore | None = None, daily: bool = True) -> Detector:
    # The model's real window and history: a day of 15-minute readings fits the finest scale's buffer.
    return Detector(StubScorer(window=32, history=128), DetectorSettings(warmup=300, daily=daily), store)


def raised_on(outs: list) -> list[int]:
    return sorted({i // PER_DAY for i, o in enumerate(outs) if o.transition and o.transition.state == "raised"})


def test_a_day_without_its_bump_scores_high_against_the_day_before() -> None:
    x = days(4, missing_bump=3)
    period = period_blocks(QUARTER_HOUR, 1)
    assert period == PER_DAY and fits(period, 32, 160)
    # Windows ending at 12:00: on day 2 the bump is where it was the day before, on day 3 it is not.
    usual = daily_score(x[2 * PER_DAY + 48 - 160 : 2 * PER_DAY + 48], period, 32, Normalization())
    missing = daily_score(x[3 * PER_DAY + 48 - 160 : 3 * PER_DAY + 48], period, 32, Normalization())
    assert usual is not None and missing is not None
    assert usual < 5 and missing > 100 * usual


def test_a_channel_without_a_daily_pattern_is_left_to_the_model() -> None:
    noise = np.random.default_rng(2).normal(0, 1, 160)  # yesterday predicts nothing
    assert daily_score(noise, PER_DAY, 32, Normalization()) is None


def test_a_day_without_its_bump_raises_where_the_window_alone_does_not() -> None:
    x = days(8, missing_bump=7)
    assert raised_on(run(detector(), x)) == [7]
    assert raised_on(run(detector(daily=False), x)) == []  # every window is a shape seen each day
    assert DetectorSettings().daily is False  # opt-in (README, Detection)


def test_the_interval_is_learned_and_a_silence_starts_the_count_again() -> None:
    ch = Channel(DetectorSettings().resolve("d", "c"), 1, 32, 128)
    for i in range(10):
        ch.clock(60.0 * i)
    assert ch.interval == 60.0 and ch.steady == 8  # the first interval sets it
    ch.clock(60.0 * 9 + 3600)  # an hour of silence
    assert ch.steady == 0 and ch.interval == 60.0
    ch.clock(60.0 * 10 + 3600)
    ch.clock(math.nan)  # a reading without a time teaches nothing
    assert ch.steady == 1


def test_after_a_silence_a_day_is_not_compared_until_a_buffer_of_readings_follows_it() -> None:
    x = days(8, missing_bump=7)
    # A day of silence just before the day without its bump: "a day before" in the buffer is not
    # a day before any more, so the comparison waits (and the missing bump goes unreported).
    assert raised_on(run(detector(), x, gap_after=7 * PER_DAY - 60)) == []


def test_a_restart_continues_the_daily_comparison_exactly(tmp_path: Path) -> None:
    x = days(8, missing_bump=7)
    straight = run(detector(), x)
    store = StateStore(tmp_path / "state.db")
    first = detector(store)
    before = run(first, x[:650])
    assert any(sc.season is not None for sc in first._devices["heater"].channels["temperature_1"].scales)
    first.flush()
    store.close()
    after = run(detector(StateStore(tmp_path / "state.db")), x[650:], start=650)
    assert [(o.likelihood, o.transition) for o in straight] == [(o.likelihood, o.transition) for o in before + after]


def test_a_comparison_turned_off_is_not_restored_from_the_state_database(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    on = detector(store)
    run(on, days(8, missing_bump=7)[:750])
    on.flush()
    off = detector(store, daily=False)
    ch = off._devices["heater"].channels["temperature_1"]
    assert ch.seen == 750 and all(sc.season is None for sc in ch.scales)


def test_the_replay_of_recorded_likelihoods_gives_the_daily_comparisons_alerts() -> None:
    from bench.replay import alerts_off, record, replay
    from gateway.commands.detect import Row

    x = days(8, missing_bump=7)
    outs = run(detector(), x)
    settings = {"warmup": 300, "daily": True}
    rows = (Row(i, "", i * QUARTER_HOUR, (float(v),)) for i, v in enumerate(x))
    recorded = record(Detector(StubScorer(window=32, history=128), DetectorSettings(**alerts_off(settings))), rows,
                      ["temperature_1"], "heater")
    ev, up = replay(recorded, DetectorSettings(**settings))
    assert ev.tolist() == [int(o.transition is not None and o.transition.state == "raised") for o in outs]
    assert up.tolist() == [o.alert_state == "raised" for o in outs] and ev.sum() >= 1
