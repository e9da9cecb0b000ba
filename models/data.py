"""Training and evaluation data: synthetic sensor series, CSV series, windows, injected anomalies.

Everything is numpy and seeded, so the default model is reproducible bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gateway.detect.held import HELD_SERIES
from gateway.detect.scoring import Normalization

KINDS = ("temperature", "humidity", "vibration", "pump_current", "battery", "random_walk", "noise", "seasonal", "steps")
ANOMALIES = ("spike", "drift", "stuck", "level_shift", "noise_burst")


def _ar1(rng: np.random.Generator, n: int, phi: float, sigma: float) -> np.ndarray:
    e = rng.normal(0.0, sigma, n)
    out = np.empty(n)
    acc = 0.0
    for i in range(n):  # n is a few thousand: a plain loop is clear and fast enough
        acc = phi * acc + e[i]
        out[i] = acc
    return out


def _duty(rng: np.random.Generator, n: int, mean_on: float, mean_off: float) -> np.ndarray:
    """0/1 run state of a machine with geometric on and off durations."""
    state = np.zeros(n)
    i, on = 0, bool(rng.integers(2))
    while i < n:
        d = int(rng.geometric(1.0 / (mean_on if on else mean_off)))
        state[i : i + d] = on
        i, on = i + d, not on
    return state


def synthetic_series(rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
    """One normal series of `kind` (see KINDS), `n` samples, in the sensor's own units."""
    t = np.arange(n)
    day = rng.uniform(48, 1440)  # samples per day: reports every minute to every 30 min
    phase = rng.uniform(0, 2 * math.pi)
    cycle = np.sin(2 * math.pi * t / day + phase)
    if kind == "temperature":
        base = rng.uniform(-2, 30) + np.cumsum(rng.normal(0, 0.01, n))
        return base + rng.uniform(0.5, 8) * cycle + _ar1(rng, n, rng.uniform(0.5, 0.95), rng.uniform(0.02, 0.3))
    if kind == "humidity":
        x = rng.uniform(40, 80) - rng.uniform(3, 15) * cycle + _ar1(rng, n, 0.9, rng.uniform(0.2, 1.0))
        return np.clip(x, 0, 100)
    if kind in ("vibration", "pump_current"):
        on = _duty(rng, n, rng.uniform(100, 600), rng.uniform(100, 600))
        level = rng.uniform(2, 10)
        noise = rng.lognormal(0, rng.uniform(0.03, 0.15), n)
        idle = rng.uniform(0.0, 0.2)
        return np.where(on > 0, level * noise, idle + np.abs(rng.normal(0, 0.02, n)))
    if kind == "battery":
        v = rng.uniform(3.6, 4.2) - np.cumsum(np.abs(rng.normal(0, 2e-4, n))) + rng.normal(0, 0.004, n)
        return np.round(v, 2)  # ADCs report in 10 mV steps: flat stretches are normal here
    if kind == "random_walk":
        return np.cumsum(rng.normal(0, rng.uniform(0.1, 2), n))
    if kind == "noise":
        return rng.normal(rng.uniform(-10, 10), rng.uniform(0.1, 5), n)
    if kind == "seasonal":
        x = sum(
            rng.uniform(0.3, 3) * np.sin(2 * math.pi * t / rng.uniform(8, 400) + rng.uniform(0, 6)) for _ in range(3)
        )
        return x + rng.normal(0, rng.uniform(0.05, 0.5), n)
    if kind == "steps":
        jumps = np.where(rng.random(n) < 1 / rng.uniform(200, 800), rng.normal(0, 3, n), 0.0)
        return np.cumsum(jumps) + rng.normal(0, rng.uniform(0.1, 1), n)
    raise ValueError(f"unknown series kind {kind!r}")


def synthetic_corpus(seed: int, n_series: int = 180, length: int = 3000) -> list[np.ndarray]:
    """`n_series` series cycling through every kind, from one seed."""
    rng = np.random.default_rng(seed)
    return [synthetic_series(rng, KINDS[i % len(KINDS)], length) for i in range(n_series)]


@dataclass
class RawWindows:
    """Windows with the history that precedes each, in sensor units."""

    history: np.ndarray  # [N, H]
    window: np.ndarray  # [N, W]


def sample_raw(series: list[np.ndarray], n: int, window: int, history: int, rng: np.random.Generator) -> RawWindows:
    """`n` random (history, window) pairs from series long enough to hold both."""
    span = history + window
    usable = [s for s in series if len(s) >= span]
    if not usable:
        raise ValueError(f"no series is long enough: need {span} values (history {history} + window {window})")
    which = rng.integers(len(usable), size=n)
    out = np.empty((n, span))
    for i, k in enumerate(which):
        s = usable[k]
        start = int(rng.integers(len(s) - span + 1))
        out[i] = s[start : start + span]
    return RawWindows(out[:, :history], out[:, history:])


def normalize(raw: RawWindows, norm: Normalization) -> np.ndarray:
    return norm.apply(raw.history, raw.window)


def normal_windows(series: list[np.ndarray], n: int, window: int, norm: Normalization, seed: int) -> np.ndarray:
    """Normalized windows float32 [n, window] of normal data."""
    return normalize(sample_raw(series, n, window, norm.history, np.random.default_rng(seed)), norm)


def inject(rng: np.random.Generator, raw: RawWindows, kind: str, norm: Normalization) -> RawWindows:
    """Copy of `raw` with one anomaly of `kind` in every window, sized in the history's sigma."""
    _, s = norm.stats(raw.history)
    w = raw.window.copy()
    n, width = w.shape
    for i in range(n):
        sign = rng.choice((-1.0, 1.0))
        p = int(rng.integers(width // 4, 3 * width // 4))
        if kind == "spike":
            w[i, rng.integers(width)] += sign * rng.uniform(5, 10) * s[i]
        elif kind == "drift":
            w[i, p:] += sign * np.linspace(0, rng.uniform(3, 6) * s[i], width - p)
        elif kind == "stuck":
            w[i, p // 2 :] = w[i, p // 2]
        elif kind == "level_shift":
            w[i, p:] += sign * rng.uniform(3, 6) * s[i]
        elif kind == "noise_burst":
            w[i, p // 2 :] += rng.normal(0, rng.uniform(2, 4) * s[i], width - p // 2)
        else:
            raise ValueError(f"unknown anomaly {kind!r}")
    return RawWindows(raw.history, w)


@dataclass
class DetectionSet:
    """Held-out normalized windows with labels: 0 normal, 1 anomalous (`kinds` names which)."""

    windows: np.ndarray  # float32 [N, W]
    labels: np.ndarray  # int8 [N]
    kinds: np.ndarray  # str [N]: "normal" or an anomaly name


def detection_set(seed: int, n_normal: int, n_per_anomaly: int, window: int, norm: Normalization) -> DetectionSet:
    """Normal windows plus each anomaly kind, from series that no training run sees."""
    rng = np.random.default_rng(seed)
    series = synthetic_corpus(seed + 1, n_series=90)
    parts, kinds = [normalize(sample_raw(series, n_normal, window, norm.history, rng), norm)], ["normal"] * n_normal
    for kind in ANOMALIES:
        raw = inject(rng, sample_raw(series, n_per_anomaly, window, norm.history, rng), kind, norm)
        parts.append(normalize(raw, norm))
        kinds += [kind] * n_per_anomaly
    k = np.asarray(kinds)
    return DetectionSet(np.concatenate(parts), (k != "normal").astype(np.int8), k)


def auc(scores_neg: np.ndarray, scores_pos: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with ties counted half)."""
    allv = np.concatenate([scores_neg, scores_pos])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    # average ranks over ties
    _, start, counts = np.unique(sorted_v, return_index=True, return_counts=True)
    avg = start + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    r_pos = ranks[len(scores_neg) :].sum()
    n_pos, n_neg = len(scores_pos), len(scores_neg)
    return float((r_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass
class EventSet:
    """Streaming check: each anomaly event starts at t0 in a series; the windows ending at
    t0 .. t0+span-1 are scored and the event's score is their maximum. `clean` holds the same
    windows of the same series without the anomaly. Independent of W, so windows compare fairly."""

    anomalous: np.ndarray  # float32 [E, span, W]
    clean: np.ndarray  # float32 [E, span, W]
    kinds: np.ndarray  # str [E]


def _inject_series(rng: np.random.Generator, s: np.ndarray, t0: int, kind: str, sigma: float, span: int) -> None:
    sign = rng.choice((-1.0, 1.0))
    if kind == "spike":
        s[t0] += sign * rng.uniform(5, 10) * sigma
    elif kind == "drift":
        s[t0:] += sign * np.minimum(np.arange(len(s) - t0) / span, 1.0) * rng.uniform(3, 6) * sigma
    elif kind == "stuck":
        s[t0 : t0 + span] = s[t0]
    elif kind == "level_shift":
        s[t0:] += sign * rng.uniform(3, 6) * sigma
    elif kind == "noise_burst":
        s[t0 : t0 + span // 2] += rng.normal(0, rng.uniform(2, 4) * sigma, span // 2)
    else:
        raise ValueError(f"unknown anomaly {kind!r}")


def event_set(seed: int, n_per_kind: int, window: int, norm: Normalization, span: int = 32) -> EventSet:
    rng = np.random.default_rng(seed)
    series = synthetic_corpus(seed + 1, n_series=90)
    anomalous: list[np.ndarray] = []
    clean: list[np.ndarray] = []
    kinds: list[str] = []
    ends = np.arange(span)
    for kind in ANOMALIES:
        for _ in range(n_per_kind):
            s = series[int(rng.integers(len(series)))]
            t0 = int(rng.integers(norm.history + window, len(s) - span))
            _, sigma = norm.stats(s[t0 - norm.history : t0])
            bad = s.copy()
            _inject_series(rng, bad, t0, kind, float(sigma), span)
            for src, out in ((bad, anomalous), (s, clean)):
                last = t0 + ends  # index of each window's last value
                win = np.stack([src[e - window + 1 : e + 1] for e in last])
                hist = np.stack([src[e - window - norm.history + 1 : e - window + 1] for e in last])
                out.append(norm.apply(hist, win))
            kinds.append(kind)
    return EventSet(np.stack(anomalous), np.stack(clean), np.asarray(kinds))


HELD_SEED = 303  # a corpus no training (seed 0 on), calibration (102) or build check (203) draws from


def held_series(seed: int = HELD_SEED, per_kind: int = 3, length: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """The gateway's own held series (gateway/detect/held_series.npz): normal series of every kind,
    and the same series with an anomaly event every 192 samples; float32 [N, length] each."""
    norm = Normalization()
    normal = np.stack(synthetic_corpus(seed, per_kind * len(KINDS), length))
    rng = np.random.default_rng(seed + 1)
    anomalous = normal.copy()
    for i, s in enumerate(anomalous):
        for j, t0 in enumerate(range(192, length - 32, 192)):
            _, sigma = norm.stats(s[t0 - norm.history : t0])
            _inject_series(rng, s, t0, ANOMALIES[(i + j) % len(ANOMALIES)], float(sigma), 32)
    return normal.astype(np.float32), anomalous.astype(np.float32)


def write_held_series(path: Path = HELD_SERIES) -> None:
    normal, anomalous = held_series()
    np.savez_compressed(path, normal=normal, anomalous=anomalous)
