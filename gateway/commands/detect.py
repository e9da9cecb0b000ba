"""`lora-gateway detect --csv FILE`: the daemon's detector over a recorded series.

Each row becomes one `Reading` fed to `Detector.observe` on its own, in file order, exactly
as a live device's uplinks are: no look-ahead. Output columns:
  timestamp  as in the input
  value      as in the input
  score      the anomaly likelihood used for alerting, in [0, 1] (0 until the window is full)
  alert      1 while an alert is raised after this row (its first 1 is the raise), else 0
Reads NAB's layout (`timestamp,value`) as it is.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from gateway.commands.common import error
from gateway.detect.detector import Detector
from gateway.records import Reading

_PROGRESS_EVERY_S = 2.0


class InputError(Exception):
    """Bad input, phrased for the user: file, line, column."""


@dataclass(frozen=True, slots=True)
class DetectResult:
    scores: list[float]  # per row, the `score` column
    alerts: list[int]  # per row, the `alert` column
    raw: list[float]  # per row, the model's own score (nan before the first full window)

    @property
    def raised(self) -> int:
        """Alerts raised (0 -> 1 steps of the alert column)."""
        return sum(1 for a, b in zip([0, *self.alerts], self.alerts) if b > a)


@dataclass(frozen=True, slots=True)
class Row:
    line: int
    timestamp: str
    time: float
    value: float


def parse_time(text: str) -> float:
    """Unix seconds from unix seconds or an ISO 8601 time (naive = UTC)."""
    try:
        return float(text)
    except ValueError:
        pass
    dt = datetime.fromisoformat(text.strip())
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def read_series(path: Path, column: str = "value", time_column: str = "timestamp") -> Iterator[Row]:
    """Rows of a CSV with a header, lazily; a bad cell raises InputError naming file, line, column."""
    try:
        f = path.open(newline="")
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    with f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise InputError(f"{path}: empty file (expected a header line with {time_column!r} and {column!r})") from None
        except (csv.Error, UnicodeDecodeError) as e:
            raise InputError(f"{path}: line 1: not CSV text ({e})") from None
        names = [h.strip() for h in header]
        for wanted in (time_column, column):
            if wanted not in names:
                raise InputError(f"{path}: line 1: no column {wanted!r} (columns: {', '.join(names)})")
        ti, vi = names.index(time_column), names.index(column)
        try:
            for cells in reader:
                line = reader.line_num
                if not cells or all(not c.strip() for c in cells):
                    continue
                if len(cells) <= max(ti, vi):
                    raise InputError(f"{path}: line {line}: {len(cells)} fields, expected {len(names)}")
                stamp, raw = cells[ti].strip(), cells[vi].strip()
                try:
                    value = float(raw)
                except ValueError:
                    raise InputError(f"{path}: line {line}, column {column!r}: not a number: {raw!r}") from None
                try:
                    t = parse_time(stamp)
                except ValueError:
                    raise InputError(
                        f"{path}: line {line}, column {time_column!r}: not a time: {stamp!r} "
                        "(expected ISO 8601 like 2014-04-01 00:05:00, or unix seconds)"
                    ) from None
                yield Row(line, stamp, t, value)
        except (csv.Error, UnicodeDecodeError) as e:
            raise InputError(f"{path}: line {reader.line_num}: not CSV text ({e})") from None


def detect_series(
    detector: Detector,
    rows: Iterator[Row],
    out: TextIO,
    *,
    device: str,
    channel: str,
    progress: TextIO | None = None,
    label: str = "",
) -> DetectResult:
    """Feed rows one at a time and write `timestamp,value,score,alert`."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["timestamp", "value", "score", "alert"])
    result = DetectResult([], [], [])
    next_report = time.monotonic() + _PROGRESS_EVERY_S
    for n, row in enumerate(rows, 1):
        reading = Reading(device=device, values={channel: row.value}, fcnt=n, rssi=math.nan, snr=math.nan, time=row.time)
        (output,) = detector.observe([reading])
        alert = int(output.alert_state == "raised")
        result.scores.append(output.score)
        result.alerts.append(alert)
        result.raw.append(output.scores.get(channel, math.nan))
        writer.writerow([row.timestamp, _num(row.value), _num(output.score), alert])
        if progress is not None and time.monotonic() >= next_report:
            next_report = time.monotonic() + _PROGRESS_EVERY_S
            print(f"{label}: {n} rows", file=progress, flush=True)
    return result


def _num(x: float) -> str:
    """Shortest exact text: integers without '.0' (as NAB writes them), others by repr."""
    if math.isfinite(x) and x.is_integer() and abs(x) < 1e16:
        return str(int(x))
    return repr(x)


def build_detector(bundle: Path | None, config: Path | None) -> Detector:
    """The daemon's detector: the configuration's [detector] table (defaults without one) and,
    unless `bundle` says otherwise, the daemon's model: the active one, else the packaged default."""
    from gateway.config import GatewayConfig, load_config
    from gateway.detect.model_store import (
        active_bundle,
        default_model_root,
        packaged_default_bundle,
    )
    from gateway.detect.scoring import OnnxScorer

    cfg = load_config(config) if config is not None else GatewayConfig()  # errors name file and key
    if bundle is None:
        bundle = active_bundle(cfg.model_root or default_model_root()) or packaged_default_bundle()
    return Detector(OnnxScorer(bundle), cfg.detector)


def handler(args: argparse.Namespace) -> int:
    from gateway.detect.scoring import BundleError

    path = Path(args.csv)
    out_path = Path(args.out)
    # Written beside the target and renamed at the end: bad input leaves no half-written output.
    tmp = out_path.with_name(f".{out_path.name}.partial")
    try:
        detector = build_detector(Path(args.bundle) if args.bundle else None, Path(args.config) if args.config else None)
        rows = read_series(path, args.column, args.time_column)
        if args.out == "-":
            result = detect_series(
                detector, rows, sys.stdout, device=args.device or path.stem, channel=args.column,
                progress=sys.stderr, label=str(path),
            )
        else:
            with tmp.open("w", newline="") as out:
                result = detect_series(
                    detector, rows, out, device=args.device or path.stem, channel=args.column,
                    progress=sys.stderr, label=str(path),
                )
            tmp.replace(out_path)
    except (InputError, BundleError) as e:
        error(e, "detect")
        return 2
    except OSError as e:
        error(f"{e.filename}: {e.strerror}", "detect")
        return 2
    finally:
        tmp.unlink(missing_ok=True)
    print(
        f"{path}: {len(result.scores)} rows scored with {detector.model_label}, {result.raised} alert(s) raised "
        f"-> {args.out}",
        file=sys.stderr,
    )
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "detect",
        help="run the detector over a recorded series (CSV) and write per-row scores and alerts",
        description="Run the daemon's detector (same model bundle, same settings) over a CSV series one row "
        "at a time, without look-ahead, and write timestamp,value,score,alert per row. score is the anomaly "
        "likelihood in [0, 1] that alerts are raised on; alert is 1 while an alert is raised (its first 1 "
        "is the raise). Reads NAB's CSV layout as it is.",
    )
    p.add_argument("--csv", required=True, metavar="FILE", help="input CSV with a header line")
    p.add_argument("--column", default="value", help="column with the values (default: value); also the channel name")
    p.add_argument("--time-column", default="timestamp", help="column with ISO 8601 times or unix seconds (default: timestamp)")
    p.add_argument("--out", required=True, metavar="FILE", help="output CSV ('-' for standard output)")
    p.add_argument("--bundle", metavar="DIR", help="model bundle directory (default: the daemon's: the active model, else the packaged default)")
    p.add_argument("--config", "-c", metavar="FILE", help="gateway configuration: its [detector] table is used")
    p.add_argument("--device", help="device name the settings see (default: the file name without extension)")
    p.set_defaults(func=handler)
