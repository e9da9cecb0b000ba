"""Windows the installer judges a bundle on: the series the gateway ships, and a site's own CSV.

Parity is measured on these at install, at activation and at the daemon's reload, so a bundle
chooses neither the windows nor the alert threshold it is judged by. numpy only: runs on the Pi.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gateway.detect.scoring import Normalization

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


def site_held(path: Path, window: int, norm: Normalization) -> HeldSet:
    """A site's normal data from a CSV file, as windows: every one, or evenly spaced ones for a long file."""
    try:
        values = read_csv_series(path)
        stride = max(1, (len(values) - norm.history - window) // SITE_WINDOWS)
        windows = cut_windows([values], window, norm, stride)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return HeldSet(path.name, windows, np.ones(len(windows), bool))
