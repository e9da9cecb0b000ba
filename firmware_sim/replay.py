"""A recorded series (CSV, NAB's `timestamp,value` layout as it is) replayed as one node's readings."""

from __future__ import annotations

import csv
import random
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from firmware_sim.engine import Engine, SimNode
from firmware_sim.nodes import Sensor, SensorNode, Signal
from firmware_sim.radio import RadioConfig
from gateway.config import ConfigError
from gateway.uplink import lpp
from gateway.uplink.lorawan import SessionKeys

# Sample times are rebuilt from origin + offset in floats; this absorbs the rounding.
_TIME_SLACK_S = 1e-6


@dataclass(frozen=True, slots=True)
class Series:
    origin: float | None  # unix time of the first row; None without a time column
    offsets: list[float]  # seconds from the first row, increasing (see read_series)
    values: list[float]
    warnings: list[str] = field(default_factory=list)  # for the user: where the file's clock stepped back


def _timestamp(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        stamp = datetime.fromisoformat(text.strip())
        return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()  # naive means UTC


def read_series(path: Path, column: str, time_column: str | None) -> Series:
    """The column's values and, with `time_column`, their times; errors name file, row and column.

    Rows are sent in the file's order. Where its clock steps back (NAB's machine_temperature
    file does, an hour at a clock change), the later rows keep their spacing but are moved
    after the row before, one usual step on, and a warning says so: `detect` too takes the
    rows in the file's order.
    """
    try:
        f = path.open(newline="")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    offsets: list[float] = []
    values: list[float] = []
    origin: float | None = None
    with f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        for wanted in (column, time_column):
            if wanted is not None and wanted not in header:
                raise ConfigError(f"{path}: no column {wanted!r} (columns: {', '.join(header)})")
        last = -float("inf")
        step = 1.0  # the usual step between rows, for a row whose time is not after the one before
        shift = 0.0
        warnings: list[str] = []
        for row_no, row in enumerate(reader, start=2):
            try:
                values.append(float(row[column]))
            except (TypeError, ValueError):
                raise ConfigError(f"{path}: row {row_no}: {column}: not a number ({row[column]!r})") from None
            if time_column is None:
                continue
            try:
                t = _timestamp(row[time_column])
            except (TypeError, ValueError):
                raise ConfigError(f"{path}: row {row_no}: {time_column}: not a time ({row[time_column]!r})") from None
            t += shift
            if t <= last:
                moved = last + step - t
                warnings.append(
                    f"{path}: row {row_no}: {time_column} {row[time_column]} is {last - t:g} s before the row "
                    f"before; rows are sent in the file's order, from this one on {moved:g} s later than written"
                )
                shift += moved
                t += moved
            elif offsets:
                step = t - last
            last = t
            origin = t if origin is None else origin
            offsets.append(t - origin)
    if not values:
        raise ConfigError(f"{path}: no rows")
    return Series(origin, offsets, values, warnings)


def check_encodable(series: Series, path: Path, column: str, channel: int, lpp_type: str) -> None:
    """Every value must fit the LPP type; say which row does not, before anything is sent."""
    for row_no, value in enumerate(series.values, start=2):
        try:
            lpp.encode([(channel, lpp_type, value)])
        except ValueError as e:
            raise ConfigError(f"{path}: row {row_no}: {column}: {e} (choose another --type)") from None


def series_signal(times: list[float], values: list[float], origin: float) -> Signal:
    """The value recorded at the node's clock `t`."""
    return lambda t, rng: values[max(0, bisect_right(times, t - origin + _TIME_SLACK_S) - 1)]


def replay_engine(
    series: Series,
    keys: SessionKeys,
    *,
    channel: int,
    lpp_type: str,
    rate: float | None,
    now: float,
    fcnt: int = 0,
) -> Engine:
    """One node sending the series over an ideal radio: at its own times, or `rate` frames per
    simulated second when given (or when the series has no times)."""
    if rate is not None or series.origin is None:
        per_s = rate or 1.0
        times = [i / per_s for i in range(len(series.values))]
        origin = now
    else:
        times, origin = series.offsets, series.origin
    sensor = Sensor(channel, lpp_type, series_signal(times, series.values, origin))
    period = times[1] - times[0] if len(times) > 1 else 1.0
    node = SimNode(SensorNode(keys, [sensor], period_s=period, fcnt=fcnt), times=times)
    return Engine([node], RadioConfig.ideal(), rng=random.Random(0), origin=origin)
