"""Per-channel windows -> model scores: a ring buffer per time scale, and one normalized,
batched model call for every window ready.

A channel is watched on several time scales (1, 4, 16 readings per value): each keeps block
means of k readings, and its newest `window` values are scored against the history before them.
"""

from __future__ import annotations

from array import array
from typing import Protocol

import numpy as np

from gateway.detect.likelihood import ScoreLikelihood
from gateway.detect.seasonal import DaySlots
from gateway.detect.scoring import Normalization

_SCORE_CAP = 1e30  # scores are capped here: far beyond any alert, still finite
_SLACK = 32  # buffer values past a scale's length: see Scale
_FIRST = 16  # values a scale's buffer takes at its first value: it doubles as values arrive, up to its length
# Values are kept as float32, half the memory of float64 and what the model takes anyway: a Cayenne
# LPP reading (16 bits at a fixed resolution) and a mean of a few are within its 7 digits. Beyond its
# range a value would become inf, and inf - inf a NaN in the window's statistics: stored at the edge.
_F32_MAX = float(np.finfo(np.float32).max)
_NO_VALUES = array("f")  # shared by every scale without values yet; its own array comes with its first


class Scorer(Protocol):
    """What the detector needs of a model (gateway.detect.scoring.OnnxScorer is one)."""

    window: int
    name: str
    version: str
    normalization: Normalization

    def score(self, windows: np.ndarray) -> np.ndarray: ...


class Scale(ScoreLikelihood):
    """One time scale of a channel: block means of k readings in a ring buffer, (inherited) the
    anomaly likelihood state of the model's scores of those windows, and (with `daily` on, where a
    day fits) the clock's slots of its readings and the likelihood state of their daily comparison
    (gateway.detect.seasonal)."""

    __slots__ = ("acc", "buf", "cnt", "day", "end", "k", "length", "season", "seen")

    def __init__(self, k: int, window: int, history: int) -> None:
        super().__init__()
        self.k = k
        self.length = window + history
        # The last `length` values are always one contiguous slice, values[end - length : end]:
        # appended after each other, and once the slack past them is used up, the last ones move
        # to the front (a memmove every _SLACK values). A ring would need two slices per window,
        # a buffer of twice the length twice the memory. Written through the array (a Python
        # float store, several times cheaper than numpy's), read through numpy views made when
        # needed (a view kept would forbid the growth). It grows as values arrive: a device heard
        # a few times costs a few values, not a full buffer per scale.
        self.buf = _NO_VALUES
        self.end = 0
        self.seen = 0  # block means pushed
        self.acc = 0.0  # sum and count of the block being filled
        self.cnt = 0
        self.season: ScoreLikelihood | None = None  # made at the first daily comparison
        self.day: DaySlots | None = None  # made once the channel's interval is known, where a day fits

    def add(self, x: float) -> bool:
        """Take one reading; True when it completed a block (a new value in the buffer)."""
        k = self.k
        if k > 1:
            acc = self.acc + x
            cnt = self.cnt + 1
            if cnt < k:
                self.acc = acc
                self.cnt = cnt
                return False
            x = acc / k
            self.acc = 0.0
            self.cnt = 0
        end = self.end
        buf = self.buf
        if end == len(buf):
            full = self.length + _SLACK
            if end < full:
                if buf is _NO_VALUES:
                    buf = self.buf = array("f")
                buf.frombytes(bytes(4 * min(max(end, _FIRST), full - end)))
            else:
                keep = self.length - 1
                buf[:keep] = buf[end - keep : end]
                end = keep
        if x > _F32_MAX:
            x = _F32_MAX
        elif x < -_F32_MAX:
            x = -_F32_MAX
        buf[end] = x
        self.end = end + 1
        self.seen += 1
        return True

    def window(self) -> array:
        """A copy of all the values there are, up to `length`, oldest first: the window to score
        and its history. A copy, as a later reading in the same batch moves the buffer; an array
        slice, a tenth of the cost of a numpy view and its copy (once per window scored)."""
        end = self.end
        return self.buf[end - min(self.seen, self.length) : end]

    def last_values(self, n: int) -> np.ndarray:
        """The last n values (n <= length), oldest first, as a float32 view."""
        return np.frombuffer(self.buf, dtype=np.float32, count=n, offset=4 * (self.end - n))

    def load_values(self, values: np.ndarray) -> None:
        """Into this new, empty scale: its last values, oldest first (at most `length`), as if pushed
        (float64 ones, of a record from before float32, rounded and kept in range as `add` does)."""
        values = np.clip(values[-self.length :], -_F32_MAX, _F32_MAX).astype(np.float32)
        self.buf = array("f", values.tobytes())
        self.end = len(values)


def score_windows(scorer: Scorer, windows: list[array], floors: list[float], grids: list[float]) -> np.ndarray:
    """Normalize as the model's manifest says, each window's spread at least its floor, its values
    on its grid (Normalization), and score all windows in one model call."""
    W = scorer.window
    norm = scorer.normalization
    with np.errstate(over="ignore", invalid="ignore"):  # absurd readings: capped below
        sizes = list(map(len, windows))
        floor = np.array(floors)
        grid = np.array(grids)
        # The float32 values are widened once, here, for the normalization's float64 arithmetic.
        if sizes.count(sizes[0]) == len(sizes):  # past warm-up all windows have one length: one call
            block = np.frombuffer(b"".join(windows), dtype=np.float32).astype(np.float64).reshape(len(windows), -1)
            rows = norm.apply(block[:, :-W], block[:, -W:], floor, grid)
        else:
            groups: dict[int, list[int]] = {}
            for i, size in enumerate(sizes):
                groups.setdefault(size, []).append(i)
            rows = np.empty((len(windows), W), dtype=np.float32)
            for size, idx in groups.items():
                joined = b"".join([windows[i] for i in idx])
                block = np.frombuffer(joined, dtype=np.float32).astype(np.float64).reshape(len(idx), size)
                rows[idx] = norm.apply(block[:, :-W], block[:, -W:], floor[idx], grid[idx])
        # The model clips the window to +-clip and so cannot tell a window far outside the recent
        # range from one at its edge (a flat window at -clip even reconstructs well). What the clip
        # hides is added back as its squared excess, on the scale of the model's squared error.
        excess = np.maximum(np.abs(rows.astype(np.float64)) - norm.clip, 0.0)
        # nan_to_num costs ~10 us a call even when there is nothing to replace: only when needed.
        if not np.isfinite(rows).all():
            rows = np.nan_to_num(rows, nan=0.0)
        scores = scorer.score(rows).astype(np.float64) + np.add.reduce(excess * excess, axis=1) / W
        scores = np.minimum(scores, _SCORE_CAP)
    # A reading like 1e300 must not poison the running statistics with inf or NaN.
    return scores if np.isfinite(scores).all() else np.nan_to_num(scores, nan=_SCORE_CAP)
