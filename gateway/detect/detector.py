"""Online anomaly detection per device and channel, and the alerts a person sees.

reading -> per channel and time scale (1, 4, 16 readings per value) a ring buffer -> robust
normalization (the model's manifest) -> ONE batched model call for every window ready in an
`observe` -> anomaly likelihood of each score against the scale's own past scores -> the
channel's likelihood (the highest of its scales, or 1 for a reading beyond the channel's
range or a stuck run) -> per-device alert state (warm-up, minimum duration, hysteresis) ->
`AlertTransition` (the MQTT alert payload).

The per-reading path is plain Python floats on purpose: a numpy call costs about a
microsecond, more than the arithmetic it would replace; numpy is used where it batches.
"""

from __future__ import annotations

import fnmatch
import itertools
import json
import logging
import math
import struct
from array import array
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)

from gateway.detect.scoring import Normalization
from gateway.records import Reading
from gateway.service.state import StateStore

log = logging.getLogger(__name__)

STATE_NAMESPACE = "detector"
_STATE_VERSION = 1
_MIN_HISTORY_FRACTION = 4  # score once a quarter of the normalization history is there
_SCORE_FLOOR = 1e-4  # added before the log: scores this small are all "fits perfectly"
_SCORE_CAP = 1e30  # scores are capped here: far beyond any alert, still finite
_MIN_SCORES = 64  # scores before the likelihood is judged at all (the warm-up is usually longer)
_MIN_STD = 0.3  # in log-score units: score changes within ~30% are never "unlikely"
_MIN_VAR = _MIN_STD * _MIN_STD
_WINSOR = 3.0  # past means further than this many sigmas count as this far in the history
_MIN_CHANGES = 32  # changes of value before runs of identical readings are judged
_MIN_STUCK = 8  # the shortest run of identical readings that can be "stuck"
_SLACK = 32  # buffer values past a scale's length: see _Scale


class Scorer(Protocol):
    """What the detector needs of a model (gateway.detect.scoring.OnnxScorer is one)."""

    window: int
    name: str
    version: str
    normalization: Normalization

    def score(self, windows: np.ndarray) -> np.ndarray: ...


class _Tunables(BaseModel):
    model_config = ConfigDict(extra="forbid")

    window: int | None = Field(
        None, ge=1,
        description="Readings per scored window; default: the model's window. A multiple k of the model's "
        "window lets it see a k times longer span: values are averaged in groups of k.",
    )
    warmup: int = Field(
        600, ge=0,
        description="Readings of a channel before it may raise an alert (it learns meanwhile); best at least a "
        "daily cycle of the sensor, so that its range and scores are known.",
    )
    raise_threshold: float = Field(
        0.5, gt=0, le=1,
        description="Raise when the anomaly likelihood reaches this. Likelihood 1 - 2^(-u/5) with u = "
        "-log10(chance that the recent scores are normal): 0.35 = a 1e-3 chance, 0.5 = 1e-5, 0.75 = 1e-10.",
    )
    clear_threshold: float = Field(
        0.3, ge=0, lt=1, description="Clear when every raised channel's likelihood falls below this (< raise_threshold)."
    )
    min_duration: int = Field(
        1, ge=1, description="Consecutive readings at or above raise_threshold before the alert is raised."
    )
    ignore: list[str] = Field(
        default_factory=list,
        description="Channel names (shell patterns, e.g. 'battery_*') that are not scored.",
    )
    history: int = Field(
        10000, ge=50,
        description="How many recent scores (per time scale, exponentially weighted) a new one is compared with.",
    )
    average: int = Field(
        2, ge=1, description="Consecutive scores averaged before the comparison (smooths single-reading noise)."
    )
    scales: list[int] = Field(
        [1, 4, 16], min_length=1,
        description="Time scales scored per channel: 1 = windows of the last `window` readings; 4 = of means of "
        "4 readings, a span 4 times as long (slow drifts, daily patterns). The channel's likelihood is the "
        "highest of its scales'.",
    )
    range_tolerance: float = Field(
        0.25, ge=0,
        description="A reading beyond the lowest or highest the channel has ever reported, by more than this "
        "fraction of that range, is anomalous at once (likelihood 1). 0 disables the rule.",
    )
    stuck_runs: bool = Field(
        True,
        description="A run of identical readings at least 8 long and more than twice as long as any the channel "
        "has shown before is anomalous (a stuck sensor).",
    )
    low_scores: bool = Field(
        True,
        description="Also alert on unusually LOW model scores: a stuck sensor's flat readings fit the model "
        "better than its usual noise does.",
    )

    @model_validator(mode="after")
    def _hysteresis(self) -> _Tunables:
        if self.clear_threshold >= self.raise_threshold:
            raise ValueError(
                f"clear_threshold ({self.clear_threshold}) must be below raise_threshold ({self.raise_threshold})"
            )
        return self


_TUNABLE_FIELDS = tuple(_Tunables.model_fields)

# The same fields, all optional: a device or channel table sets only what differs.
DetectorOverrides = create_model(  # type: ignore[call-overload]
    "DetectorOverrides",
    __config__=ConfigDict(extra="forbid"),
    **{
        name: (info.annotation | None, Field(None, description=info.description))  # type: ignore[operator]
        for name, info in _Tunables.model_fields.items()
    },
)


class DetectorSettings(_Tunables):
    """The `[detector]` table. Overrides: `[detector.channels.<channel>]` for a channel name on every
    device, `[detector.devices.<device>]` for one device, `[detector.channels."<device>/<channel>"]`
    for one channel of one device; the more specific wins."""

    devices: dict[str, DetectorOverrides] = Field(  # type: ignore[valid-type]
        default_factory=dict, description="Per-device overrides of the settings above."
    )
    channels: dict[str, DetectorOverrides] = Field(  # type: ignore[valid-type]
        default_factory=dict, description="Per-channel overrides: key '<channel>' or '<device>/<channel>'."
    )

    @model_validator(mode="after")
    def _overrides_valid(self) -> DetectorSettings:
        for where, table in (("devices", self.devices), ("channels", self.channels)):
            for key in table:
                device, _, channel = key.rpartition("/") if where == "channels" else (key, "", "")
                try:
                    self.resolve(device or "", channel)
                except ValueError as e:
                    raise ValueError(f"{where}.{key}: {e}") from None
        return self

    def resolve(self, device: str, channel: str) -> _Tunables:
        """Effective settings of one channel: global < channel < device < device/channel."""
        merged = {name: getattr(self, name) for name in _TUNABLE_FIELDS}
        for override in (self.channels.get(channel), self.devices.get(device), self.channels.get(f"{device}/{channel}")):
            if override is not None:
                merged.update(override.model_dump(exclude_none=True))
        try:
            return _Tunables.model_validate(merged)
        except ValidationError as e:
            raise ValueError("; ".join(f"{'.'.join(map(str, x['loc'])) or 'settings'}: {x['msg']}" for x in e.errors())) from None


@dataclass(frozen=True, slots=True)
class AlertTransition:
    """An alert raised or cleared: exactly the `<base>/<device>/alert` payload.

    `id` names the alert episode (device and raise time in ms): the clear carries the id of the
    alert it ends, so (id, state) is unique and stable across retries and restarts.
    """

    id: str
    device: str
    state: Literal["raised", "cleared"]
    time: float
    score: float
    threshold: float
    channels: dict[str, float]
    model: str

    def to_payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "device": self.device,
            "state": self.state,
            "time": self.time,
            "score": self.score,
            "threshold": self.threshold,
            "channels": dict(self.channels),
            "model": self.model,
        }


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


class _Scale:
    """One time scale of a channel: block means of k readings in a ring buffer, and the
    anomaly likelihood state of the model's scores of those windows."""

    __slots__ = (
        "acc",
        "buf",
        "cnt",
        "end",
        "hcount",
        "hmean",
        "horizon",
        "hvar",
        "k",
        "length",
        "likelihood",
        "recent",
        "rpos",
        "rsum",
        "seen",
        "values",
    )

    def __init__(self, k: int, window: int, history: int, cfg: _Tunables) -> None:
        self.k = k
        self.length = window + history
        # The last `length` values are always one contiguous slice, values[end - length : end]:
        # appended after each other, and once the slack past them is used up, the last ones move
        # to the front (a memmove every _SLACK values). A ring would need two slices per window,
        # a buffer of twice the length twice the memory. Written through the array (a Python
        # float store, several times cheaper than numpy's), read through the view.
        self.buf = array("d", bytes(8 * (self.length + _SLACK)))
        self.values = np.frombuffer(self.buf, dtype=np.float64)
        self.end = 0
        self.seen = 0  # block means pushed
        self.acc = 0.0  # sum and count of the block being filled
        self.cnt = 0
        self.likelihood: float | None = None
        self.recent = array("d", bytes(8 * cfg.average))
        self.rpos = 0
        self.rsum = 0.0
        self.horizon = cfg.history
        self.hcount = 0  # scores seen, up to `horizon`
        self.hmean = 0.0
        self.hvar = 0.0

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
            keep = self.length - 1
            buf[:keep] = buf[end - keep : end]
            end = keep
        buf[end] = x
        self.end = end + 1
        self.seen += 1
        return True

    def window(self) -> np.ndarray:
        """A copy of all the values there are, up to `length`, oldest first: the window to score
        and its history. A copy, as a later reading in the same batch moves the buffer."""
        end = self.end
        return self.values[end - min(self.seen, self.length) : end].copy()

    def last_values(self, n: int) -> np.ndarray:
        """The last n values (n <= length), oldest first, as a view."""
        return self.values[self.end - n : self.end]

    def update_likelihood(self, score: float, low_scores: bool) -> float | None:
        """Likelihood that the recent scores are abnormal, given this new score.

        Numenta-style: the mean of the last `average` log-scores against a Gaussian of the
        history of such means; z -> u = -log10(tail probability) -> 1 - 2^(-u/5), so 0.5
        is a 1e-5 tail, 0.75 a 1e-10 tail. None while the history is too short to judge.
        """
        # Once per scored window: locals and comparisons instead of attribute traffic and min/max calls.
        t = math.log(score + _SCORE_FLOOR)  # squared errors are heavy-tailed; their log is near normal
        recent = self.recent
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
            if low_scores:
                z = abs(z)
            result = 1.0 - 2.0 ** (-_neg_log10_tail(z) / 5.0)
            limit = _WINSOR * std
            # max(-limit, min(limit, delta)), the same for every input (NaN included) without the calls.
            if not delta < limit:
                delta = limit
            elif not delta > -limit:
                delta = -limit
        horizon = self.horizon
        w = 1.0 / (hcount + 1 if hcount < horizon else horizon)
        self.hmean = hmean + w * delta
        self.hvar = (1.0 - w) * (hvar + w * delta * delta)
        if hcount < horizon:
            self.hcount = hcount + 1
        self.likelihood = result
        return result

    # -- persistence: a header dict and the arrays, oldest first ---------------------------------

    def dump(self) -> tuple[dict[str, Any], list[bytes]]:
        n_values = min(self.seen, self.length)
        values = np.ascontiguousarray(self.last_values(n_values)).tobytes()
        recent = _ordered(self.recent, self.rpos, min(self.hcount, len(self.recent)))
        header = {
            "k": self.k, "seen": self.seen, "acc": self.acc, "cnt": self.cnt, "likelihood": self.likelihood,
            "n": [len(values), len(recent) * recent.itemsize],  # bytes
            # Sums and moments as they are, so that a restart continues bit for bit.
            "stats": [self.rsum, self.hcount, self.hmean, self.hvar],
        }
        return header, [values, recent.tobytes()]

    def load(self, h: dict[str, Any], arrays: list[bytes], same_model: bool) -> None:
        # Into this new, empty buffer: as if pushed one by one from position 0.
        values = np.frombuffer(arrays[0], dtype=np.float64)[-self.length :]
        n = len(values)
        self.values[:n] = values
        self.end = n
        self.seen, self.acc, self.cnt = h["seen"], h["acc"], h["cnt"]
        if not same_model:
            return  # keep the values; relearn the new model's scores
        self.likelihood = h["likelihood"]
        recent = array("d", arrays[1])
        for v in recent[-len(self.recent) :]:
            self.recent[self.rpos] = v
            self.rpos = (self.rpos + 1) % len(self.recent)
        rsum, hcount, self.hmean, self.hvar = h["stats"]
        self.hcount = min(hcount, self.horizon)
        # A changed `average` keeps the newest means only: re-add them.
        self.rsum = rsum if len(recent) <= len(self.recent) else math.fsum(self.recent)


def _ordered(ring: array, pos: int, count: int) -> array:
    if count < len(ring):  # not yet wrapped: [0, count) in order
        return ring[:count]
    return ring[pos:] + ring[:pos]


_SQRT_2 = math.sqrt(2.0)
_SQRT_2PI = math.sqrt(2.0 * math.pi)
_LN_10 = math.log(10.0)


def _neg_log10_tail(z: float) -> float:
    """-log10 of the upper tail probability of a standard normal at z, without underflow."""
    if z < 8.0:
        return -math.log10(0.5 * math.erfc(z / _SQRT_2))
    # Mills ratio asymptote: Q(z) ~ phi(z) / z, within 2% of the exact log from z = 8 on.
    return (z * z / 2.0 + math.log(z * _SQRT_2PI)) / _LN_10


class _Channel:
    """Everything the detector keeps for one (device, channel): its scales and alert state."""

    __slots__ = (
        "cfg",
        "changes",
        "hi",
        "hold",
        "lag",
        "last",
        "likelihood",
        "lo",
        "longest",
        "lpos",
        "over",
        "raised",
        "run",
        "scales",
        "seen",
        "step",
    )

    def __init__(self, cfg: _Tunables, base: int, window: int, history: int) -> None:
        self.cfg = cfg
        # The range takes a reading in only `window` readings later, so that a drift is measured
        # against where the channel was, not against where it has drifted to.
        self.lag = array("d", [math.nan] * window)
        self.lpos = 0
        self.scales = [_Scale(base * s, window, history, cfg) for s in sorted(set(cfg.scales))]
        self.seen = 0
        self.over = 0
        self.raised = False
        self.likelihood = 0.0
        self.lo = math.inf  # the range of every reading so far
        self.hi = -math.inf
        self.hold = 0  # readings left for which an out-of-range reading keeps the likelihood at 1
        self.last = math.nan  # runs of identical readings
        self.run = 0
        self.longest = 0
        self.changes = 0
        self.step = math.inf  # the smallest change between readings: the sensor's resolution, roughly

    def rules(self, x: float, hold: int) -> bool:
        """Update range and runs with x; True if x is out of range or a stuck run (see the settings).

        An out-of-range reading stays anomalous for `hold` readings, while it is in the model's
        window, so that the alert it raises does not clear at the next ordinary reading.
        """
        # Once per reading: locals and comparisons instead of min/max calls. Each comparison keeps
        # the old value exactly where min/max would (they keep the first argument against NaN, a
        # lag slot not yet filled).
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
        if self.hold > 0:
            self.hold -= 1
            return True
        # Stuck: at least _MIN_STUCK long and longer than twice the longest run before.
        return cfg.stuck_runs and self.changes >= _MIN_CHANGES and run >= _MIN_STUCK and run > 2 * self.longest

    def to_blob(self, model: str) -> bytes:
        dumped = [s.dump() for s in self.scales]
        header = json.dumps({
            "v": _STATE_VERSION, "model": model, "seen": self.seen, "over": self.over,
            "raised": self.raised, "likelihood": self.likelihood, "range": [self.lo, self.hi, self.hold],
            "runs": [self.last, self.run, self.longest, self.changes, self.step],
            "lag": _ordered(self.lag, self.lpos, len(self.lag)).tolist(),
            "scales": [h for h, _ in dumped],
        }, separators=(",", ":")).encode()
        return b"".join([struct.pack("<I", len(header)), header, *(a for _, arrays in dumped for a in arrays)])

    def load_blob(self, blob: bytes, model: str) -> None:
        (n,) = struct.unpack_from("<I", blob)
        h = json.loads(blob[4 : 4 + n])
        if h["v"] != _STATE_VERSION:
            return
        self.seen, self.over, self.raised, self.likelihood = h["seen"], h["over"], h["raised"], h["likelihood"]
        self.lo, self.hi, self.hold = h["range"]
        self.last, self.run, self.longest, self.changes, self.step = h["runs"]
        for v in h["lag"][-len(self.lag) :]:
            self.lag[self.lpos] = v
            self.lpos = (self.lpos + 1) % len(self.lag)
        by_k = {s.k: s for s in self.scales}
        off = 4 + n
        for sh in h["scales"]:
            arrays = []
            for size in sh["n"]:
                arrays.append(blob[off : off + size])
                off += size
            scale = by_k.get(sh["k"])
            if scale is not None:  # a scale no longer configured is dropped; a new one starts empty
                scale.load(sh, arrays, h["model"] == model)


class _Device:
    __slots__ = ("channels", "ignored", "raised", "since")

    def __init__(self) -> None:
        self.channels: dict[str, _Channel] = {}
        self.ignored: set[str] = set()
        self.raised = False
        self.since = 0.0  # time of the raise, for the alert id


def alert_step(raised: bool, over: int, likelihood: float, seen: int, cfg: _Tunables) -> tuple[bool, int]:
    """One channel's alert state after a new likelihood: (raised, consecutive readings over).

    Raise after `min_duration` consecutive readings at or above raise_threshold, never within
    the first `warmup` readings; clear below clear_threshold (hysteresis: no flapping between).
    """
    if raised:
        return (False, 0) if likelihood < cfg.clear_threshold else (True, over)
    if likelihood >= cfg.raise_threshold and seen >= cfg.warmup:
        return (over + 1 >= cfg.min_duration, over + 1)
    return False, 0


class Detector:
    """Scores readings as they arrive; see the module docstring. Not thread-safe: one caller."""

    def __init__(self, scorer: Scorer, settings: DetectorSettings | None = None, store: StateStore | None = None) -> None:
        self.settings = settings or DetectorSettings()
        self.store = store
        self.scorer = scorer
        self._devices: dict[str, _Device] = {}
        self._dirty: set[tuple[str, str]] = set()
        self._dirty_devices: set[str] = set()
        # Effective settings by the overrides that apply (channel, device, device/channel): the
        # channels that share them share one object (about 1.4 KB each).
        self._resolved: dict[tuple[str | None, str | None, str | None], _Tunables] = {}
        if store is not None:
            self._load(store)

    @property
    def model_label(self) -> str:
        return f"{self.scorer.name}@{self.scorer.version}"

    def _new_channel(self, device: str, name: str) -> _Channel | None:
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
        return _Channel(cfg, window // self.scorer.window, self.scorer.window, self.scorer.normalization.history)

    def observe(self, readings: list[Reading]) -> list[DetectorOutput]:
        """One output per reading, in order; every window ready here goes to the model in one call.

        Two passes around that call: the first feeds each value to its channel's rules and
        buffers and collects the windows ready; the second turns their scores into likelihoods
        and alert states, reading by reading. This runs per value at the gateway's full rate:
        locals, no per-value dicts.
        """
        W = self.scorer.window
        ready_at = W + self.scorer.normalization.history // _MIN_HISTORY_FRACTION
        devices = self._devices
        dirty = self._dirty
        isfinite = math.isfinite
        devs: list[_Device] = []
        windows: list[np.ndarray] = []
        scored: list[_Scale] = []  # the scale of each window
        n_windows = 0
        # Per value scored or flagged: (reading index, channel name, channel, the channel's reading
        # count then (the warm-up is judged per reading), flagged by the rules, end of its windows).
        work: list[tuple[int, str, _Channel, int, bool, int]] = []
        for i, r in enumerate(readings):
            device = r.device
            dev = devices.get(device)
            if dev is None:
                dev = devices[device] = _Device()
            devs.append(dev)
            channels = dev.channels
            for name, x in r.values.items():
                ch = channels.get(name)
                if ch is None:
                    if name in dev.ignored:
                        continue
                    ch = self._new_channel(device, name)
                    if ch is None:
                        dev.ignored.add(name)
                        continue
                    channels[name] = ch
                if not isfinite(x):
                    continue  # a sensor error value is not a reading to learn from
                seen = ch.seen = ch.seen + 1
                dirty.add((device, name))
                # During the warm-up the rules only learn (range, runs); after it they can flag.
                flag = ch.rules(x, W) and seen > ready_at and seen > ch.cfg.warmup
                first = n_windows
                for scale in ch.scales:
                    if scale.add(x) and scale.seen >= ready_at:
                        windows.append(scale.window())
                        scored.append(scale)
                        n_windows += 1
                if flag or n_windows > first:
                    work.append((i, name, ch, seen, flag, n_windows))

        scores: list[float] = self._score(windows).tolist() if windows else []
        outputs: list[DetectorOutput] = []
        j = w = 0
        n_work = len(work)
        for i, (r, dev) in enumerate(zip(readings, devs)):
            out_scores: dict[str, float] = {}
            likelihood: dict[str, float] = {}
            late: list[str] = []  # flagged without a likelihood of their own: they come last
            while w < n_work and work[w][0] == i:
                _, name, ch, seen, flag, end = work[w]
                w += 1
                cfg = ch.cfg
                like: float | None = None
                if j < end:
                    out_scores[name] = scores[j]  # the finest scale scored at this reading
                    judged = False
                    while j < end:
                        if scored[j].update_likelihood(scores[j], cfg.low_scores) is not None:
                            judged = True
                        j += 1
                    if judged:
                        # The channel is as anomalous as its most anomalous scale (coarse ones hold
                        # their last value between their updates).
                        like = -math.inf
                        for sc in ch.scales:
                            v = sc.likelihood
                            if v is not None and v > like:
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
                    ch.raised, ch.over = alert_step(ch.raised, ch.over, like, seen, cfg)
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
            if raised != dev.raised:
                self._alert_changed(out, dev, raised)
            elif raised:
                out.alert_state = "raised"
            outputs.append(out)
        return outputs

    def _score(self, windows: list[np.ndarray]) -> np.ndarray:
        """Normalize as the model's manifest says and score all windows in one model call."""
        W = self.scorer.window
        norm = self.scorer.normalization
        with np.errstate(over="ignore", invalid="ignore"):  # absurd readings: capped below
            sizes = list(map(len, windows))
            if sizes.count(sizes[0]) == len(sizes):  # past warm-up all windows have one length: one call
                block = np.concatenate(windows).reshape(len(windows), -1)
                rows = norm.apply(block[:, :-W], block[:, -W:])
            else:
                groups: dict[int, list[int]] = {}
                for i, size in enumerate(sizes):
                    groups.setdefault(size, []).append(i)
                rows = np.empty((len(windows), W), dtype=np.float32)
                for size, idx in groups.items():
                    block = np.concatenate([windows[i] for i in idx]).reshape(len(idx), size)
                    rows[idx] = norm.apply(block[:, :-W], block[:, -W:])
            # The model clips the window to +-clip and so cannot tell a window far outside the recent
            # range from one at its edge (a flat window at -clip even reconstructs well). What the clip
            # hides is added back as its squared excess, on the scale of the model's squared error.
            excess = np.maximum(np.abs(rows.astype(np.float64)) - norm.clip, 0.0)
            # nan_to_num costs ~10 us a call even when there is nothing to replace: only when needed.
            if not np.isfinite(rows).all():
                rows = np.nan_to_num(rows, nan=0.0)
            scores = self.scorer.score(rows).astype(np.float64) + np.add.reduce(excess * excess, axis=1) / W
            scores = np.minimum(scores, _SCORE_CAP)
        # A reading like 1e300 must not poison the running statistics with inf or NaN.
        return scores if np.isfinite(scores).all() else np.nan_to_num(scores, nan=_SCORE_CAP)

    def _alert_changed(self, out: DetectorOutput, dev: _Device, raised: bool) -> None:
        """The device's alert was raised or cleared at `out`: record it and attach the transition."""
        dev.raised = raised
        self._dirty_devices.add(out.device)
        if raised:
            dev.since = out.time
            over = {n: ch.likelihood for n, ch in dev.channels.items() if ch.raised}
            top = max(over, key=over.__getitem__)
            threshold = dev.channels[top].cfg.raise_threshold
        else:
            over = {n: ch.likelihood for n, ch in dev.channels.items() if n in out.likelihood}
            threshold = max((ch.cfg.clear_threshold for ch in dev.channels.values()), default=0.0)
        out.alert_state = "raised" if raised else "ok"
        out.transition = AlertTransition(
            id=f"{out.device}-{round(dev.since * 1000)}",
            device=out.device,
            state="raised" if raised else "cleared",
            time=out.time,
            score=out.score,
            threshold=threshold,
            channels=over,
            model=self.model_label,
        )

    # -- state: persisted in the state database, kept across a model reload ----------------------

    def flush(self) -> int:
        """Write what changed since the last flush in one transaction; returns the records written."""
        if self.store is None:
            return 0
        label = self.model_label
        written = len(self._dirty) + len(self._dirty_devices)
        if written:
            # Made as SQLite takes them: all of them at once were the daemon's peak memory (about
            # 4.5 KB a channel, 9 MB for 1,000 devices of two channels).
            devices = self._devices
            self.store.put_blobs(STATE_NAMESPACE, itertools.chain(
                ((_key(d, n), devices[d].channels[n].to_blob(label)) for d, n in self._dirty),
                ((_key(d), json.dumps({"raised": devices[d].raised, "since": devices[d].since}).encode())
                 for d in self._dirty_devices),
            ))
        self._dirty.clear()
        self._dirty_devices.clear()
        return written

    def _load(self, store: StateStore) -> None:
        label = self.model_label
        for key, blob in store.blobs(STATE_NAMESPACE).items():
            try:
                parts = json.loads(key)
                dev = self._devices.setdefault(parts[0], _Device())
                if len(parts) == 1:
                    saved = json.loads(blob)
                    dev.raised, dev.since = bool(saved["raised"]), float(saved["since"])
                    continue
                ch = self._new_channel(parts[0], parts[1])
                if ch is None:
                    dev.ignored.add(parts[1])
                    continue
                ch.load_blob(blob, label)
                dev.channels[parts[1]] = ch
            except (ValueError, KeyError, IndexError, TypeError, struct.error) as e:
                # A damaged record costs that channel its history, never the daemon.
                log.warning("detector state %r unreadable (%s); that channel starts afresh", key, e)

    def replace_scorer(self, scorer: Scorer) -> None:
        """Switch models (SIGHUP reload) keeping buffers and alert state; score histories are kept
        for the same model and relearned for a different one (its scores are on another scale)."""
        old_label = self.model_label
        old = self.scorer
        self.scorer = scorer
        try:
            rebuilt: dict[str, dict[str, _Channel]] = {}
            for device, dev in self._devices.items():
                rebuilt[device] = {}
                for name, ch in dev.channels.items():
                    new = self._new_channel(device, name)
                    assert new is not None  # ignore lists did not change
                    new.load_blob(ch.to_blob(old_label), self.model_label)
                    rebuilt[device][name] = new
        except ValueError:
            self.scorer = old  # e.g. a configured window the new model cannot take
            raise
        for device, channels in rebuilt.items():
            self._devices[device].channels = channels
            self._dirty.update((device, name) for name in channels)


def _key(device: str, channel: str | None = None) -> str:
    return json.dumps([device] if channel is None else [device, channel], separators=(",", ":"))
