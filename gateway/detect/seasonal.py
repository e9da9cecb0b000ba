"""A time scale's newest window against the same hours a day before: a daily pattern broken.

The model judges a window by its shape against the readings just before it, so a day whose bump
is missing, lower or flattened looks ordinary to it: each of its windows is a shape the channel
shows every day. Compared with the day before, value for value, it is not. The day is the one
fixed parameter, a physical prior (sensors outdoors, in buildings, on a duty cycle follow one), not
a tuned one; a channel that does not follow it is left to the model (`daily_score` says None).

Per window: the residuals r = v[i] - v[i - P] of a scale's block means, P the blocks in a day;
the newest `window` of them normalized by the median and spread of those before (as the model's
windows are, by `Normalization.stats`), their mean square the score, judged by the same likelihood as the
model's scores. numpy only: runs on the Pi.
"""

from __future__ import annotations

import numpy as np

from gateway.detect.scoring import Normalization

DAY_S = 86400.0
MIN_HISTORY = 16  # residuals before the window to normalize it by, at least


def period_blocks(interval_s: float, k: int) -> int:
    """Blocks of k readings in a day, at the channel's usual interval between readings (0 if unknown)."""
    return round(DAY_S / (k * interval_s)) if interval_s > 0 else 0


def fits(period: int, window: int, length: int) -> bool:
    """Whether a scale's buffer of `length` values holds a day, a window and a history to compare them."""
    return period >= 2 and period + window + MIN_HISTORY <= length


def daily_score(values: np.ndarray, period: int, window: int, norm: Normalization) -> float | None:
    """Mean square of the newest `window` day-over-day residuals of `values` (a scale's block means,
    oldest first), normalized by the residuals before them as `norm` normalizes a window by its
    history; None where those residuals spread as widely as the values before the window do (no
    daily pattern: the day before tells nothing)."""
    v = np.asarray(values, dtype=np.float64)
    r = v[period:] - v[:-period]
    hist, win = r[:-window], r[-window:]
    m, s = norm.stats(hist)
    before = v[:-window]
    if np.median(np.abs(hist - m)) >= np.median(np.abs(before - np.median(before))):
        return None
    z = (win - m) / s
    return float(np.mean(z * z))
