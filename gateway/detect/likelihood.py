"""Anomaly likelihood: how unusual a time scale's recent model scores are against its own past.

A raw score says little alone: a noisy sensor's windows reconstruct worse than a quiet one's.
So each scale judges its scores against the history of its own, Numenta-style, and yields a
likelihood in [0, 1] that is comparable across channels and models.
"""

from __future__ import annotations

import math
from array import array

from gateway.detect.settings import Tunables

_SCORE_FLOOR = 1e-4  # added before the log: scores this small are all "fits perfectly"
_MIN_SCORES = 64  # scores before the likelihood is judged at all (the warm-up is usually longer)
_MIN_STD = 0.3  # in log-score units: score changes within ~30% are never "unlikely"
_MIN_VAR = _MIN_STD * _MIN_STD
_WINSOR = 3.0  # past means further than this many sigmas count as this far in the history
# Shared by every stream not scored yet, a device's coarse scales for its first 64 x k readings:
# each gets its own array with its first score (an array costs 64 bytes before its values).
_NO_SCORES = array("d")


class ScoreLikelihood:
    """The likelihood state of one stream of scores, a time scale's (`Scale` extends it): the
    last `average` log-scores, and the running mean and variance of their means. Its settings
    (`average`, `history`, `low_scores`) come with each call from the channel's Tunables, shared by
    every channel with the same settings: copied into every scale they cost 16 bytes a scale."""

    __slots__ = ("hcount", "hmean", "hvar", "likelihood", "recent", "rpos", "rsum")

    def __init__(self) -> None:
        self.likelihood: float | None = None
        self.recent = _NO_SCORES
        self.rpos = 0
        self.rsum = 0.0
        self.hcount = 0  # scores seen, up to `history`
        self.hmean = 0.0
        self.hvar = 0.0

    def update_likelihood(self, score: float, cfg: Tunables) -> float | None:
        """Likelihood that the recent scores are abnormal, given this new score.

        Numenta-style: the mean of the last `average` log-scores against a Gaussian of the
        history of such means; z -> u = -log10(tail probability) -> 1 - 2^(-u/5), so 0.5
        is a 1e-5 tail, 0.75 a 1e-10 tail. None while the history is too short to judge.
        """
        # Once per scored window: locals and comparisons instead of attribute traffic and min/max calls.
        t = math.log(score + _SCORE_FLOOR)  # squared errors are heavy-tailed; their log is near normal
        recent = self.recent
        if recent is _NO_SCORES:
            recent = self.recent = array("d", bytes(8 * cfg.average))
        n_avg = len(recent)
        rpos = self.rpos
        self.rsum = rsum = self.rsum + (t - recent[rpos])
        recent[rpos] = t
        self.rpos = rpos + 1 if rpos + 1 < n_avg else 0
        hcount = self.hcount
        avg = rsum / (hcount + 1 if hcount < n_avg else n_avg)
        hmean = self.hmean
        hvar = self.hvar
        delta = avg - hmean
        result: float | None = None
        # Mean and variance of the past means, as Numenta's history holds means: their spread is
        # that of what is compared. Exponentially weighted over `history` scores (plain averages
        # until then): the same as a window of that length, in two numbers instead of an array.
        # An anomaly enters winsorized at 3 sigma: it must not widen the spread that the next
        # anomaly is measured against (Numenta's history takes it in whole).
        if hcount >= _MIN_SCORES:
            std = math.sqrt(hvar) if hvar > _MIN_VAR else _MIN_STD
            z = delta / std
            if cfg.low_scores:
                z = abs(z)
            result = 1.0 - 2.0 ** (-_neg_log10_tail(z) / 5.0)
            limit = _WINSOR * std
            # max(-limit, min(limit, delta)), the same for every input (NaN included) without the calls.
            if not delta < limit:
                delta = limit
            elif not delta > -limit:
                delta = -limit
        horizon = cfg.history
        w = 1.0 / (hcount + 1 if hcount < horizon else horizon)
        self.hmean = hmean + w * delta
        self.hvar = (1.0 - w) * (hvar + w * delta * delta)
        if hcount < horizon:
            self.hcount = hcount + 1
        self.likelihood = result
        return result

    def stats(self) -> list[float]:
        """The running statistics as they are, so that a restart continues bit for bit."""
        return [self.rsum, self.hcount, self.hmean, self.hvar]

    def restore(self, recent: array, stats: list[float], cfg: Tunables) -> None:
        """Into a new, empty state: the saved recent log-scores (oldest first) and `stats()`."""
        if recent:
            self.recent = array("d", bytes(8 * cfg.average))
        for v in recent[-len(self.recent) :]:
            self.recent[self.rpos] = v
            self.rpos = (self.rpos + 1) % len(self.recent)
        rsum, hcount, self.hmean, self.hvar = stats
        self.hcount = min(int(hcount), cfg.history)
        # A changed `average` keeps the newest means only: re-add them.
        self.rsum = rsum if len(recent) <= len(self.recent) else math.fsum(self.recent)


_SQRT_2 = math.sqrt(2.0)
_SQRT_2PI = math.sqrt(2.0 * math.pi)
_LN_10 = math.log(10.0)


def _neg_log10_tail(z: float) -> float:
    """-log10 of the upper tail probability of a standard normal at z, without underflow."""
    if z < 8.0:
        return -math.log10(0.5 * math.erfc(z / _SQRT_2))
    # Mills ratio asymptote: Q(z) ~ phi(z) / z, within 2% of the exact log from z = 8 on.
    return (z * z / 2.0 + math.log(z * _SQRT_2PI)) / _LN_10
