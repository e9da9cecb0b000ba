"""What the detector keeps per device and channel: a channel's time scales, its rules on the
raw readings (beyond its range, stuck) and its alert state; a device's channels and alert.
"""

from __future__ import annotations

import math
from array import array

from gateway.detect.settings import Tunables
from gateway.detect.windows import Scale

_MIN_CHANGES = 32  # changes of value before runs of identical readings are judged
_MIN_STUCK = 8  # the shortest run of identical readings that can be "stuck"
OUT_OF_RANGE = 1  # what `Channel.rules` found, as bits: a reading beyond the range (or held after one)
STUCK = 2  # a run of identical readings longer than the channel's usual


class Channel:
    """Everything the detector keeps for one (device, channel): its scales, rules and alert state."""

    __slots__ = (
        "cfg",
        "changes",
        "cleared",
        "hi",
        "hold",
        "interval",
        "lag",
        "lag_length",
        "last",
        "likelihood",
        "lo",
        "longest",
        "lpos",
        "over",
        "raised",
        "run",
        "saved",
        "scales",
        "seen",
        "step",
        "t_last",
    )

    def __init__(self, cfg: Tunables, base: int, window: int, history: int) -> None:
        self.cfg = cfg
        # The range takes a reading in only `window` readings later, so that a drift is measured
        # against where the channel was, not against where it has drifted to. The readings wait
        # here: appended up to `window` (a device heard a few times costs a few), then a ring.
        self.lag = array("d")
        self.lag_length = window
        self.lpos = 0
        # A tuple, 32 bytes smaller than a list: a channel's scales are fixed by its settings.
        self.scales = tuple(Scale(base * s, window, history) for s in sorted(set(cfg.scales)))
        self.seen = 0
        self.saved = 0  # `seen` when the channel was last written to the state database
        self.over = 0
        self.raised = False
        self.cleared = 0  # `seen` when its alert last cleared: scales whose window still holds it are muted
        self.likelihood = 0.0
        self.lo = math.inf  # the range of every reading so far
        self.hi = -math.inf
        self.hold = 0  # readings left for which an out-of-range reading keeps the likelihood at 1
        self.last = math.nan  # runs of identical readings
        self.run = 0
        self.longest = 0
        self.changes = 0
        self.step = math.inf  # the smallest change between readings: the sensor's resolution, roughly
        # The usual interval between readings, with `daily` on: the daily comparison's slots are sized by it.
        self.t_last = math.nan
        self.interval = 0.0

    def clock(self, t: float) -> None:
        """Learn the usual interval from a reading at time t; an interval of twice that or more is
        a silence, not a new usual."""
        d = t - self.t_last
        self.t_last = t
        if not d > 0:  # the first reading (NaN), or one out of order
            return
        iv = self.interval
        if iv == 0.0:
            self.interval = d
        elif d < 2.0 * iv:
            self.interval = iv + (d - iv) / 16.0

    def rules(self, x: float, hold: int) -> int:
        """Update range and runs with x; OUT_OF_RANGE and STUCK bits for what x is (see the settings).

        An out-of-range reading stays anomalous for `hold` readings, while it is in the model's
        window, so that the alert it raises does not clear at the next ordinary reading.
        """
        # Once per reading: locals and comparisons instead of min/max calls. Each comparison keeps
        # the old value exactly where min/max would.
        cfg = self.cfg
        tol = cfg.range_tolerance
        if tol > 0:
            lo, hi, step = self.lo, self.hi, self.step
            # Two steps of resolution at least: a 10 mV battery ADC is not out of range by one step.
            margin = (hi - lo) * tol
            resolution = 2.0 * step if step < math.inf else 0.0
            if resolution > margin:  # noqa: PLR1730 (max() costs a call per reading)
                margin = resolution
            if margin > 0 and (x > hi + margin or x < lo - margin):
                self.hold = hold
            lag = self.lag
            if len(lag) < self.lag_length:
                lag.append(x)  # nothing leaves the lag yet
            else:
                lpos = self.lpos
                old = lag[lpos]
                lag[lpos] = x
                self.lpos = lpos + 1 if lpos + 1 < len(lag) else 0
                if old < lo:
                    self.lo = old
                if old > hi:
                    self.hi = old
        run = self.run
        if x == self.last:
            run += 1
        else:
            if run:
                change = abs(x - self.last)
                if change < self.step:  # noqa: PLR1730
                    self.step = change
            if run > self.longest:  # noqa: PLR1730
                self.longest = run
            self.last = x
            run = 1
            self.changes += 1
        self.run = run
        found = 0
        if self.hold > 0:
            self.hold -= 1
            found = OUT_OF_RANGE
        # Stuck: at least _MIN_STUCK long and longer than twice the longest run before.
        if cfg.stuck_runs and self.changes >= _MIN_CHANGES and run >= _MIN_STUCK and run > 2 * self.longest:
            found |= STUCK
        return found


class Device:
    """A device's channels, those it ignores, and its alert state."""

    __slots__ = ("channels", "ignored", "raised", "since")

    def __init__(self) -> None:
        self.channels: dict[str, Channel] = {}
        self.ignored: tuple[str, ...] = ()  # rarely any: an empty tuple costs nothing, an empty set 216 bytes
        self.raised = False
        self.since = 0.0  # time of the raise, for the alert id
