"""`lora-gateway detect --csv FILE`: the daemon's detector over a recorded series.

Each row becomes one `Reading` fed to `Detector.observe` on its own, in file order, exactly
as a live device's uplinks are: no look-ahead. With `--columns a,b,c` (or `all`: every
numeric column but the time column) the columns are one device's channels, scored together
as the daemon scores a device. Output columns:
  timestamp  as in the input
  value      as in the input (one column); with --columns: each input column, as in the input
  score      the device's anomaly likelihood, in [0, 1] (its most anomalous channel; 0 until
             a window is full)
  alert      1 while an alert is raised after this row (its first 1 is the raise), else 0
  channels   with --columns: the channels raised after this row, ';'-separated
Reads NAB's layout (`timestamp,value`) and SKAB's (`--sep ';' --time-column datetime`) as they are.
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
    raw: list[float]  # per row, the model's own score of the first column (nan before its first full window)
    raises: list[int]  # per row, 1 where an alert was raised (a second anomaly during an alert too)

    @property
    def raised(self) -> int:
        """Alerts raised, second anomalies included."""
        return sum(self.raises)


@dataclass(frozen=True, slots=True)
class Row:
    line: int
    timestamp: str
    time: float
    values: tuple[float, ...]


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


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: Iterator[Row]


def read_table(path: Path, columns: list[str] | None = None, time_column: str = "timestamp", sep: str = ",") -> Table:
    """A CSV with a header, rows read lazily; `columns` None = every column but the time column whose
    first value is a number. A bad cell raises InputError naming file, line and column."""
    try:
        f = path.open(newline="")
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    reader = csv.reader(f, delimiter=sep)
    try:
        header = next(reader)
        first = next(reader, None)
        while first is not None and not any(c.strip() for c in first):
            first = next(reader, None)
        first_line = reader.line_num
    except StopIteration:
        f.close()
        raise InputError(f"{path}: empty file (expected a header line with {time_column!r})") from None
    except (csv.Error, UnicodeDecodeError) as e:
        f.close()
        raise InputError(f"{path}: line 1: not CSV text ({e})") from None
    names = [h.strip() for h in header]
    if columns is None:
        columns = [n for n, cell in zip(names, first or []) if n != time_column and _is_number(cell)]
        if not columns:
            f.close()
            raise InputError(f"{path}: line 2: no numeric column (columns: {', '.join(names)})")
    for wanted in (time_column, *columns):
        if wanted not in names:
            f.close()
            raise InputError(f"{path}: line 1: no column {wanted!r} (columns: {', '.join(names)})")
    return Table(list(columns), _rows(f, reader, first, first_line, path, names, columns, time_column))


def _rows(f: Any, reader: Any, first: list[str] | None, first_line: int, path: Path, names: list[str], columns: list[str],
          time_column: str) -> Iterator[Row]:
    ti = names.index(time_column)
    vis = [names.index(c) for c in columns]
    need = max(ti, *vis)
    with f:
        try:
            if first is not None:
                yield _row(first, first_line, path, names, columns, ti, vis, need, time_column)
            for cells in reader:
                if cells and any(c.strip() for c in cells):
                    yield _row(cells, reader.line_num, path, names, columns, ti, vis, need, time_column)
        except (csv.Error, UnicodeDecodeError) as e:
            raise InputError(f"{path}: line {reader.line_num}: not CSV text ({e})") from None


def _row(cells: list[str], line: int, path: Path, names: list[str], columns: list[str], ti: int, vis: list[int],
         need: int, time_column: str) -> Row:
    if len(cells) <= need:
        raise InputError(f"{path}: line {line}: {len(cells)} fields, expected {len(names)}")
    values = []
    for column, vi in zip(columns, vis):
        raw = cells[vi].strip()
        try:
            values.append(float(raw))
        except ValueError:
            raise InputError(f"{path}: line {line}, column {column!r}: not a number: {raw!r}") from None
    stamp = cells[ti].strip()
    try:
        t = parse_time(stamp)
    except ValueError:
        raise InputError(
            f"{path}: line {line}, column {time_column!r}: not a time: {stamp!r} "
            "(expected ISO 8601 like 2014-04-01 00:05:00, or unix seconds)"
        ) from None
    return Row(line, stamp, t, tuple(values))


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def read_series(path: Path, column: str = "value", time_column: str = "timestamp") -> Iterator[Row]:
    """Rows of one value column (NAB's layout by default)."""
    return read_table(path, [column], time_column).rows


def detect_series(
    detector: Detector,
    rows: Iterator[Row],
    out: TextIO,
    *,
    device: str,
    channels: list[str],
    progress: TextIO | None = None,
    label: str = "",
) -> DetectResult:
    """Feed rows one at a time and write `timestamp,value,score,alert` (one channel) or
    `timestamp,<channels>,score,alert,channels` (a device of several)."""
    writer = csv.writer(out, lineterminator="\n")
    several = len(channels) > 1
    writer.writerow(["timestamp", *(channels if several else ["value"]), "score", "alert", *(["channels"] if several else [])])
    result = DetectResult([], [], [], [])
    next_report = time.monotonic() + _PROGRESS_EVERY_S
    for n, row in enumerate(rows, 1):
        reading = Reading(device=device, values=dict(zip(channels, row.values)), fcnt=n, rssi=math.nan, snr=math.nan,
                          time=row.time)
        (output,) = detector.observe([reading])
        alert = int(output.alert_state == "raised")
        result.scores.append(output.score)
        result.alerts.append(alert)
        result.raises.append(int(output.transition is not None and output.transition.state == "raised"))
        result.raw.append(output.scores.get(channels[0], math.nan))
        cells = [row.timestamp, *map(_num, row.values), _num(output.score), alert]
        if several:
            cells.append(";".join(detector.raised_channels(device)))
        writer.writerow(cells)
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
        columns = None if args.columns == "all" else (args.columns.split(",") if args.columns else [args.column])
        table = read_table(path, columns, args.time_column, args.sep)
        kwargs: dict[str, Any] = {"device": args.device or path.stem, "channels": table.columns,
                                  "progress": sys.stderr, "label": str(path)}
        if args.out == "-":
            result = detect_series(detector, table.rows, sys.stdout, **kwargs)
        else:
            with tmp.open("w", newline="") as out:
                result = detect_series(detector, table.rows, out, **kwargs)
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
    p.add_argument("--columns", metavar="A,B,C|all",
                   help="several columns, one device's channels scored together ('all': every numeric column)")
    p.add_argument("--sep", default=",", help="field separator (default: ','; SKAB: ';')")
    p.add_argument("--time-column", default="timestamp", help="column with ISO 8601 times or unix seconds (default: timestamp)")
    p.add_argument("--out", required=True, metavar="FILE", help="output CSV ('-' for standard output)")
    p.add_argument("--bundle", metavar="DIR", help="model bundle directory (default: the daemon's: the active model, else the packaged default)")
    p.add_argument("--config", "-c", metavar="FILE", help="gateway configuration: its [detector] table is used")
    p.add_argument("--device", help="device name the settings see (default: the file name without extension)")
    p.set_defaults(func=handler)
