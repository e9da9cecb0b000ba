"""A time scale's newest window against the same hours a day before: a daily pattern broken.

The model judges a window by its shape against the readings just before it, so a day whose bump
is missing, lower or flattened looks ordinary to it: each of its windows is a shape the channel
shows every day. Compared with the day before, value for value, it is not. The day is the one
fixed parameter, a physical prior (sensors outdoors, in buildings, on a duty cycle follow one), not
a tuned one; a channel that does not follow it is left to the model (`daily_score` says None).

Per window: the residuals r = v[i] - v[j] of a scale's block means, j the block whose time is
nearest a day before block i's. Matched by time, not by counting blocks back: a radio loses
packets, and each lost one would shift "a block count back" by a reading. The newest `window`
residuals normalized by the median and spread of those before (as the model's windows are, by
`Normalization.stats`), their mean square the score, judged by the same likelihood as the model's
scores. numpy only: runs on the Pi.
"""

from __future__ import annotations

import numpy as np

from gateway.detect.scoring import Normalization

DAY_S = 86400.0
MIN_HISTORY = 16  # residuals before the window to normalize it by, at least


def daily_score(values: np.ndarray, times: np.ndarray, window: int, norm: Normalization) -> float | None:
    """Mean square of the newest `window` day-over-day residuals of `values` (a scale's block means,
    oldest first, each completed at `times` in seconds), normalized by the residuals before them as
    `norm` normalizes a window by its history; a block with no block a day before it (none within half
    the usual block's duration: readings lost, a silence) is left out. None where it cannot say: half
    the window's blocks or more unmatched, too few residuals before the window, blocks of half a day
    or more, or residuals that spread as widely as the values before the window do (no daily pattern:
    the day before tells nothing)."""
    v = np.asarray(values, dtype=np.float64)
    t = np.asarray(times, dtype=np.float64)
    n = len(t)
    block = float(np.median(np.diff(t)))  # the usual block's duration: a silence is one long diff
    if not 0 < block < DAY_S / 2:
        return None
    target = t - DAY_S
    j = np.searchsorted(t, target).clip(1, n - 1)
    j = np.where(np.abs(t[j - 1] - target) <= np.abs(t[j] - target), j - 1, j)
    matched = np.abs(t[j] - target) <= block / 2
    r = v - v[j]
    hist, win = r[:-window][matched[:-window]], r[-window:][matched[-window:]]
    # A lost reading leaves its block of the next day unmatched; a window compared on half its blocks
    # still says whether the day repeats.
    if len(win) < window / 2 or len(hist) < MIN_HISTORY:
        return None
    m, s = norm.stats(hist)
    before = v[:-window]
    if np.median(np.abs(hist - m)) >= np.median(np.abs(before - np.median(before))):
        return None
    z = (win - m) / s
    return float(np.mean(z * z))
