"""`lora-gateway report`: a device's channels, anomaly score and alerts over time, as a PNG.

matplotlib is an optional dependency (the `[report]` extra): the daemon never needs it.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
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


def plot(rows: list[HistoryRow], device: str, out: Path, thresholds: tuple[float, float] | None = None) -> None:
    """One panel per channel, then the anomaly score with the (raise, clear) thresholds; alerts shaded."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a Pi or in CI
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    channels = sorted({name for r in rows for name in r.values})
    times = [datetime.fromtimestamp(r.time) for r in rows]
    end = times[-1]
    spans = [(datetime.fromtimestamp(a), datetime.fromtimestamp(b) if b is not None else end)
             for a, b in alert_spans(rows)]
    fig, axes = plt.subplots(len(channels) + 1, 1, sharex=True, squeeze=False,
                             figsize=(11, 1.9 * (len(channels) + 1) + 0.8))
    panels = [ax for (ax,) in axes]
    for ax, channel in zip(panels, channels, strict=False):  # the last panel is the score's
        points = [(t, r.values[channel]) for t, r in zip(times, rows, strict=True) if channel in r.values]
        ax.plot([p[0] for p in points], [p[1] for p in points], lw=1, color="tab:blue")
        ax.set_ylabel(channel, rotation=0, ha="right", va="center", fontsize=8)
    score_ax = panels[-1]
    scored = [(t, r.score) for t, r in zip(times, rows, strict=True) if r.score is not None]
    score_ax.plot([p[0] for p in scored], [p[1] for p in scored], lw=1, color="tab:orange")
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
    plot(rows, args.device, args.out, (settings.raise_threshold, settings.clear_threshold))
    spans = alert_spans(rows)
    print(f"{args.out}: {len(rows)} readings of {args.device}, {len(spans)} alert(s)")
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
