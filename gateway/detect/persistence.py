"""The detector's state in the state database, so that a restart continues bit for bit.

One record per channel, key `["<device>","<channel>"]`: a little-endian u32 header length, a
JSON header (the channel's rules and alert state, one entry per time scale; with `daily` on also
the channel's clock and each scale's daily slots and comparison, absent from older records), then
each scale's arrays, oldest first: its values, as float32, its recent log-scores, as float64, and
with `daily` on its daily slots' means, as float32 (a reader that knows only the first two skips
the third by its size). One record
per device, key `["<device>"]`: its alert state, as JSON. The same encoding carries a channel
across a model reload; score histories are kept only for the model that made them.

Version 2 (`"v"` in the header); version 1, before a scale kept its values as float32, had them
as float64 (and the range's lag a whole window, NaN where not yet filled) and is read as well, the
values rounded as the scale rounds them (an upgraded gateway keeps what it learned). A record of a
later version is ignored: that channel starts afresh.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import struct
from array import array
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from gateway.detect.channel import Channel, Device
from gateway.detect.likelihood import ScoreLikelihood
from gateway.detect.seasonal import DaySlots
from gateway.detect.settings import Tunables
from gateway.detect.windows import Scale
from gateway.service.state import StateStore

log = logging.getLogger(__name__)

STATE_NAMESPACE = "detector"
_STATE_VERSION = 2
_VALUE_DTYPES = {1: np.float64, 2: np.float32}  # a scale's values in a record of each version


def encode_channel(ch: Channel, model: str) -> bytes:
    """A channel's record; `model` labels its score histories."""
    dumped = [_dump_scale(s) for s in ch.scales]
    fields = {
        "v": _STATE_VERSION, "model": model, "seen": ch.seen, "over": ch.over,
        "raised": ch.raised, "cleared": ch.cleared, "likelihood": ch.likelihood, "range": [ch.lo, ch.hi, ch.hold],
        "runs": [ch.last, ch.run, ch.longest, ch.changes, ch.step],
        "lag": _ordered(ch.lag, ch.lpos, len(ch.lag)).tolist(),
        "scales": [h for h, _ in dumped],
    }
    if ch.cfg.daily:  # the clock runs only for the daily comparison
        fields["clock"] = [ch.t_last, ch.interval]
    header = json.dumps(fields, separators=(",", ":")).encode()
    return b"".join([struct.pack("<I", len(header)), header, *(a for _, arrays in dumped for a in arrays)])


def decode_channel(ch: Channel, blob: bytes, model: str) -> None:
    """Into a new channel: as if it had seen the readings itself (under `model`)."""
    (n,) = struct.unpack_from("<I", blob)
    h = json.loads(blob[4 : 4 + n])
    value_dtype = _VALUE_DTYPES.get(h["v"])
    if value_dtype is None:
        return
    ch.seen, ch.over, ch.raised, ch.likelihood = h["seen"], h["over"], h["raised"], h["likelihood"]
    ch.saved = ch.seen
    ch.cleared = h.get("cleared", 0)  # not in records from before it was kept: nothing muted
    ch.lo, ch.hi, ch.hold = h["range"]
    ch.last, ch.run, ch.longest, ch.changes, ch.step = h["runs"]
    # Not in records from before the daily comparison: the interval is learned afresh.
    ch.t_last, ch.interval = h.get("clock", (math.nan, 0.0))[:2]
    # Oldest first; a version 1 record holds NaN for each slot not yet filled.
    ch.lag = array("d", [v for v in h["lag"] if not math.isnan(v)][-ch.lag_length :])
    by_k = {s.k: s for s in ch.scales}
    off = 4 + n
    for sh in h["scales"]:
        arrays = []
        for size in sh["n"]:
            arrays.append(blob[off : off + size])
            off += size
        scale = by_k.get(sh["k"])
        if scale is not None:  # a scale no longer configured is dropped; a new one starts empty
            _load_scale(scale, sh, arrays, h["model"] == model, value_dtype, ch.cfg)


def _dump_scale(scale: Scale) -> tuple[dict[str, Any], list[bytes]]:
    """A scale as a header dict and its arrays, oldest first."""
    n_values = min(scale.seen, scale.length)
    values = np.ascontiguousarray(scale.last_values(n_values)).tobytes()
    recent = _recent(scale)
    arrays = [values, recent.tobytes()]
    day = scale.day
    if day is not None:  # only with `daily` on
        arrays.append(day.last().tobytes())
    header = {
        "k": scale.k, "seen": scale.seen, "acc": scale.acc, "cnt": scale.cnt, "likelihood": scale.likelihood,
        "n": list(map(len, arrays)),  # bytes
        # Sums and moments as they are, so that a restart continues bit for bit.
        "stats": scale.stats(),
    }
    if day is not None:
        header["day"] = {"per_day": day.per_day, "slot": day.slot, "acc": day.acc, "cnt": day.cnt}
    season = scale.season
    if season is not None:  # a few numbers: in the header; kept across a model reload (no model in it)
        header["season"] = {"likelihood": season.likelihood, "stats": season.stats(),
                            "recent": _recent(season).tolist()}
    return header, arrays


def _load_scale(
    scale: Scale, h: dict[str, Any], arrays: list[bytes], same_model: bool, value_dtype: type[np.floating],
    cfg: Tunables,
) -> None:
    scale.load_values(np.frombuffer(arrays[0], dtype=value_dtype))
    scale.seen, scale.acc, scale.cnt = h["seen"], h["acc"], h["cnt"]
    # A comparison turned off since the record was written is not restored: its likelihood would stay.
    if cfg.daily and (day := h.get("day")) is not None:
        means = np.frombuffer(arrays[2], dtype=np.float32)
        if len(means) == scale.length:  # a buffer of another length since: its slots start afresh
            scale.day = DaySlots(day["per_day"], scale.length)
            scale.day.restore(day["slot"], day["acc"], day["cnt"], means)
    if cfg.daily and (season := h.get("season")) is not None:
        scale.season = ScoreLikelihood()
        scale.season.likelihood = season["likelihood"]
        scale.season.restore(array("d", season["recent"]), season["stats"], cfg)
    if not same_model:
        return  # keep the values; relearn the new model's scores
    scale.likelihood = h["likelihood"]
    scale.restore(array("d", arrays[1]), h["stats"], cfg)


def _recent(lk: ScoreLikelihood) -> array:
    """A likelihood state's recent log-scores, oldest first."""
    return _ordered(lk.recent, lk.rpos, min(lk.hcount, len(lk.recent)))


def _ordered(ring: array, pos: int, count: int) -> array:
    if count < len(ring):  # not yet wrapped: [0, count) in order
        return ring[:count]
    return ring[pos:] + ring[:pos]


def save(
    store: StateStore, devices: dict[str, Device], channels: Iterable[tuple[str, str]], alerts: Iterable[str],
    model: str,
) -> None:
    """Write the records of these (device, channel) pairs and of these devices' alerts in one transaction."""
    # Made as SQLite takes them: all of them at once were the daemon's peak memory (about
    # 4.5 KB a channel, 9 MB for 1,000 devices of two channels).
    store.put_blobs(STATE_NAMESPACE, itertools.chain(
        ((_key(d, n), encode_channel(devices[d].channels[n], model)) for d, n in channels),
        ((_key(d), json.dumps({"raised": devices[d].raised, "since": devices[d].since}).encode()) for d in alerts),
    ))


def load(
    store: StateStore, model: str, devices: dict[str, Device], new_channel: Callable[[str, str], Channel | None]
) -> None:
    """Read every record into `devices`; `new_channel` makes each channel (None: the channel is ignored)."""
    for key, blob in store.iter_blobs(STATE_NAMESPACE):
        try:
            parts = json.loads(key)
            dev = devices.setdefault(parts[0], Device())
            if len(parts) == 1:
                saved = json.loads(blob)
                dev.raised, dev.since = bool(saved["raised"]), float(saved["since"])
                continue
            ch = new_channel(parts[0], parts[1])
            if ch is None:
                dev.ignored += (parts[1],)
                continue
            decode_channel(ch, blob, model)
            dev.channels[parts[1]] = ch
        except (ValueError, KeyError, IndexError, TypeError, struct.error) as e:
            # A damaged record costs that channel its history, never the daemon.
            log.warning("detector state %r unreadable (%s); that channel starts afresh", key, e)


def _key(device: str, channel: str | None = None) -> str:
    return json.dumps([device] if channel is None else [device, channel], separators=(",", ":"))
