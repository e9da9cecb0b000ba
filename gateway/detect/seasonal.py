"""A time scale's newest window against the same hours a day before: a daily pattern broken.

The model judges a window by its shape against the readings just before it, so a day whose bump
is missing, lower or flattened looks ordinary to it: each of its windows is a shape the channel
shows every day. Compared with the day before, value for value, it is not. The day is the one
fixed parameter, a physical prior (sensors outdoors, in buildings, on a duty cycle follow one), not
a tuned one; a channel that does not follow it is left to the model (`daily_score` says None).

The comparison keeps its own means, over slots of the clock (`DaySlots`: a whole number of them in
a day, each about k readings long), not the scale's blocks of k readings received: after a lost
packet those start at another point of the day than the day before, and a block's mean then
differs from its match's by part of whatever the channel did at the edge (a pump switching).
Per window: the residuals r = v[s] - v[s - P] of the slots' means, P the slots in a day; the newest
`window` of them normalized by the median and spread of those before (as the model's windows are,
by `Normalization.stats`), their mean square the score, judged by the same likelihood as the
model's scores. A slot without a reading (lost, a silence) is NaN and its residuals left out.
numpy only: runs on the Pi.
"""

from __future__ import annotations

import math
from array import array

import numpy as np

from gateway.detect.scoring import Normalization

DAY_S = 86400.0
MIN_HISTORY = 16  # residuals before the window to normalize it by, at least


def slots_per_day(interval_s: float, k: int) -> int:
    """Slots of about k readings in a day, at the channel's usual interval between readings (0 if unknown)."""
    return round(DAY_S / (k * interval_s)) if interval_s > 0 else 0


def fits(per_day: int, window: int, length: int) -> bool:
    """Whether `length` slots hold a day, a window and a history to compare them."""
    return per_day >= 2 and per_day + window + MIN_HISTORY <= length


class DaySlots:
    """A scale's readings averaged over slots of the clock, DAY_S / per_day seconds each (slot s holds
    the readings with floor(t / width) == s): the last `length` slots' means in a ring, NaN for a
    slot no reading fell in."""

    __slots__ = ("acc", "cnt", "means", "per_day", "slot", "width")

    def __init__(self, per_day: int, length: int) -> None:
        self.per_day = per_day
        self.width = DAY_S / per_day
        self.means = array("f", [math.nan]) * length
        self.slot = -1  # the slot being filled (its number since the epoch), -1 before the first reading
        self.acc = 0.0
        self.cnt = 0

    def add(self, t: float, x: float) -> bool:
        """Take a reading at time t; True when it closed a slot (the newest mean is then complete)."""
        s = math.floor(t / self.width) if math.isfinite(t) else -1
        if s == self.slot:
            self.acc += x
            self.cnt += 1
            return False
        if s < self.slot:  # a reading from the past, or without a time: nothing to place it in
            return False
        closed = self.slot >= 0
        if closed:
            means, n = self.means, len(self.means)
            means[self.slot % n] = self.acc / self.cnt
            for empty in range(self.slot + 1, min(s, self.slot + 1 + n)):  # slots no reading fell in
                means[empty % n] = math.nan
        self.slot, self.acc, self.cnt = s, x, 1
        return closed

    def restore(self, slot: int, acc: float, cnt: int, last: np.ndarray) -> None:
        """Into these new slots: the slot being filled, its sum and count, and `last` (as `last` gave it)."""
        n = len(self.means)
        self.slot, self.acc, self.cnt = slot, acc, cnt
        for i, v in enumerate(last.tolist()):
            self.means[(slot + i) % n] = v

    def last(self) -> np.ndarray:
        """The means of the `length` slots before the one being filled, oldest first."""
        n = len(self.means)
        pos = (self.slot % n) if self.slot >= 0 else 0
        ring = np.frombuffer(self.means, dtype=np.float32)
        return np.concatenate((ring[pos:], ring[:pos]))


def daily_score(values: np.ndarray, per_day: int, window: int, norm: Normalization) -> float | None:
    """Mean square of the newest `window` day-over-day residuals of `values` (slot means, oldest
    first, NaN where no reading fell), normalized by the residuals before them as `norm` normalizes
    a window by its history. None where it cannot say: half the window's residuals or more missing,
    too few before it, or residuals that spread as widely as the values before the window do (no
    daily pattern: the day before tells nothing)."""
    v = np.asarray(values, dtype=np.float64)
    r = v[per_day:] - v[:-per_day]
    hist, win = r[:-window], r[-window:]
    hist, win = hist[np.isfinite(hist)], win[np.isfinite(win)]
    if len(win) < window / 2 or len(hist) < MIN_HISTORY:
        return None
    m, s = norm.stats(hist)
    before = v[:-window]
    before = before[np.isfinite(before)]
    if np.median(np.abs(hist - m)) >= np.median(np.abs(before - np.median(before))):
        return None
    z = (win - m) / s
    return float(np.mean(z * z))
