"""`lora-gateway report`: a device's channels, anomaly score and alerts over time, as a PNG.

matplotlib is an optional dependency (the `[report]` extra): the daemon never needs it.
"""

from __future__ import annotations

import argparse
import itertools
import math
import re
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.commands.common import CONFIG_HELP, error, load
from gateway.service.history import History, HistoryRow, alert_spans

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_span(text: str) -> float:
    """`24h`, `30m`, `7d`, `90s`, `1w` or plain seconds -> seconds."""
    m = _SPAN.match(text)
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r}: use a number with s, m, h, d or w (e.g. 24h)")
    return float(m[1]) * _UNITS[m[2] or "s"]


# A silence longer than this many times a series' usual spacing is a gap: drawn as one, not bridged.
GAP_FACTOR = 3.0


@dataclass(frozen=True)
class Series:
    times: list[float]  # unix seconds
    values: list[float]  # NaN where the line breaks


def with_gaps(points: list[tuple[float, float]]) -> Series:
    """The points, with a NaN value halfway between two that lie more than GAP_FACTOR usual
    spacings apart: matplotlib breaks a line at a NaN."""
    times: list[float] = []
    values: list[float] = []
    limit = GAP_FACTOR * _usual_spacing([t for t, _ in points])
    for i, (t, v) in enumerate(points):
        if i and t - points[i - 1][0] > limit:
            times.append((points[i - 1][0] + t) / 2)
            values.append(math.nan)
        times.append(t)
        values.append(v)
    return Series(times, values)


def _usual_spacing(times: list[float]) -> float:
    return statistics.median(b - a for a, b in itertools.pairwise(times)) if len(times) > 1 else math.inf


def channel_series(rows: list[HistoryRow]) -> tuple[dict[str, Series], dict[str, float]]:
    """Each channel still sent, with its gaps; and the channels the device no longer sends, with the
    time each was last sent: silent for more than GAP_FACTOR of its usual spacing at the end."""
    points: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        for name, value in r.values.items():
            points.setdefault(name, []).append((r.time, value))
    end = rows[-1].time
    kept: dict[str, Series] = {}
    dropped: dict[str, float] = {}
    for name in sorted(points):
        series = points[name]
        last = series[-1][0]
        spacing = _usual_spacing([t for t, _ in series])
        if end - last > GAP_FACTOR * spacing:  # a channel seen once has no spacing: it stays
            dropped[name] = last
        else:
            kept[name] = with_gaps(series)
    return kept, dropped


def _dates(times: list[float]) -> list[datetime]:
    return [datetime.fromtimestamp(t) for t in times]


def plot(rows: list[HistoryRow], device: str, out: Path, thresholds: tuple[float, float] | None = None) -> dict[str, float]:
    """One panel per channel still sent, then the anomaly score with the (raise, clear) thresholds;
    alerts shaded, gaps in the data left as gaps. Returns the channels left out (see channel_series)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a Pi or in CI
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    series, dropped = channel_series(rows)
    channels = list(series)
    times = [datetime.fromtimestamp(r.time) for r in rows]
    end = times[-1]
    spans = [(datetime.fromtimestamp(a), datetime.fromtimestamp(b) if b is not None else end)
             for a, b in alert_spans(rows)]
    fig, axes = plt.subplots(len(channels) + 1, 1, sharex=True, squeeze=False,
                             figsize=(11, 1.9 * (len(channels) + 1) + 0.8))
    panels = [ax for (ax,) in axes]
    for ax, channel in zip(panels, channels, strict=False):  # the last panel is the score's
        ax.plot(_dates(series[channel].times), series[channel].values, lw=1, color="tab:blue")
        ax.set_ylabel(channel, rotation=0, ha="right", va="center", fontsize=8)
    score_ax = panels[-1]
    scored = with_gaps([(r.time, r.score) for r in rows if r.score is not None])
    score_ax.plot(_dates(scored.times), scored.values, lw=1, color="tab:orange")
    score_ax.set_ylabel("anomaly score", rotation=0, ha="right", va="center", fontsize=8)
    score_ax.set_ylim(-0.02, 1.02)
    if thresholds is not None:
        for value, style, label in zip(thresholds, ("--", ":"), ("raise", "clear"), strict=True):
            score_ax.axhline(value, color="tab:red", ls=style, lw=1, label=f"{label} {value:g}")
        score_ax.legend(loc="upper left", fontsize=8)
    for ax in panels:
        ax.grid(True, alpha=0.3)
        for i, (a, b) in enumerate(spans):
            ax.axvspan(a, b, color="tab:red", alpha=0.2, label="alert" if i == 0 else None)
    if spans:
        panels[0].legend(loc="upper right", fontsize=8)
    score_ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(score_ax.xaxis.get_major_locator()))
    fig.suptitle(f"{device}: {len(rows)} readings, {len(spans)} alert(s), "
                 f"{times[0]:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M}")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return dropped


def handler(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401  (checked before any work)
    except ModuleNotFoundError:
        print("lora-gateway report needs matplotlib: pip install 'lora-gateway[report]'", file=sys.stderr)
        return 1
    cfg = load(args.config)
    state_path = cfg.state_path
    if not state_path.exists():
        error(f"{state_path}: no state database yet", "report")
        return 1
    since = time.time() - args.since
    history = History(state_path)
    try:
        rows = history.query(args.device, since)
        known = history.devices()
    finally:
        history.close()
    if not rows:
        hint = f"devices with history: {', '.join(known)}" if known else "no device has history yet"
        error(f"no readings of {args.device!r} in the last {args.since:g} s ({hint})", "report")
        return 1
    # Device-wide settings; a channel may override them, so these lines are a guide for tuning.
    settings = cfg.detector.resolve(args.device, "")
    dropped = plot(rows, args.device, args.out, (settings.raise_threshold, settings.clear_threshold))
    spans = alert_spans(rows)
    print(f"{args.out}: {len(rows)} readings of {args.device}, {len(spans)} alert(s)")
    for channel, last in dropped.items():
        print(f"  left out {channel}: no longer sent (last at {datetime.fromtimestamp(last):%Y-%m-%d %H:%M:%S})")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "report",
        help="plot a device's channels, anomaly score and alerts to a PNG (needs the [report] extra)",
        description="Plot each channel of a device over time, with its anomaly score and alerts shaded "
        "from raised to cleared, from the history in the state database. For tuning thresholds.",
    )
    p.add_argument("--device", required=True, help="device name")
    p.add_argument("--since", type=parse_span, default="24h", help="how far back: 30m, 24h, 7d ... (default: 24h)")
    p.add_argument("--out", type=Path, default=Path("report.png"), help="PNG to write (default: report.png)")
    p.add_argument("--config", "-c", help=CONFIG_HELP)
    p.set_defaults(func=handler)
