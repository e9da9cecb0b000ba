"""State saved with three time scales loads into a detector configured with two (a changed `scales`)."""

from __future__ import annotations

from pathlib import Path

from gateway.detect.detector import Detector
from gateway.detect.settings import DetectorSettings
from gateway.service.state import StateStore
from tests.test_detector import FAST, StubScorer, run, spike_series


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
