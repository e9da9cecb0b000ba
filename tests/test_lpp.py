"""Cayenne LPP encoder and decoder: published examples, hand-derived bytes, rejections, properties."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.records import Rejected
from gateway.uplink import lpp

REASONS = {"lpp_empty", "lpp_unknown_type", "lpp_truncated"}
Item = tuple[int, str, float | tuple[float, ...]]  # what encode takes

# Independent of gateway.uplink.lpp on purpose, so a slip in its table shows up here: per type id,
# (name, bytes per field, signed, multiplier per field, name suffixes), from the ElectronicCats
# CayenneLPP header (src/CayenneLPP.h) LPP_*, LPP_*_SIZE, LPP_*_MULT and getTypeSigned().
SPEC: dict[int, tuple[str, int, bool, tuple[int, ...], tuple[str, ...]]] = {
    0: ("digital_input", 1, False, (1,), ("",)),
    1: ("digital_output", 1, False, (1,), ("",)),
    2: ("analog_input", 2, True, (100,), ("",)),
    3: ("analog_output", 2, True, (100,), ("",)),
    100: ("generic_sensor", 4, False, (1,), ("",)),
    101: ("luminosity", 2, False, (1,), ("",)),
    102: ("presence", 1, False, (1,), ("",)),
    103: ("temperature", 2, True, (10,), ("",)),
    104: ("relative_humidity", 1, False, (2,), ("",)),
    113: ("accelerometer", 2, True, (1000,) * 3, ("_x", "_y", "_z")),
    115: ("barometric_pressure", 2, False, (10,), ("",)),
    116: ("voltage", 2, False, (100,), ("",)),
    117: ("current", 2, False, (1000,), ("",)),
    118: ("frequency", 4, False, (1,), ("",)),
    120: ("percentage", 1, False, (1,), ("",)),
    121: ("altitude", 2, True, (1,), ("",)),
    125: ("concentration", 2, False, (1,), ("",)),
    128: ("power", 2, False, (1,), ("",)),
    130: ("distance", 4, False, (1000,), ("",)),
    131: ("energy", 4, False, (1000,), ("",)),
    132: ("direction", 2, False, (1,), ("",)),
    133: ("unixtime", 4, False, (1,), ("",)),
    134: ("gyrometer", 2, True, (100,) * 3, ("_x", "_y", "_z")),
    135: ("colour", 1, False, (1,) * 3, ("_r", "_g", "_b")),
    136: ("gps", 3, True, (10000, 10000, 100), ("_latitude", "_longitude", "_altitude")),
    142: ("switch", 1, False, (1,), ("",)),
}


def raw_range(size: int, signed: bool) -> tuple[int, int]:
    bits = 8 * size
    return (-(1 << bits - 1), (1 << bits - 1) - 1) if signed else (0, (1 << bits) - 1)


def exact(raw: int, mult: int) -> float:
    """The float nearest the decimal value raw / mult: what decode must return, without float noise."""
    return float(Decimal(raw) / Decimal(mult))


# --- Published examples -----------------------------------------------------------------------
# Source: Cayenne LPP examples, ElectronicCats CayenneLPP / myDevices documentation,
# as quoted in DESIGN.md ("Payload: Cayenne LPP").
PUBLISHED = [
    ("03 67 01 10 05 67 00 FF", {"temperature_3": 27.2, "temperature_5": 25.5}),
    ("06 71 04 D2 FB 2E 00 00",
     {"accelerometer_6_x": 1.234, "accelerometer_6_y": -1.234, "accelerometer_6_z": 0.0}),
    ("01 88 06 76 5F F2 96 0A 00 03 E8",
     {"gps_1_latitude": 42.3519, "gps_1_longitude": -87.9094, "gps_1_altitude": 10.0}),
]


@pytest.mark.parametrize(("hexstr", "expected"), PUBLISHED)
def test_published_examples_decode(hexstr: str, expected: dict[str, float]) -> None:
    assert lpp.decode(bytes.fromhex(hexstr)) == expected


def test_published_examples_encode() -> None:
    assert lpp.encode([(3, "temperature", 27.2), (5, "temperature", 25.5)]) == bytes.fromhex(PUBLISHED[0][0])
    assert lpp.encode([(6, "accelerometer", (1.234, -1.234, 0.0))]) == bytes.fromhex(PUBLISHED[1][0])
    assert lpp.encode([(1, "gps", (42.3519, -87.9094, 10.0))]) == bytes.fromhex(PUBLISHED[2][0])


# --- Hand-derived from the header's sizes, multipliers and signedness ----------------------------
HAND = [
    ("16 00 01", {"digital_input_22": 1.0}),
    ("17 01 00", {"digital_output_23": 0.0}),
    ("04 02 01 49", {"analog_input_4": 3.29}),  # 0x0149 = 329, 0.01 signed
    ("05 03 FE BF", {"analog_output_5": -3.21}),  # 0xFEBF = -321 two's complement
    ("1B 64 00 00 00 2A", {"generic_sensor_27": 42.0}),
    ("19 65 01 F4", {"luminosity_25": 500.0}),
    ("18 66 01", {"presence_24": 1.0}),
    ("1A 67 FF D7", {"temperature_26": -4.1}),  # 0xFFD7 = -41, 0.1 signed
    ("02 68 6F", {"relative_humidity_2": 55.5}),  # 111 half-percent steps
    ("02 68 FF", {"relative_humidity_2": 127.5}),  # unsigned: 0xFF is not -0.5
    ("07 73 27 7F", {"barometric_pressure_7": 1011.1}),  # 0x277F = 10111, 0.1 hPa
    ("07 73 FF FF", {"barometric_pressure_7": 6553.5}),  # unsigned: high bit is not a sign
    ("08 74 01 4A", {"voltage_8": 3.3}),
    ("09 75 04 D2", {"current_9": 1.234}),
    ("0A 76 00 00 C3 50", {"frequency_10": 50000.0}),
    ("0B 78 64", {"percentage_11": 100.0}),
    ("0C 79 FF 38", {"altitude_12": -200.0}),  # 1 m signed
    ("0D 7D 01 90", {"concentration_13": 400.0}),
    ("0E 80 FF FF", {"power_14": 65535.0}),
    ("0F 82 00 00 30 39", {"distance_15": 12.345}),
    ("10 83 00 01 E2 40", {"energy_16": 123.456}),
    ("11 84 01 0E", {"direction_17": 270.0}),
    ("12 85 65 53 F1 00", {"unixtime_18": 1700000000.0}),
    ("13 86 00 64 FF 9C 27 10", {"gyrometer_19_x": 1.0, "gyrometer_19_y": -1.0, "gyrometer_19_z": 100.0}),
    ("14 87 FF 80 00", {"colour_20_r": 255.0, "colour_20_g": 128.0, "colour_20_b": 0.0}),
    ("15 8E 01", {"switch_21": 1.0}),
    ("01 88 80 00 00 7F FF FF FF FF FF",  # 24-bit signed extremes
     {"gps_1_latitude": -838.8608, "gps_1_longitude": 838.8607, "gps_1_altitude": -0.01}),
]


@pytest.mark.parametrize(("hexstr", "expected"), HAND)
def test_hand_derived_decode(hexstr: str, expected: dict[str, float]) -> None:
    values = lpp.decode(bytes.fromhex(hexstr))
    assert values == expected
    assert all(type(v) is float for v in values.values())


def test_every_spec_type_has_a_hand_derived_example() -> None:
    covered = {bytes.fromhex(h)[1] for h, _ in HAND + PUBLISHED}
    assert covered == set(SPEC) == set(lpp.TYPES)


def test_decode_has_no_float_noise() -> None:
    # Scaling by the reciprocal would give 0.30000000000000004, 0.35000000000000003, 0.009000000000000001.
    values = lpp.decode(bytes.fromhex("01 67 00 03 02 02 00 23 03 75 00 09"))
    assert values == {"temperature_1": 0.3, "analog_input_2": 0.35, "current_3": 0.009}


def test_multi_record_payload() -> None:
    payload = bytes.fromhex("01 67 00 EB 02 68 6F 03 02 01 49 06 71 00 00 00 00 03 E8")
    assert lpp.decode(payload) == {
        "temperature_1": 23.5, "relative_humidity_2": 55.5, "analog_input_3": 3.29,
        "accelerometer_6_x": 0.0, "accelerometer_6_y": 0.0, "accelerometer_6_z": 1.0,
    }


def test_duplicate_name_later_wins() -> None:
    assert lpp.decode(bytes.fromhex("03 67 01 10 03 67 00 FF")) == {"temperature_3": 25.5}


def test_same_channel_different_types_are_distinct() -> None:
    values = lpp.decode(bytes.fromhex("03 67 01 10 03 68 6F"))
    assert values == {"temperature_3": 27.2, "relative_humidity_3": 55.5}


def test_decode_accepts_bytearray_and_memoryview() -> None:
    raw = bytes.fromhex(PUBLISHED[2][0])
    assert lpp.decode(bytearray(raw)) == lpp.decode(memoryview(raw)) == PUBLISHED[2][1]


# --- Rejections ---------------------------------------------------------------------------------
def reject(payload: bytes) -> Rejected:
    with pytest.raises(Rejected) as info:
        lpp.decode(payload)
    return info.value


def test_empty() -> None:
    assert reject(b"").reason == "lpp_empty"


def test_unknown_type_names_type_and_offset() -> None:
    r = reject(bytes.fromhex("03 67 01 10 05 C8 00 00"))
    assert r.reason == "lpp_unknown_type"
    assert "200" in r.detail and "offset 5" in r.detail


def test_truncated_value_names_type_channel_offset_and_sizes() -> None:
    r = reject(bytes.fromhex("03 67 01 10 05 67 00"))
    assert r.reason == "lpp_truncated"
    for part in ("temperature", "channel 5", "offset 6", "needed 2", "1 available"):
        assert part in r.detail


def test_truncated_gps() -> None:
    r = reject(bytes.fromhex("01 88 06 76 5F F2 96 0A 00 03"))
    assert r.reason == "lpp_truncated"
    assert "gps" in r.detail and "needed 9" in r.detail and "8 available" in r.detail


def test_type_byte_missing() -> None:
    r = reject(bytes.fromhex("03 67 01 10 05"))
    assert r.reason == "lpp_truncated"
    assert "channel 5" in r.detail and "offset 4" in r.detail


def test_type_with_no_data() -> None:
    r = reject(bytes.fromhex("03 67"))
    assert r.reason == "lpp_truncated" and "0 available" in r.detail


# --- Encoder ------------------------------------------------------------------------------------
def test_encode_rounds_to_resolution() -> None:
    assert lpp.encode([(3, "temperature", 27.24)]) == bytes.fromhex("03 67 01 10")
    assert lpp.encode([(3, "temperature", 27.26)]) == bytes.fromhex("03 67 01 11")
    assert lpp.encode([(2, "relative_humidity", 55.3)]) == bytes.fromhex("02 68 6F")  # 110.6 -> 111
    assert lpp.encode([(4, "analog_input", -3.2149)]) == bytes.fromhex("04 02 FE BF")


def test_encode_accepts_extremes_that_scale_a_hair_over() -> None:
    # 32.767 * 1000 is 32767.000000000004 in binary floating point.
    payload = lpp.encode([(1, "accelerometer", (32.767, -32.768, 0)), (2, "temperature", 3276.7)])
    assert payload == bytes.fromhex("01 71 7F FF 80 00 00 00 02 67 7F FF")


@pytest.mark.parametrize(("type_name", "value"), [
    ("temperature", 3276.8),
    ("temperature", -3276.9),
    ("relative_humidity", -0.5),
    ("relative_humidity", 128.0),
    ("barometric_pressure", -0.1),
    ("percentage", 256),
    ("gps", (838.8608, 0.0, 0.0)),
    ("accelerometer", (0.0, 0.0, 40.0)),
    ("temperature", math.nan),
    ("temperature", math.inf),
])
def test_encode_rejects_out_of_range(type_name: str, value: float | tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match=type_name) as info:
        lpp.encode([(1, type_name, value)])
    assert "value" in str(info.value)


@pytest.mark.parametrize(("item", "message"), [
    ((1, "thermometer", 20.0), "unknown LPP type"),
    ((256, "temperature", 20.0), "channel 256"),
    ((1, "accelerometer", 1.0), "expected 3 values"),
    ((1, "temperature", (1.0, 2.0)), "expected 1 values"),
])
def test_encode_rejects_malformed_items(item: Item, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        lpp.encode([item])


def test_encode_nothing_is_empty() -> None:
    assert lpp.encode([]) == b""


# --- Properties ---------------------------------------------------------------------------------
def decode_or_reason(payload: bytes) -> dict[str, float] | str:
    """Either the values or the rejection reason; any other exception fails the test."""
    try:
        values = lpp.decode(payload)
    except Rejected as r:
        assert r.reason in REASONS, r
        return r.reason
    assert all(isinstance(k, str) and type(v) is float for k, v in values.items())
    return values


@st.composite
def raw_records(draw: st.DrawFn) -> tuple[bytes, dict[str, float]]:
    """One record built from the test's own SPEC with int.to_bytes, and the values it must decode to."""
    type_id = draw(st.sampled_from(sorted(SPEC)))
    name, size, signed, mults, suffixes = SPEC[type_id]
    channel = draw(st.integers(0, 255))
    low, high = raw_range(size, signed)
    raws = [draw(st.integers(low, high)) for _ in mults]
    data = b"".join(r.to_bytes(size, "big", signed=signed) for r in raws)
    values = {f"{name}_{channel}{s}": exact(r, m) for s, r, m in zip(suffixes, raws, mults)}
    return bytes((channel, type_id)) + data, values


@st.composite
def valid_payloads(draw: st.DrawFn) -> tuple[bytes, dict[str, float]]:
    records = draw(st.lists(raw_records(), min_size=1, max_size=8))
    expected: dict[str, float] = {}
    for _, values in records:
        expected.update(values)  # later wins, as decode documents
    return b"".join(r for r, _ in records), expected


@given(st.binary(max_size=64))
def test_random_bytes_decode_or_documented_rejection(payload: bytes) -> None:
    decode_or_reason(payload)


@given(valid_payloads(), st.data())
def test_mutated_payloads_decode_or_documented_rejection(
    built: tuple[bytes, dict[str, float]], data: st.DataObject
) -> None:
    buf = bytearray(built[0])
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        i = data.draw(st.integers(0, len(buf)))
        if op == "flip" and i < len(buf):
            buf[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del buf[i:]
        elif op == "insert":
            buf.insert(i, data.draw(st.integers(0, 255)))
        elif op == "delete" and i < len(buf):
            del buf[i]
    decode_or_reason(bytes(buf))


@given(valid_payloads())
def test_valid_payloads_decode_exactly(built: tuple[bytes, dict[str, float]]) -> None:
    payload, expected = built
    assert lpp.decode(payload) == expected


@given(raw_records())
def test_decode_then_encode_is_identity_on_bytes(built: tuple[bytes, dict[str, float]]) -> None:
    record, values = built
    name = SPEC[record[1]][0]
    fields = tuple(values.values())
    assert lpp.encode([(record[0], name, fields if len(fields) > 1 else fields[0])]) == record


@st.composite
def items(draw: st.DrawFn) -> Item:
    """An in-range (channel, type name, value) for encode."""
    name, size, signed, mults, _ = SPEC[draw(st.sampled_from(sorted(SPEC)))]
    low, high = raw_range(size, signed)
    vals = tuple(draw(st.floats(low / m, high / m, allow_nan=False)) for m in mults)
    return draw(st.integers(0, 255)), name, vals if len(vals) > 1 else vals[0]


@settings(max_examples=300)
@given(st.lists(items(), min_size=1, max_size=8))
def test_encode_decode_round_trip_within_resolution(readings: list[Item]) -> None:
    decoded = lpp.decode(lpp.encode(readings))
    expected: dict[str, tuple[float, int]] = {}
    for channel, name, value in readings:
        type_id = next(t for t, s in SPEC.items() if s[0] == name)
        _, _, _, mults, suffixes = SPEC[type_id]
        values = value if isinstance(value, tuple) else (value,)
        for s, v, m in zip(suffixes, values, mults):
            expected[f"{name}_{channel}{s}"] = (v, m)
    assert decoded.keys() == expected.keys()
    for key, (v, m) in expected.items():
        assert abs(decoded[key] - v) <= 0.5 / m + 1e-9 * max(1.0, abs(v)), key


def test_every_type_round_trips_at_its_resolution() -> None:
    for type_id, (name, _, signed, mults, _) in SPEC.items():
        step = tuple(-1 / m if signed else 1 / m for m in mults)
        value = step if len(step) > 1 else step[0]
        decoded = lpp.decode(lpp.encode([(9, name, value)]))
        assert list(decoded.values()) == list(step), name
