"""Windows the installer judges a bundle on: the series the gateway ships, and a site's own data
(a CSV file, or a channel of the gateway's history).

Parity is measured on these at install, at activation and at the daemon's reload, so a bundle
chooses neither the windows nor the alert threshold it is judged by. numpy only: runs on the Pi.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gateway.detect.scoring import Normalization, sha256_file
from gateway.service.history import History

HELD_SERIES = Path(__file__).with_name("held_series.npz")  # written by models.data.write_held_series
STRIDE = 8  # one window every 8 samples: neighbours overlap, the set stays a few thousand windows
SITE_WINDOWS = 8000  # at most about this many windows of a site's file: enough to see a 0.1% change
THRESHOLD_PERCENTILE = 99.0  # the alert threshold parity is judged at: p99 of float scores on normal windows


@dataclass(frozen=True)
class HeldSet:
    """Normalized windows of one source, and which of them are normal data."""

    source: str  # for messages and the manifest: "the gateway's held series", "site.csv"
    windows: np.ndarray  # float32 [N, W]
    normal: np.ndarray  # bool [N]; the threshold is taken on these

    @property
    def constant(self) -> bool:
        """Every window the same (a constant series): the p99 threshold equals every float score, and
        int8's rounding alone would decide each window's side of it, so there is no alert to compare."""
        return bool((self.windows == self.windows[:1]).all())

    def not_judged(self) -> str:
        n = len(self.windows)
        return f"parity on {self.source}: not judged, its {n} windows are all the same (a constant series)"


def read_csv_series(path: Path) -> np.ndarray:
    """Values of a `timestamp,value` CSV (NAB layout; the last column is the value).

    A header and unparsable rows are skipped; a file without any number is an error.
    """
    values: list[float] = []
    with open(path, newline="") as f:
        for row in csv.reader(f):
            try:
                v = float(row[-1])
            except (ValueError, IndexError):
                continue
            if math.isfinite(v):
                values.append(v)
    if not values:
        raise ValueError(f"{path}: no numeric values in the last column")
    return np.asarray(values, dtype=np.float64)


def cut_windows(series: list[np.ndarray], window: int, norm: Normalization, stride: int = STRIDE) -> np.ndarray:
    """Every `stride`-th window of each series, normalized by the history before it; float32 [N, W]."""
    span = norm.history + window
    parts = [
        np.lib.stride_tricks.sliding_window_view(np.asarray(s, dtype=np.float64), span)[::stride]
        for s in series
        if len(s) >= span
    ]
    if not parts:
        raise ValueError(f"no series is long enough: need {span} values (history {norm.history} + window {window})")
    raw = np.concatenate(parts)
    return norm.apply(raw[:, : norm.history], raw[:, norm.history :])


def gateway_held(window: int, norm: Normalization) -> HeldSet:
    """The gateway's own held windows: normal series and the same series with anomalies injected."""
    with np.load(HELD_SERIES, allow_pickle=False) as f:
        normal, anomalous = cut_windows(list(f["normal"]), window, norm), cut_windows(list(f["anomalous"]), window, norm)
    mask = np.concatenate([np.ones(len(normal), bool), np.zeros(len(anomalous), bool)])
    return HeldSet("the gateway's held series", np.concatenate([normal, anomalous]), mask)


@dataclass(frozen=True)
class SiteSeries:
    """A site's normal data, one channel: what to call it, what the manifest records of it, its values."""

    source: str  # "site.csv", "history pump-house/temperature"
    record: dict[str, Any]  # {"file", "sha256"} or {"history", "device", "channel", "readings", "from", "to"}
    values: np.ndarray


def csv_series(path: Path) -> SiteSeries:
    return SiteSeries(path.name, {"file": path.name, "sha256": sha256_file(path)}, read_csv_series(path))


def history_series(state_path: Path, spec: str) -> list[SiteSeries]:
    """`DEVICE` (each of its channels) or `DEVICE/CHANNEL` from the readings the gateway's history keeps."""
    device, _, channel = spec.partition("/")
    if not state_path.is_file():
        raise ValueError(f"{state_path}: no state database, so no history of {device!r}")
    history = History(state_path)
    try:
        rows, known = history.query(device, since=0.0), history.devices()
    finally:
        history.close()
    if not rows:
        hint = f"devices with history: {', '.join(known)}" if known else "no device has history yet"
        raise ValueError(f"{state_path}: no readings of {device!r} in the history ({hint})")
    channels = sorted({c for r in rows for c in r.values})
    if channel and channel not in channels:
        raise ValueError(f"{state_path}: {device!r} has no channel {channel!r} in the history (it has {channels})")
    out = []
    for ch in [channel] if channel else channels:
        kept = [(r.time, float(v)) for r in rows if isinstance(v := r.values.get(ch), (int, float)) and math.isfinite(v)]
        if not kept:  # a channel that is not a number, such as a location
            continue
        record = {"history": state_path.name, "device": device, "channel": ch, "readings": len(kept),
                  "from": kept[0][0], "to": kept[-1][0]}
        out.append(SiteSeries(f"history {device}/{ch}", record, np.asarray([v for _, v in kept], dtype=np.float64)))
    if not out:
        raise ValueError(f"{state_path}: {device!r} has no numeric readings of {channel or channels} in the history")
    return out


def site_held(site: SiteSeries, window: int, norm: Normalization) -> HeldSet:
    """A site's series as windows: every one, or evenly spaced ones for a long series."""
    try:
        stride = max(1, (len(site.values) - norm.history - window) // SITE_WINDOWS)
        windows = cut_windows([site.values], window, norm, stride)
    except ValueError as e:
        raise ValueError(f"{site.source}: {e}") from None
    return HeldSet(site.source, windows, np.ones(len(windows), bool))
