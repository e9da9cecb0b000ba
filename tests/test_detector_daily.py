"""The daily comparison: a time scale's newest window against the same hours a day before."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gateway.detect.detector import Detector
from gateway.detect.scoring import Normalization
from gateway.detect.seasonal import DaySlots, daily_score, fits, slots_per_day
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


def run(det: Detector, x: np.ndarray, start: int = 0, kept: np.ndarray | None = None) -> list:
    """Feed readings start, start + 1, ... (those `kept`, if given: the others lost) a quarter hour apart."""
    out = []
    for i, v in enumerate(x, start):
        if kept is None or kept[i - start]:
            out.append(det.observe([Reading("heater", {"temperature_1": float(v)}, i, -50.0, 9.0, i * QUARTER_HOUR)])[0])
    return out


def detector(store: StateStore | None = None, daily: bool = True) -> Detector:
    # The model's real window and history: a day of 15-minute readings fits the finest scale's buffer.
    return Detector(StubScorer(window=32, history=128), DetectorSettings(warmup=300, daily=daily), store)


def raised_on(outs: list) -> list[int]:
    return sorted({int(o.time // 86400) for o in outs if o.transition and o.transition.state == "raised"})


def slot_means(x: np.ndarray, kept: np.ndarray, end: int) -> np.ndarray:
    """The daily slots of a quarter-hour scale fed readings 0 .. end - 1 (those kept)."""
    slots = DaySlots(slots_per_day(QUARTER_HOUR, 1), 160)
    for i in np.flatnonzero(kept[:end]):
        slots.add(i * QUARTER_HOUR, float(x[i]))
    slots.add(end * QUARTER_HOUR, 0.0)  # the next slot's first reading closes the last
    return slots.last()


def test_a_day_without_its_bump_scores_high_against_the_day_before() -> None:
    x = days(4, missing_bump=3)
    assert slots_per_day(QUARTER_HOUR, 1) == PER_DAY and fits(PER_DAY, 32, 160)
    # Windows ending at 12:00: on day 2 the bump is where it was the day before, on day 3 it is not.
    usual = daily_score(x[2 * PER_DAY + 48 - 160 : 2 * PER_DAY + 48], PER_DAY, 32, Normalization())
    missing = daily_score(x[3 * PER_DAY + 48 - 160 : 3 * PER_DAY + 48], PER_DAY, 32, Normalization())
    assert usual is not None and missing is not None
    assert usual < 5 and missing > 100 * usual


def test_slots_are_bounded_by_the_clock_so_a_lost_reading_shifts_nothing() -> None:
    x = days(4, missing_bump=3)
    end = 3 * PER_DAY + 48
    kept = np.ones(len(x), bool)
    kept[end - 150 : end - 40 : 9] = False  # 13 readings lost between the day before and the window
    means = slot_means(x, kept, end)
    # Each slot holds its own quarter hour's reading; a lost one leaves its slot empty, in place.
    heard = np.isfinite(means)
    assert np.array_equal(heard, kept[end - 160 : end])
    assert np.array_equal(means[heard], x[end - 160 : end][heard].astype(np.float32))
    counted = daily_score(x[end - 160 : end], PER_DAY, 32, Normalization())
    by_clock = daily_score(means, PER_DAY, 32, Normalization())
    assert counted is not None and by_clock is not None and by_clock > 0.5 * counted
    ordinary = daily_score(slot_means(days(4), kept, end), PER_DAY, 32, Normalization())
    assert ordinary is not None and ordinary < 5
    # A window whose day before was not heard (a silence) is not compared.
    silent = kept.copy()
    silent[end - 32 - PER_DAY : end - PER_DAY] = False
    assert daily_score(slot_means(x, silent, end), PER_DAY, 32, Normalization()) is None


def test_a_channel_without_a_daily_pattern_is_left_to_the_model() -> None:
    noise = np.random.default_rng(2).normal(0, 1, 160)  # yesterday predicts nothing
    assert daily_score(noise, PER_DAY, 32, Normalization()) is None


def test_a_day_without_its_bump_raises_where_the_window_alone_does_not() -> None:
    x = days(8, missing_bump=7)
    assert raised_on(run(detector(), x)) == [7]
    assert raised_on(run(detector(daily=False), x)) == []  # every window is a shape seen each day
    assert DetectorSettings().daily is False  # opt-in (README, Detection)


def test_lost_packets_and_a_silence_leave_the_comparison_in_step() -> None:
    # One reading in 20 lost at random, and four hours of silence on day 5: a count of blocks back
    # would no longer be a day back; the times still are.
    kept = np.random.default_rng(3).random(8 * PER_DAY) > 0.05
    kept[5 * PER_DAY + 20 : 5 * PER_DAY + 36] = False
    assert raised_on(run(detector(), days(8, missing_bump=7), kept=kept)) == [7]
    assert raised_on(run(detector(), days(8), kept=kept)) == []


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
    assert ch.seen == 750 and all(sc.season is None and sc.day is None for sc in ch.scales)


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


def test_a_comparison_turned_on_later_starts_its_slots_then(tmp_path: Path) -> None:
    # Records written with it off hold no slots: the scale starts them at its next reading and
    # compares once a day and a window of them have come.
    x = days(8, missing_bump=7)
    store = StateStore(tmp_path / "state.db")
    off = detector(store, daily=False)
    run(off, x[:300])
    off.flush()
    on = detector(store)
    scale = on._devices["heater"].channels["temperature_1"].scales[0]
    assert scale.seen == 300 and scale.day is None
    assert raised_on(run(on, x[300:], start=300)) == [7]
