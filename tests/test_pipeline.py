"""The pipeline stage by stage: lines in, readings and counted rejections out, nothing raised."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

import pytest

from gateway.radio.dialects import DIALECTS, Rak3172, Rylr
from gateway.records import Rejected
from gateway.service.state import StateStore
from gateway.uplink.lorawan import SessionKeys, UplinkDecoder, build_uplink
from gateway.uplink.pipeline import Pipeline
from gateway.uplink.rejections import RejectionCounter

KEYS = SessionKeys("pump", 0x26011BDA, bytes(range(16)), bytes(range(16, 32)))
LPP = bytes.fromhex("03670110056700FF")  # Cayenne LPP example from DESIGN.md: 27.2 C and 25.5 C

DOCUMENTED = {
    "line_too_long", "not_text", "unrecognized_line", "bad_hex", "bad_length",
    "frame_too_short", "frame_too_long", "unsupported_mhdr", "unknown_device", "bad_mic", "replay", "invalid_frame",
    "lpp_unknown_type", "lpp_truncated", "lpp_empty", "mac_empty", "mac_unknown_command", "mac_truncated",
}


def pipeline(interval: float = 10.0) -> Pipeline:
    return Pipeline(Rylr(), UplinkDecoder([KEYS], StateStore(":memory:")), RejectionCounter(interval))


def rcv(frame: bytes) -> bytes:
    data = frame.hex().upper()
    return f"+RCV=1,{len(data)},{data},-90,6".encode()


def test_good_line_becomes_a_reading() -> None:
    out = pipeline().process([rcv(build_uplink(KEYS, 3, 1, LPP))], 100.0)
    (reading,) = out.readings
    assert (reading.device, reading.fcnt, reading.rssi, reading.snr, reading.time) == ("pump", 3, -90.0, 6.0, 100.0)
    assert reading.values == {"temperature_3": 27.2, "temperature_5": 25.5}
    assert out.events == []


def test_each_stage_rejects_with_its_reason() -> None:
    p = pipeline()
    lines: list[bytes | Rejected] = [
        b"\xff\xfegarbage",
        Rejected("line_too_long", "2000 bytes"),
        b"+RCV=1,3,abc,-1,1",
        rcv(b"\x40\x01"),
        rcv(build_uplink(KEYS, 1, 1, bytes.fromhex("0199"))),  # LPP type 0x99 is unknown
        rcv(build_uplink(KEYS, 2, 1, bytes.fromhex("016701"))),  # temperature cut short
        rcv(build_uplink(KEYS, 2, 1, LPP)),  # replay of counter 2
    ]
    out = p.process(lines, 5.0)
    assert out.readings == []
    assert [(e["stage"], e["reason"]) for e in out.events] == [
        ("serial", "not_text"), ("serial", "line_too_long"), ("serial", "bad_hex"),
        ("lorawan", "frame_too_short"), ("lpp", "lpp_unknown_type"), ("lpp", "lpp_truncated"),
        ("lorawan", "replay"),
    ]
    assert "offset 0" in out.events[0]["detail"]


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
@pytest.mark.parametrize("size", [256, 260, 511])
def test_a_frame_over_255_bytes_of_a_known_device_is_rejected_before_the_mic(dialect: str, size: int) -> None:
    # The DevAddr travels in clear: anyone can make such a frame without the keys.
    data = (bytes([0x40]) + KEYS.dev_addr.to_bytes(4, "little") + bytes(size - 5)).hex().upper()
    lines = {
        "rylr": [f"+RCV=1,{len(data)},{data},-90,6"],
        "rak3172": [f"+EVT:RXP2P:-90:6:{data}"],
        "rn2483": [f"radio_rx  {data}", "6", "-90"],  # then the replies to `radio get snr` and `radio get rssi`
    }[dialect]
    p = Pipeline(DIALECTS[dialect](), UplinkDecoder([KEYS], StateStore(":memory:")), RejectionCounter(0.0))
    out = p.process([line.encode() for line in lines], 0.0)
    assert out.readings == []
    assert [(e["stage"], e["reason"]) for e in out.events] == [("lorawan", "frame_too_long")]
    assert p.rejections.counts["frame_too_long"] == 1


def test_fport_0_carries_mac_commands_not_telemetry() -> None:
    p = pipeline()
    # DevStatusAns (battery 2 of 254, margin 2 dB) then LinkCheckReq; read as LPP it was analog_input_6.
    out = p.process([rcv(build_uplink(KEYS, 1, 0, bytes.fromhex("06020202")))], 5.0)
    assert out.readings == []
    (event,) = out.events
    assert (event["type"], event["device"], event["fcnt"]) == ("mac_commands", "pump", 1)
    assert event["commands"] == [
        {"command": "DevStatusAns", "battery": 2, "external_power": False, "margin_db": 2},
        {"command": "LinkCheckReq"},
    ]
    out = p.process([rcv(build_uplink(KEYS, 2, 0, bytes.fromhex("06FF3F")))], 6.0)
    assert out.events[0]["commands"] == [{"command": "DevStatusAns", "battery": None, "external_power": False,
                                          "margin_db": -1}]
    assert p.mac_commands == {"DevStatusAns": 2, "LinkCheckReq": 1}
    out = p.process([rcv(build_uplink(KEYS, 3, 0, bytes.fromhex("0206"))), rcv(build_uplink(KEYS, 4, 0, b"\x80"))], 7.0)
    assert [(e["stage"], e["reason"]) for e in out.events] == [("mac", "mac_truncated"), ("mac", "mac_unknown_command")]


def test_repeated_rejections_are_counted_but_reported_once_per_interval() -> None:
    p = pipeline(interval=10.0)
    out = p.process([b"noise"] * 50, 0.0)
    assert len(out.events) == 1 and p.rejections.counts["unrecognized_line"] == 50
    later = p.process([b"noise"], 11.0)
    (event,) = later.events
    assert (event["count"], event["suppressed"]) == (51, 49)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=5))
def test_random_lines_never_raise(lines: list[bytes]) -> None:
    p = pipeline(interval=0.0)
    out = p.process(list(lines), 0.0)
    assert {e["reason"] for e in out.events} <= DOCUMENTED
    replies = [x for x in lines if x == b"+OK" or x.startswith((b"+ERR=", b"+READY"))]
    # Every line is accounted for: a reading, a counted rejection, or a module reply.
    assert sum(p.rejections.counts.values()) + len(out.readings) + len(replies) == len(lines)


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 200), st.integers(1, 255), st.booleans())
def test_mutated_good_lines_never_raise(pos: int, xor: int, rak: bool) -> None:
    frame = build_uplink(KEYS, 9, 1, LPP)
    line = bytearray(f"+EVT:RXP2P:-40:7:{frame.hex()}".encode() if rak else rcv(frame))
    line[pos % len(line)] ^= xor
    p = Pipeline(Rak3172() if rak else Rylr(), UplinkDecoder([KEYS], StateStore(":memory:")), RejectionCounter(0.0))
    out = p.process([bytes(line)], 0.0)
    assert {e["reason"] for e in out.events} <= DOCUMENTED
    for reading in out.readings:  # a flip that survives (e.g. hex case, RSSI digits) still decodes the truth
        assert reading.values == {"temperature_3": 27.2, "temperature_5": 25.5}
