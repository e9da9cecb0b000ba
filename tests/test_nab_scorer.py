"""The NAB scorer against hand-worked examples of each published rule."""

from __future__ import annotations

import math
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is not an installed package

from bench.nab import (
    PROFILES,
    prepare_file,
    probation_length,
    scaled_sigmoid,
    score_file,
    sweep,
)

T0 = datetime(2014, 4, 1)
STD = PROFILES["standard"]


def stamps(n: int) -> list[str]:
    return [(T0 + timedelta(minutes=5 * i)).strftime("%Y-%m-%d %H:%M:%S") for i in range(n)]


def window(a: int, b: int) -> tuple[str, str]:
    # Labels carry microseconds, rows do not: NAB compares them as times.
    return ((T0 + timedelta(minutes=5 * a)).strftime("%Y-%m-%d %H:%M:%S.%f"),
            (T0 + timedelta(minutes=5 * b)).strftime("%Y-%m-%d %H:%M:%S.%f"))


# 100 rows, probation 15 rows, one window on rows 40..49 (width 10).
FILE = prepare_file("f.csv", stamps(100), [window(40, 49)])


def detect(*rows: int, n: int = 100) -> np.ndarray:
    s = np.zeros(n)
    s[list(rows)] = 1.0
    return s


def raw(scores: np.ndarray, profile: str = "standard") -> float:
    return score_file(FILE, scores, 0.5, PROFILES[profile])[0]


def test_sigmoid_published_points() -> None:
    assert scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert scaled_sigmoid(-0.5) == pytest.approx(0.84828, abs=1e-5)
    assert scaled_sigmoid(0.0) == 0.0
    assert scaled_sigmoid(1.0) == pytest.approx(-0.98661, abs=1e-5)
    assert scaled_sigmoid(3.0) == -1.0


def test_probation_is_15_percent_capped_at_750() -> None:
    assert probation_length(100) == 15
    assert probation_length(4032) == 604
    assert probation_length(22695) == 750


def test_tp_at_left_edge_is_worth_exactly_tp_weight() -> None:
    assert raw(detect(40)) == pytest.approx(1.0)


def test_tp_at_right_edge() -> None:
    # position -(49 - 49 + 1) / 10 = -0.1: (2 / (1 + e^-0.5) - 1) / 0.986614 = 0.244919 / 0.986614
    assert raw(detect(49)) == pytest.approx(0.248242, abs=1e-6)


def test_missed_window_costs_fn_weight() -> None:
    assert raw(detect()) == -1.0
    assert raw(detect(), "reward_low_FN_rate") == -2.0


def test_only_first_detection_in_a_window_counts() -> None:
    # Row 42: position -0.8: (2 / (1 + e^-4) - 1) / 0.986614 = 0.977107; rows 45 and 48 add nothing.
    assert raw(detect(42, 45, 48)) == pytest.approx(0.977107, abs=1e-6)


def test_fp_right_after_window_is_cheap() -> None:
    # Row 50: |49 - 50| / (10 - 1) = 1/9: 2 / (1 + e^(5/9)) - 1 = -0.270848, times fpWeight 0.11.
    assert raw(detect(50)) == pytest.approx(-1.0 - 0.029793, abs=1e-6)
    assert raw(detect(40, 50)) == pytest.approx(1.0 - 0.029793, abs=1e-6)
    assert raw(detect(40, 50), "reward_low_FP_rate") == pytest.approx(1.0 - 0.059587, abs=1e-6)


def test_fp_far_after_window_and_before_any_window_cost_full_fp_weight() -> None:
    assert raw(detect(40, 77)) == pytest.approx(1.0 - 0.11)  # |49 - 77| / 9 = 3.1 >= 3
    assert raw(detect(40, 20)) == pytest.approx(1.0 - 0.11)  # no preceding window
    # Inside 3 widths the sigmoid applies: row 67, 18 / 9 = 2: 2 / (1 + e^10) - 1 = -0.999909
    assert raw(detect(40, 67)) == pytest.approx(1.0 - 0.11 * 0.999909, abs=1e-6)


def test_probationary_rows_are_ignored() -> None:
    assert raw(detect(3, 14)) == -1.0
    assert raw(detect(15)) == pytest.approx(-1.0 - 0.11)  # the first scored row


def test_fp_is_relative_to_closest_preceding_window() -> None:
    f = prepare_file("g.csv", stamps(200), [window(40, 49), window(100, 119)])
    s = np.zeros(200)
    s[[40, 100, 121]] = 1.0  # 121: |119 - 121| / 19 = 0.105263 after the second (width 20) window
    expected = 2.0 + 0.11 * scaled_sigmoid(2 / 19)
    assert score_file(f, s, 0.5, STD)[0] == pytest.approx(expected)
    assert scaled_sigmoid(2 / 19) == pytest.approx(2 / (1 + math.exp(10 / 19)) - 1)


def test_sweep_normalises_null_to_0_and_perfect_to_100() -> None:
    a = prepare_file("a.csv", stamps(100), [window(40, 49)])
    b = prepare_file("b.csv", stamps(200), [window(40, 49), window(100, 119)])
    none = [np.zeros(100), np.zeros(200)]
    perfect = [detect(40), np.zeros(200)]
    perfect[1][[40, 100]] = 1.0
    for profile in PROFILES:
        assert sweep([a, b], none, profile).normalized == pytest.approx(0.0)
        assert sweep([a, b], perfect, profile).normalized == pytest.approx(100.0)
    # One of three windows at its left edge, the others missed: raw -1, null -3, perfect 3.
    half = [detect(40), np.zeros(200)]
    assert sweep([a, b], half, "standard").normalized == pytest.approx(100 * 2 / 6)


def test_sweep_picks_the_corpus_wide_best_threshold() -> None:
    a = prepare_file("a.csv", stamps(100), [window(40, 49)])
    s = np.zeros(100)
    s[40] = 0.6  # a TP at the left edge
    s[[20, 21, 22, 23, 24, 25, 26, 27, 28, 29]] = 0.9  # ten FPs that would cost 1.1
    res = sweep([a], [s], "standard")
    assert res.threshold == 0.6 and res.raw == pytest.approx(1.0 - 1.1)
    assert (res.tp, res.fn, res.fp) == (1, 0, 10)
    res = sweep([a], [s], "reward_low_FP_rate")  # at fpWeight 0.22 missing the window is better
    assert res.threshold == 1.1 and res.raw == -1.0


def test_sweep_agrees_with_scoring_every_threshold() -> None:
    rng = np.random.default_rng(7)
    files = [prepare_file("a.csv", stamps(300), [window(100, 129)]),
             prepare_file("b.csv", stamps(400), [window(90, 109), window(250, 289)])]
    scores = [np.round(rng.random(300), 2), np.round(rng.random(400), 2)]
    for name, profile in PROFILES.items():
        res = sweep(files, scores, name)
        at = {t: sum(score_file(f, s, t, profile)[0] for f, s in zip(files, scores)) for t in np.unique(np.concatenate(scores))}
        assert res.raw == pytest.approx(max(max(at.values()), res.null))
        assert res.raw == pytest.approx(sum(score_file(f, s, res.threshold, profile)[0] for f, s in zip(files, scores)))


def test_window_edges_must_be_rows() -> None:
    with pytest.raises(ValueError, match="bad.csv"):
        prepare_file("bad.csv", stamps(10), [("2020-01-01 00:00:00.000000", "2020-01-02 00:00:00.000000")])
