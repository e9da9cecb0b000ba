"""Availability: online when heard, offline after three expected periods of silence, back when heard."""

from __future__ import annotations

from gateway.publish.availability import AvailabilityTracker


def test_configured_period() -> None:
    tracker = AvailabilityTracker({"pump": 60.0})
    assert tracker.seen("pump", 0.0) is True
    assert tracker.seen("pump", 60.0) is False
    assert tracker.gone_silent(60.0 + 179) == []
    assert tracker.gone_silent(60.0 + 181) == ["pump"]
    assert tracker.gone_silent(1000.0) == []  # reported once
    assert tracker.seen("pump", 1000.0) is True  # back online
    assert tracker.expected_period("pump") == 60.0


def test_learned_period_ignores_the_outage() -> None:
    tracker = AvailabilityTracker()
    for t in range(0, 100, 10):
        tracker.seen("node", float(t))
    assert tracker.expected_period("node") == 10.0
    assert tracker.gone_silent(125.0) == ["node"]
    tracker.seen("node", 500.0)
    assert tracker.expected_period("node") == 10.0  # the 410 s gap was an outage, not a period
    assert tracker.gone_silent(520.0) == []


def test_one_uplink_teaches_nothing() -> None:
    tracker = AvailabilityTracker()
    tracker.seen("once", 0.0)
    assert tracker.expected_period("once") is None
    assert tracker.gone_silent(1e9) == []
