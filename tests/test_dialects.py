"""Gateway-side parsing of each module's receive events and set-up, without I/O."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import SerialConfig
from gateway.radio.dialects import DIALECTS, Rak3172, Rn2483, Rylr
from gateway.records import Rejected

FRAME = bytes.fromhex("400403020180010001a694642615d6c3b582")
HEX = FRAME.hex().upper()


def test_rylr_event() -> None:
    result = Rylr().on_line(f"+RCV=7,{len(HEX)},{HEX},-87,9", 5.0)
    (frame,) = result.frames
    assert (frame.payload, frame.rssi, frame.snr, frame.received_at) == (FRAME, -87.0, 9.0, 5.0)


def test_rylr_length_cuts_data_that_contains_commas() -> None:
    # The length field, not the commas, delimits the data: here the data field itself holds commas.
    with pytest.raises(Rejected) as e:
        Rylr().on_line("+RCV=7,5,ab,cd,-87,9", 0.0)
    assert e.value.reason == "bad_hex"  # cut at 5 characters: "ab,cd" is then judged as hex


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (f"+RCV=7,{len(HEX) + 2},{HEX},-87,9", "bad_length"),
        (f"+RCV=7,{len(HEX) - 2},{HEX},-87,9", "bad_length"),
        ("+RCV=7,3,abc,-87,9", "bad_hex"),
        ("+RCV=7,4,zz00,-87,9", "bad_hex"),
        ("+RCV=7,6,AB CD ,-87,9", "bad_hex"),  # bytes.fromhex alone would take the spaces
        ("+RCV=7,4,\u0661\u0662AB,-87,9", "bad_hex"),  # Arabic-Indic digits: not hex either
        ("+RCV=7,4,0000,loud,9", "unrecognized_line"),
        ("+RCV=7", "unrecognized_line"),
        ("+RCV=x,4,0000,-87,9", "unrecognized_line"),
        ("hello", "unrecognized_line"),
    ],
)
def test_rylr_malformed(line: str, reason: str) -> None:
    with pytest.raises(Rejected) as e:
        Rylr().on_line(line, 0.0)
    assert e.value.reason == reason


def test_rak3172_event_and_malformed() -> None:
    (frame,) = Rak3172().on_line(f"+EVT:RXP2P:-44:11:{HEX}", 1.0).frames
    assert (frame.payload, frame.rssi, frame.snr) == (FRAME, -44.0, 11.0)
    for line, reason in [("+EVT:RXP2P:-44:11", "unrecognized_line"), ("+EVT:RXP2P:-44:11:ABC", "bad_hex"),
                         ("+EVT:RXP2P:-44:nan:AB", "unrecognized_line")]:
        with pytest.raises(Rejected) as e:
            Rak3172().on_line(line, 0.0)
        assert e.value.reason == reason
    assert Rak3172().on_line("+EVT:TXP2P DONE", 0.0).frames == ()


def test_rn2483_asks_for_signal_then_rearms() -> None:
    d = Rn2483()
    first = d.on_line(f"radio_rx  {HEX}", 2.0)
    assert (first.frames, first.commands) == ((), ("radio get snr",))
    second = d.on_line("-3", 2.1)
    assert (second.frames, second.commands) == ((), ("radio get rssi",))
    third = d.on_line("-96", 2.2)
    (frame,) = third.frames
    assert (frame.payload, frame.snr, frame.rssi, frame.received_at) == (FRAME, -3.0, -96.0, 2.0)
    assert third.commands == ("radio rx 0",)


def test_rn2483_old_firmware_without_rssi() -> None:
    d = Rn2483()
    d.on_line(f"radio_rx  {HEX}", 0.0)
    d.on_line("5", 0.0)
    (frame,) = d.on_line("invalid_param", 0.0).frames
    assert frame.snr == 5.0 and math.isnan(frame.rssi)


def test_rn2483_rearms_after_radio_err_and_after_a_lost_reply() -> None:
    d = Rn2483()
    assert d.on_line("radio_err", 0.0).commands == ("radio rx 0",)
    d.on_line(f"radio_rx  {HEX}", 10.0)
    assert d.on_idle(10.5) == []
    assert d.on_idle(12.0) == ["radio rx 0"]


@pytest.mark.parametrize("line", ["radio_rx  ABCDE", "radio_rx", "radio_rx  ZZ", "radio_rx  AB CD"])
def test_rn2483_rearms_after_a_malformed_radio_rx(line: str) -> None:
    result = Rn2483().on_line(line, 0.0)
    assert result.commands == ("radio rx 0",) and result.frames == ()
    assert result.rejected is not None and result.rejected.reason == "bad_hex"


@pytest.mark.parametrize("name", sorted(DIALECTS))
def test_setup_commands_carry_the_radio_settings(name: str) -> None:
    cfg = SerialConfig(dialect=name, frequency_hz=868_300_000, spreading_factor=9, coding_rate=6)
    text = "\n".join(step.command for step in DIALECTS[name]().setup(cfg))
    assert "868300000" in text
    assert {"rylr": "AT+PARAMETER=9,7,2,8", "rak3172": "AT+P2P=868300000:9:125:1:8:14",
            "rn2483": "radio set sf sf9"}[name] in text


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(sorted(DIALECTS)), st.text(max_size=120))
def test_any_line_parses_or_is_rejected_with_a_reason(name: str, line: str) -> None:
    dialect = DIALECTS[name]()
    try:
        dialect.on_line(line, 0.0)
    except Rejected as e:
        assert e.reason in {"unrecognized_line", "bad_hex", "bad_length"}


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([f"+RCV=7,{len(HEX)},{HEX},-87,9", f"+EVT:RXP2P:-44:11:{HEX}", f"radio_rx  {HEX}"]),
       st.integers(0, 60), st.text(max_size=3))
def test_mutated_events(line: str, pos: int, insert: str) -> None:
    mutated = line[:pos] + insert + line[pos + 1:]
    for dialect in DIALECTS.values():
        try:
            dialect().on_line(mutated, 0.0)
        except Rejected as e:
            assert e.reason in {"unrecognized_line", "bad_hex", "bad_length"}
