"""State saved by another configuration or an older version loads and continues: three time
scales into a detector configured with two (a changed `scales`), a version 1 record (float64
values) into the float32 scales."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest

from gateway.detect.detector import Detector
from gateway.detect.persistence import STATE_NAMESPACE
from gateway.detect.settings import DetectorSettings
from gateway.service.state import StateStore
from tests.test_detector import FAST, StubScorer, run, series, spike_series


def test_state_of_three_scales_continues_on_two(tmp_path: Path) -> None:
    x = spike_series(1200, at=1000)
    store = StateStore(tmp_path / "state.db")
    old = Detector(StubScorer(), DetectorSettings(**FAST, scales=[1, 4, 16]), store)
    run(old, x[:900])
    old.flush()
    store.close()

    migrated = Detector(StubScorer(), DetectorSettings(**FAST, scales=[1, 4]), StateStore(tmp_path / "state.db"))
    fresh = Detector(StubScorer(), DetectorSettings(**FAST, scales=[1, 4]))
    run(fresh, x[:900])
    (ch,) = migrated._devices["d1"].channels.values()
    assert [s.k for s in ch.scales] == [1, 4]  # the dropped scale's buffer is gone, not carried
    # Each kept scale carries on exactly where it was: its values and score statistics.
    for a, b in zip(ch.scales, fresh._devices["d1"].channels["temperature_1"].scales, strict=True):
        assert (a.seen, a.hcount, a.hmean, a.hvar) == (b.seen, b.hcount, b.hmean, b.hvar)
    after, straight = run(migrated, x[900:], start=900), run(fresh, x[900:], start=900)
    assert [o.scores for o in after] == [o.scores for o in straight]
    assert [o.likelihood for o in after] == [o.likelihood for o in straight]
    assert any(o.transition for o in after)  # the fault after the restart still raises


def version_1(record: bytes, newest: float | None = None) -> bytes:
    """The record version 1 wrote for the same state: its header saying so, the range's lag a whole
    window (NaN where not yet filled), each scale's values as float64. `newest`: the finest scale's
    newest value instead (one version 1 kept unrounded)."""
    (n,) = struct.unpack_from("<I", record)
    header = json.loads(record[4 : 4 + n])
    assert header["v"] == 2
    header["v"] = 1
    del header["cleared"]  # kept since version 2's second release
    header["lag"] = [math.nan] * (StubScorer().window - len(header["lag"])) + header["lag"]
    arrays, off = [], 4 + n
    for scale in header["scales"]:
        values_size, recent_size = scale["n"]
        values = np.frombuffer(record, dtype="<f4", count=values_size // 4, offset=off).astype("<f8")
        if newest is not None and scale["k"] == 1:
            values[-1] = newest
        off += values_size
        arrays += [values.tobytes(), record[off : off + recent_size]]
        off += recent_size
        scale["n"] = [values.nbytes, recent_size]
    encoded = json.dumps(header).encode()
    return struct.pack("<I", len(encoded)) + encoded + b"".join(arrays)


def saved_as_version_1(tmp_path: Path, x: np.ndarray, newest: float | None = None) -> StateStore:
    """A state database as a gateway of version 1 left it after x."""
    store = StateStore(tmp_path / "state.db")
    det = Detector(StubScorer(), DetectorSettings(**FAST), store)
    run(det, x)
    det.flush()
    records = store.blobs(STATE_NAMESPACE)
    store.put_blobs(STATE_NAMESPACE, {
        key: version_1(blob, newest) if len(json.loads(key)) == 2 else blob for key, blob in records.items()
    })
    store.close()
    return StateStore(tmp_path / "state.db")


@pytest.mark.parametrize("saved", [10, 900])  # heard less than a window, and long past the warm-up
def test_a_version_1_record_of_float64_values_continues_as_if_never_saved(tmp_path: Path, saved: int) -> None:
    x = spike_series(1200, at=1000)
    migrated = Detector(StubScorer(), DetectorSettings(**FAST), saved_as_version_1(tmp_path, x[:saved]))
    straight = Detector(StubScorer(), DetectorSettings(**FAST))
    run(straight, x[:saved])
    (ch,) = migrated._devices["d1"].channels.values()
    assert ch.seen == saved and ch.scales[0].buf.typecode == "f"
    assert len(ch.lag) == min(saved, StubScorer().window)  # the lag's unfilled slots are not carried
    after, kept = run(migrated, x[saved:], start=saved), run(straight, x[saved:], start=saved)
    # float64 values that came from float32 ones round back to them: nothing learned is lost.
    assert [o.scores for o in after] == [o.scores for o in kept]
    assert [o.likelihood for o in after] == [o.likelihood for o in kept]
    assert any(o.transition for o in after)


def test_a_version_1_value_beyond_float32_loads_at_its_edge(tmp_path: Path) -> None:
    x = series(1000)
    migrated = Detector(StubScorer(), DetectorSettings(**FAST), saved_as_version_1(tmp_path, x[:900], newest=1e300))
    (ch,) = migrated._devices["d1"].channels.values()
    assert ch.scales[0].last_values(1).tolist() == [float(np.finfo(np.float32).max)]
    assert all(math.isfinite(o.score) for o in run(migrated, x[900:], start=900))


def test_a_version_2_record_from_before_the_last_alert_was_kept_loads_with_no_scale_muted(tmp_path: Path) -> None:
    x = spike_series(1200, at=1000)
    store = StateStore(tmp_path / "state.db")
    det = Detector(StubScorer(), DetectorSettings(**FAST), store)
    run(det, x[:900])
    det.flush()
    (key,) = (k for k in store.blobs(STATE_NAMESPACE) if len(json.loads(k)) == 2)
    record = store.blobs(STATE_NAMESPACE)[key]
    (n,) = struct.unpack_from("<I", record)
    header = json.loads(record[4 : 4 + n])
    del header["cleared"]
    encoded = json.dumps(header).encode()
    store.put_blobs(STATE_NAMESPACE, {key: struct.pack("<I", len(encoded)) + encoded + record[4 + n :]})
    store.close()
    loaded = Detector(StubScorer(), DetectorSettings(**FAST), StateStore(tmp_path / "state.db"))
    (ch,) = loaded._devices["d1"].channels.values()
    assert ch.seen == 900 and ch.cleared == 0
    assert [o.likelihood for o in run(loaded, x[900:], start=900)] == [o.likelihood for o in run(det, x[900:], start=900)]
