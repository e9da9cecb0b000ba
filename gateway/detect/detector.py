"""Online anomaly detection per device and channel, and the alerts a person sees.

reading -> per channel and time scale (1, 4, 16 readings per value) a ring buffer -> robust
normalization (the model's manifest) -> ONE batched model call for every window ready in an
`observe` -> anomaly likelihood of each score against the scale's own past scores (and, with
`daily` on, of each window's comparison with the day before, gateway.detect.seasonal) -> the
channel's likelihood (the highest of its scales but those whose window still reaches back into
its last alert, which was reported and has cleared; or 1 for a reading beyond the channel's
range or a stuck run) -> per-device alert state (warm-up, minimum duration, hysteresis) ->
`AlertTransition` (the MQTT alert payload). A channel raising while its device's alert is
raised is a second anomaly: a new `raised` with a new id; the device's one `cleared`, carrying
the newest id, ends every alert raised before it.

One module a step: windows (ring buffers, normalized batched scoring), likelihood, seasonal,
channel (rules and state per channel), alerts, persistence (the state database), settings; this
one composes them.

The per-reading path is plain Python floats on purpose: a numpy call costs about a
microsecond, more than the arithmetic it would replace; numpy is used where it batches.
"""

from __future__ import annotations

import fnmatch
import math
from array import array
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from gateway.detect import persistence
from gateway.detect.alerts import AlertTransition, alert_step, device_transition
from gateway.detect.channel import STUCK, Channel, Device
from gateway.detect.likelihood import ScoreLikelihood
from gateway.detect.seasonal import DaySlots, daily_score, fits, slots_per_day
from gateway.detect.settings import DetectorSettings, Tunables
from gateway.detect.windows import Scale, Scorer, score_windows
from gateway.records import Reading
from gateway.service.state import StateStore

_MIN_HISTORY_FRACTION = 4  # score once a quarter of the normalization history is there
_SAVE_EVERY = 16  # new readings of a channel before a periodic flush writes it: a window's worth


@dataclass(slots=True)
class DetectorOutput:
    """The detector's view of one reading. `scores` are raw model scores, `likelihood` in [0, 1];
    both only for channels whose window was scored; `score` = max likelihood (0 if none)."""

    device: str
    time: float
    scores: dict[str, float] = field(default_factory=dict)
    likelihood: dict[str, float] = field(default_factory=dict)
    score: float = 0.0
    alert_state: Literal["ok", "raised"] = "ok"
    transition: AlertTransition | None = None


class Detector:
    """Scores readings as they arrive; see the module docstring. Not thread-safe: one caller."""

    def __init__(self, scorer: Scorer, settings: DetectorSettings | None = None, store: StateStore | None = None) -> None:
        self.settings = settings or DetectorSettings()
        self.store = store
        self.scorer = scorer
        self._devices: dict[str, Device] = {}
        # Channels written at the next complete flush though unchanged (a model reload re-encodes them);
        # a changed channel is one whose `seen` moved past its `saved`, no entry per reading.
        self._rewrite: set[tuple[str, str]] = set()
        self._dirty_devices: set[str] = set()
        # Effective settings by the overrides that apply (channel, device, device/channel): the
        # channels that share them share one object (about 1.4 KB each).
        self._resolved: dict[tuple[str | None, str | None, str | None], Tunables] = {}
        if store is not None:
            persistence.load(store, self.model_label, self._devices, self._new_channel)

    @property
    def model_label(self) -> str:
        return f"{self.scorer.name}@{self.scorer.version}"

    def _new_channel(self, device: str, name: str) -> Channel | None:
        settings = self.settings
        specific = f"{device}/{name}"
        key = (name if name in settings.channels else None, device if device in settings.devices else None,
               specific if specific in settings.channels else None)
        cfg = self._resolved.get(key)
        if cfg is None:
            cfg = self._resolved[key] = settings.resolve(device, name)
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in cfg.ignore):
            return None
        window = cfg.window or self.scorer.window
        if window % self.scorer.window:
            raise ValueError(
                f"detector window {window} for {device}/{name} is not a multiple of the model's window "
                f"{self.scorer.window}"
            )
        return Channel(cfg, window // self.scorer.window, self.scorer.window, self.scorer.normalization.history)

    def observe(self, readings: list[Reading]) -> list[DetectorOutput]:
        """One output per reading, in order; every window ready here goes to the model in one call.

        Two passes around that call: the first feeds each value to its channel's rules and
        buffers and collects the windows ready; the second turns their scores into likelihoods
        and alert states, reading by reading. This runs per value at the gateway's full rate:
        locals, no per-value dicts.
        """
        W = self.scorer.window
        norm = self.scorer.normalization
        ready_at = W + norm.history // _MIN_HISTORY_FRACTION
        devices = self._devices
        isfinite = math.isfinite
        devs: list[Device] = []
        windows: list[array] = []
        scored: list[Scale] = []  # the scale of each window
        floors: list[float] = []  # the least spread each window is normalized by: its channel's resolution
        grids: list[float] = []  # the grid each window's values lie on: its channel's resolution per value
        daily: list[tuple[Scale, float | None]] = []  # each daily comparison: its scale and score
        n_windows = 0
        # Per value scored or flagged: (reading index, channel name, channel, the channel's reading
        # count then (the warm-up is judged per reading), flagged by the rules, end of its windows,
        # end of its daily comparisons).
        work: list[tuple[int, str, Channel, int, bool, int, int]] = []
        for i, r in enumerate(readings):
            device = r.device
            dev = devices.get(device)
            if dev is None:
                dev = devices[device] = Device()
            devs.append(dev)
            channels = dev.channels
            for name, x in r.values.items():
                ch = channels.get(name)
                if ch is None:
                    if name in dev.ignored:
                        continue
                    ch = self._new_channel(device, name)
                    if ch is None:
                        dev.ignored += (name,)
                        continue
                    channels[name] = ch
                if not isfinite(x):
                    continue  # a sensor error value is not a reading to learn from
                seen = ch.seen = ch.seen + 1
                daily_on = ch.cfg.daily
                if daily_on:
                    ch.clock(r.time)
                found = ch.rules(x, W)
                # During the warm-up the rules only learn (range, runs); after it they can flag.
                flag = found != 0 and seen > ready_at and seen > ch.cfg.warmup
                first = n_windows
                # A stuck sensor's readings say nothing of what it measures: its time scales do not
                # take them. Learned, they became the normalization history that the sensor's first
                # ordinary readings after the run were judged against, a spread of nearly nothing,
                # and raised a second alert one window after the stuck alert cleared.
                scales = () if found & STUCK else ch.scales
                for scale in scales:
                    if scale.add(x) and scale.seen >= ready_at:
                        windows.append(scale.window())
                        scored.append(scale)
                        # A mean of k readings quantised by one step flickers by about step / sqrt(k),
                        # and lies on a grid of step / k.
                        if ch.step < math.inf:
                            floors.append(ch.step * ch.cfg.resolution_steps / math.sqrt(scale.k))
                            grids.append(ch.step / scale.k)
                        else:
                            floors.append(0.0)
                            grids.append(0.0)
                        n_windows += 1
                compared = False
                if daily_on:  # a loop of its own: the default path pays one test for it
                    for scale in scales:
                        day = scale.day
                        if day is None and seen > W:  # the interval learned from a window's worth
                            per_day = slots_per_day(ch.interval, scale.k)
                            if fits(per_day, W, scale.length):
                                day = scale.day = DaySlots(per_day, scale.length)
                        if day is not None and day.add(r.time, x):
                            daily.append((scale, daily_score(day.last(), day.per_day, W, norm)))
                            compared = True
                if flag or n_windows > first or compared:
                    work.append((i, name, ch, seen, flag, n_windows, len(daily)))

        scores: list[float] = score_windows(self.scorer, windows, floors, grids).tolist() if windows else []
        outputs: list[DetectorOutput] = []
        j = w = d = 0
        n_work = len(work)
        for i, (r, dev) in enumerate(zip(readings, devs)):
            out_scores: dict[str, float] = {}
            likelihood: dict[str, float] = {}
            late: list[str] = []  # flagged without a likelihood of their own: they come last
            newly = False  # a channel raised at this reading
            while w < n_work and work[w][0] == i:
                _, name, ch, seen, flag, end, daily_end = work[w]
                w += 1
                cfg = ch.cfg
                like: float | None = None
                if j < end or d < daily_end:
                    if j < end:
                        out_scores[name] = scores[j]  # the finest scale scored at this reading
                    judged = False
                    while j < end:
                        if scored[j].update_likelihood(scores[j], cfg) is not None:
                            judged = True
                        j += 1
                    while d < daily_end:
                        scale, day_score = daily[d]
                        d += 1
                        season = scale.season
                        if day_score is None:  # no daily pattern now: the comparison says nothing
                            if season is not None:
                                season.likelihood = None
                        else:
                            if season is None:
                                season = scale.season = ScoreLikelihood()
                            if season.update_likelihood(day_score, cfg) is not None:
                                judged = True
                    if judged:
                        # The channel is as anomalous as its most anomalous scale (coarse ones hold
                        # their last value between their updates), leaving out a scale whose window
                        # still reaches back into the channel's last alert: that anomaly was reported
                        # and has cleared, and a 16-reading scale's window holds it for 512 readings.
                        like = 0.0
                        since = seen - ch.cleared
                        for sc in ch.scales:
                            v = sc.likelihood
                            if v is not None and v > like and since >= sc.k * W:
                                like = v
                        if cfg.daily:  # a loop of its own: the default path does not pay for it
                            for sc in ch.scales:
                                season = sc.season
                                if season is not None and (v := season.likelihood) is not None and v > like \
                                        and since >= sc.k * W:
                                    like = v
                        likelihood[name] = like
                if flag:
                    if like is None:
                        late.append(name)
                    else:
                        likelihood[name] = 1.0
                    like = 1.0
                if like is None:
                    continue
                ch.likelihood = like
                if ch.raised or like >= cfg.raise_threshold:
                    was = ch.raised
                    ch.raised, ch.over = alert_step(was, ch.over, like, seen, cfg)
                    if ch.raised and not was:
                        newly = True
                    elif was and not ch.raised:
                        ch.cleared = seen
                else:
                    ch.over = 0  # alert_step's answer for a quiet channel, without the call
            for name in late:
                likelihood[name] = 1.0
            out = DetectorOutput(r.device, r.time, out_scores, likelihood, max(likelihood.values()) if likelihood else 0.0)
            raised = False
            for ch in dev.channels.values():
                if ch.raised:
                    raised = True
                    break
            # A channel raising while its device's alert is raised is a second anomaly: a new alert
            # (a new id), reported at once; the device's one clear ends it and the alerts before it.
            if raised != dev.raised or (raised and newly):
                self._alert_changed(out, dev, raised)
            elif raised:
                out.alert_state = "raised"
            outputs.append(out)
        return outputs

    def known_channels(self) -> dict[str, list[str]]:
        """Every device's channels, scored or ignored, as heard or loaded from the state database."""
        return {device: [*dev.channels, *dev.ignored] for device, dev in self._devices.items()}

    def raised_channels(self, device: str) -> list[str]:
        """The device's channels in alert now: the channels that moved."""
        dev = self._devices.get(device)
        return [n for n, ch in dev.channels.items() if ch.raised] if dev is not None else []

    def scale_likelihoods(self, device: str) -> dict[str, list[tuple[int, float | None]]]:
        """Each of the device's channels' time scales: the readings its window spans and the
        likelihood it last judged (None before its first), then the same for each scale's daily
        comparison. The channel's own likelihood is the highest of these, muted or not as its last
        alert says (`observe`)."""
        dev = self._devices.get(device)
        W = self.scorer.window
        return {
            n: [(sc.k * W, sc.likelihood) for sc in ch.scales]
            + [(sc.k * W, sc.season.likelihood if sc.season is not None else None) for sc in ch.scales]
            for n, ch in dev.channels.items()
        } if dev else {}

    def warming_up(self, device: str) -> dict[str, float]:
        """The device's channels still in their warm-up, each with the fraction of it done (0 to
        1, exclusive): a channel scores once its windows and normalization history are there and
        may raise alerts after `warmup` readings. A channel past both is not listed."""
        dev = self._devices.get(device)
        if dev is None:
            return {}
        ready_at = self.scorer.window + self.scorer.normalization.history // _MIN_HISTORY_FRACTION
        out: dict[str, float] = {}
        for name, ch in dev.channels.items():
            needed = max(ch.cfg.warmup, ready_at)
            if ch.seen < needed:
                out[name] = ch.seen / needed
        return out

    def _alert_changed(self, out: DetectorOutput, dev: Device, raised: bool) -> None:
        """The device's alert was raised or cleared at `out`: record it and attach the transition."""
        self._dirty_devices.add(out.device)
        out.alert_state = "raised" if raised else "ok"
        out.transition = device_transition(
            out.device, dev, raised, out.time, out.score, out.likelihood, self.model_label
        )

    # -- state: persisted in the state database, kept across a model reload ----------------------

    def flush(self, complete: bool = True) -> int:
        """Write what changed since the last flush in one transaction; returns the records written.

        A periodic flush (`complete=False`) writes a channel only once it has _SAVE_EVERY readings
        since its last write. A channel's record is its whole buffers: with 10,000 devices, each
        heard less often than the flush runs, writing every changed channel wrote a whole record
        per reading (34 GB a day). The price: a crash costs a channel at most that many readings
        of what it learned, never an alert (the outbox holds them), and the device records (alert
        state) are always written. An alert and a stop write everything.
        """
        if self.store is None:
            return 0
        # A scan of every channel, a comparison each: a set of the changed ones cost a tuple and a
        # set entry a channel heard (about 300 bytes a device), kept until the channel is written.
        rewrite = self._rewrite
        if complete:
            due = [(device, name) for device, dev in self._devices.items() for name, ch in dev.channels.items()
                   if ch.seen != ch.saved or (rewrite and (device, name) in rewrite)]
        else:
            due = [(device, name) for device, dev in self._devices.items() for name, ch in dev.channels.items()
                   if ch.seen - ch.saved >= _SAVE_EVERY]
        written = len(due) + len(self._dirty_devices)
        if written:
            persistence.save(self.store, self._devices, due, self._dirty_devices, self.model_label)
        for device, name in due:
            ch = self._devices[device].channels[name]
            ch.saved = ch.seen
        if complete:
            rewrite.clear()
        elif rewrite:
            rewrite.difference_update(due)
        self._dirty_devices.clear()
        return written

    def replace_scorer(self, scorer: Scorer) -> None:
        """Switch models (SIGHUP reload) keeping buffers and alert state; score histories are kept
        for the same model and relearned for a different one (its scores are on another scale)."""
        old_label = self.model_label
        old = self.scorer
        self.scorer = scorer
        try:
            rebuilt: dict[str, dict[str, Channel]] = {}
            for device, dev in self._devices.items():
                rebuilt[device] = {}
                for name, ch in dev.channels.items():
                    new = self._new_channel(device, name)
                    assert new is not None  # ignore lists did not change
                    persistence.decode_channel(new, persistence.encode_channel(ch, old_label), self.model_label)
                    rebuilt[device][name] = new
        except ValueError:
            self.scorer = old  # e.g. a configured window the new model cannot take
            raise
        for device, channels in rebuilt.items():
            self._devices[device].channels = channels
            self._rewrite.update((device, name) for name in channels)

