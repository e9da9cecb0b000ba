"""Long fuzz runs of the line and frame parsers (deselected by default; run with -m slow).

Every dialect and the whole pipeline get random lines, mutated good lines and mutated frames;
only the documented rejections may come out, never an exception.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.radio.dialects import DIALECTS
from gateway.records import Rejected
from gateway.service.state import StateStore
from gateway.uplink import lpp
from gateway.uplink.lorawan import SessionKeys, UplinkDecoder, build_uplink
from gateway.uplink.pipeline import Pipeline
from gateway.uplink.rejections import RejectionCounter

from .test_pipeline import DOCUMENTED

pytestmark = pytest.mark.slow
LONG = settings(max_examples=20_000, deadline=None, suppress_health_check=list(HealthCheck))
KEYS = SessionKeys("pump", 0x26011BDA, bytes(range(16)), bytes(range(16, 32)))
FRAME = build_uplink(KEYS, 7, 1, lpp.encode([(1, "temperature", 21.5), (2, "relative_humidity", 55.0),
                                             (6, "accelerometer", (0.1, -0.2, 1.0)), (1, "gps", (1.0, 2.0, 3.0))]))
GOOD_LINES = {
    "rylr": f"+RCV=1,{len(FRAME) * 2},{FRAME.hex().upper()},-80,7",
    "rak3172": f"+EVT:RXP2P:-80:7:{FRAME.hex().upper()}",
    "rn2483": f"radio_rx  {FRAME.hex().upper()}",
}


def pipeline(dialect: str) -> Pipeline:
    return Pipeline(DIALECTS[dialect](), UplinkDecoder([KEYS], StateStore(":memory:")), RejectionCounter(0.0))


@LONG
@given(st.sampled_from(sorted(DIALECTS)), st.lists(st.binary(max_size=600), max_size=8))
def test_random_lines(dialect: str, lines: list[bytes]) -> None:
    out = pipeline(dialect).process(list(lines), 0.0)
    assert {e["reason"] for e in out.events} <= DOCUMENTED


@LONG
@given(st.sampled_from(sorted(DIALECTS)), st.lists(st.tuples(st.integers(0, 400), st.binary(max_size=4)), max_size=6))
def test_mutated_good_lines(dialect: str, edits: list[tuple[int, bytes]]) -> None:
    line = bytearray(GOOD_LINES[dialect].encode())
    for pos, insert in edits:
        pos %= len(line) + 1
        line[pos:pos + len(insert)] = insert
    out = pipeline(dialect).process([bytes(line)], 0.0)
    assert {e["reason"] for e in out.events} <= DOCUMENTED


@LONG
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(1, 255)), min_size=1, max_size=4),
       st.integers(0, len(FRAME)))
def test_mutated_frames_are_never_accepted(flips: list[tuple[int, int]], cut: int) -> None:
    frame = bytearray(FRAME)
    for pos, xor in flips:
        frame[pos % len(frame)] ^= xor
    mutated = bytes(frame[:cut])
    out = pipeline("rak3172").process([f"+EVT:RXP2P:-80:7:{mutated.hex()}".encode()], 0.0)
    if mutated != FRAME:  # flips can cancel out
        assert out.readings == []  # a changed or cut frame never passes the MIC
    assert {e["reason"] for e in out.events} <= DOCUMENTED


@LONG
@given(st.binary(max_size=300))
def test_lpp_decoder(payload: bytes) -> None:
    try:
        lpp.decode(payload)
    except Rejected as e:
        assert e.reason in {"lpp_empty", "lpp_unknown_type", "lpp_truncated"}
