"""Long fuzz runs of the line and frame parsers (deselected by default; run with -m slow).

Every dialect and the whole pipeline get random lines, mutated good lines and mutated frames,
frames of a known device up to the line limit (the MIC path), and ChirpStack events of any shape;
only the documented rejections may come out, never an exception.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.radio.dialects import DIALECTS
from gateway.radio.serial_link import MAX_LINE
from gateway.records import Rejected
from gateway.service.state import StateStore
from gateway.uplink import lpp
from gateway.uplink.chirpstack import parse_uplink
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


# Frames of a known device up to what a line can carry (MAX_LINE), through the MIC path.
LINE_ROOM = (MAX_LINE - len("+EVT:RXP2P:-80:7:")) // 2
HEAD = bytes([0x40]) + KEYS.dev_addr.to_bytes(4, "little")


@LONG
@given(st.binary(max_size=LINE_ROOM - len(HEAD)))
def test_frames_of_a_known_device_up_to_the_line_limit(rest: bytes) -> None:
    frame = HEAD + rest
    out = pipeline("rak3172").process([f"+EVT:RXP2P:-80:7:{frame.hex()}".encode()], 0.0)
    assert out.readings == []  # no forged frame passes the MIC
    (event,) = out.events
    assert event["reason"] == ("frame_too_long" if len(frame) > 255 else event["reason"])
    assert event["reason"] in DOCUMENTED


@LONG
@given(st.integers(0, 0xFFFF), st.integers(0, 255), st.binary(max_size=255 - 13))
def test_authentic_frames_of_every_size_never_raise(fcnt: int, fport: int, payload: bytes) -> None:
    frame = build_uplink(KEYS, fcnt, fport, payload)
    out = pipeline("rak3172").process([f"+EVT:RXP2P:-80:7:{frame.hex()}".encode()], 0.0)
    assert len(out.readings) + len(out.events) == 1
    assert all(e["type"] == "mac_commands" or e["reason"] in DOCUMENTED for e in out.events)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
FIELDS = st.sampled_from(["deviceInfo", "fCnt", "fPort", "object", "data", "rxInfo", "time"])


@LONG
@given(st.dictionaries(FIELDS, JSON, max_size=6), st.dictionaries(st.text(max_size=30), JSON, max_size=6))
def test_chirpstack_events_of_any_shape(event: dict, obj: dict) -> None:
    event.setdefault("deviceInfo", {"deviceName": "pump"})
    if isinstance(event.get("object"), dict):
        event["object"] = obj
    try:
        reading = parse_uplink(json.dumps(event).encode(), 0.0)
    except Rejected as e:
        assert e.reason.startswith(("chirpstack_", "lpp_"))
        return
    assert reading.values and all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name) for name in reading.values)


@LONG
@given(st.binary(max_size=2000))
def test_chirpstack_payloads_of_any_bytes(payload: bytes) -> None:
    try:
        parse_uplink(payload, 0.0)
    except Rejected as e:
        assert e.reason.startswith(("chirpstack_", "lpp_"))
