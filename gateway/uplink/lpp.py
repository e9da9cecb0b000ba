"""Cayenne LPP: `[channel][type][data]...`, big-endian.

The type table follows the ElectronicCats CayenneLPP header (src/CayenneLPP.h): type ids,
sizes, multipliers and signedness, with names taken from its LPP_* constants minus `LPP_`
in snake_case. Encoder and decoder share the one table, so they cannot drift apart.

A value is named `<type>_<channel>`; multi-value types add a suffix per field
(`accelerometer_6_x`, `gps_1_latitude`, `colour_2_r`). If one payload carries the same
channel and type twice, the later value wins, as a sensor's newest sample should.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.records import Rejected

# Raw integer range of each struct code; "W" is a 24-bit signed field (GPS), which struct lacks
# and so travels as a signed high byte plus an unsigned low 16 bits ("bH").
_RANGES = {"B": (0, 0xFF), "H": (0, 0xFFFF), "h": (-0x8000, 0x7FFF), "I": (0, 0xFFFFFFFF),
           "W": (-0x800000, 0x7FFFFF)}


@dataclass(frozen=True, slots=True)
class LppType:
    """One LPP data type, with everything the hot paths need precomputed."""

    type_id: int
    name: str
    size: int  # data bytes after the channel and type bytes
    data: struct.Struct  # the data bytes alone, for decoding in place
    record: struct.Struct  # channel, type and data, for encoding
    wide: bool  # fields are 24-bit, split in two by the structs
    mults: tuple[int, ...]  # per field: raw = value * mult
    lows: tuple[int, ...]  # per field: raw range, checked by encode
    highs: tuple[int, ...]
    suffixes: tuple[str, ...]  # one per field
    # channel -> one value name per field, made at first sight: all 256 channels of every type
    # up front are 15,000 strings, 1.3 MB, of which a fleet uses a handful.
    names: dict[int, tuple[str, ...]]


def _lpp_type(type_id: int, name: str, code: str, mult: int | tuple[int, ...],
              suffixes: tuple[str, ...] = ("",)) -> LppType:
    n = len(suffixes)
    mults = mult if isinstance(mult, tuple) else (mult,) * n
    wide = code == "W"
    fmt = ">" + ("bH" if wide else code) * n
    data = struct.Struct(fmt)
    low, high = _RANGES[code]
    return LppType(
        type_id=type_id,
        name=name,
        size=data.size,
        data=data,
        record=struct.Struct(">BB" + fmt[1:]),
        wide=wide,
        mults=mults,
        lows=(low,) * n,
        highs=(high,) * n,
        suffixes=suffixes,
        names={},
    )


_XYZ = ("_x", "_y", "_z")

TYPES: dict[int, LppType] = {t.type_id: t for t in (
    _lpp_type(0, "digital_input", "B", 1),
    _lpp_type(1, "digital_output", "B", 1),
    _lpp_type(2, "analog_input", "h", 100),
    _lpp_type(3, "analog_output", "h", 100),
    _lpp_type(100, "generic_sensor", "I", 1),
    _lpp_type(101, "luminosity", "H", 1),
    _lpp_type(102, "presence", "B", 1),
    _lpp_type(103, "temperature", "h", 10),
    _lpp_type(104, "relative_humidity", "B", 2),
    _lpp_type(113, "accelerometer", "h", 1000, _XYZ),
    _lpp_type(115, "barometric_pressure", "H", 10),
    _lpp_type(116, "voltage", "H", 100),
    _lpp_type(117, "current", "H", 1000),
    _lpp_type(118, "frequency", "I", 1),
    _lpp_type(120, "percentage", "B", 1),
    _lpp_type(121, "altitude", "h", 1),
    _lpp_type(125, "concentration", "H", 1),
    _lpp_type(128, "power", "H", 1),
    _lpp_type(130, "distance", "I", 1000),
    _lpp_type(131, "energy", "I", 1000),
    _lpp_type(132, "direction", "H", 1),
    _lpp_type(133, "unixtime", "I", 1),
    _lpp_type(134, "gyrometer", "h", 100, _XYZ),
    _lpp_type(135, "colour", "B", 1, ("_r", "_g", "_b")),
    _lpp_type(136, "gps", "W", (10000, 10000, 100), ("_latitude", "_longitude", "_altitude")),
    _lpp_type(142, "switch", "B", 1),
)}

_BY_NAME: dict[str, LppType] = {t.name: t for t in TYPES.values()}


def decode(payload: bytes) -> dict[str, float]:
    """Values of an LPP payload by name; raises Rejected on an empty, unknown or cut-short record."""
    n = len(payload)
    if not n:
        raise Rejected("lpp_empty", "zero-length payload")
    out: dict[str, float] = {}
    off = 0
    while off < n:
        channel = payload[off]
        if off + 1 == n:
            raise Rejected("lpp_truncated", f"type byte missing after channel {channel} at offset {off}: "
                                            "needed 1 byte, 0 available")
        type_id = payload[off + 1]
        t = TYPES.get(type_id)
        if t is None:
            raise Rejected("lpp_unknown_type", f"type {type_id} (0x{type_id:02X}) at offset {off + 1}")
        start = off + 2
        off = start + t.size
        if off > n:
            raise Rejected("lpp_truncated", f"{t.name} (type {type_id}) channel {channel} at offset {start}: "
                                            f"needed {t.size} bytes, {n - start} available")
        raw = t.data.unpack_from(payload, start)
        if t.wide:
            raw = (raw[0] << 16 | raw[1], raw[2] << 16 | raw[3], raw[4] << 16 | raw[5])
        # Division is correctly rounded, so r / mult is already the float nearest the decimal
        # value at the type's resolution (272 / 10 == 27.2): the same as round(r / mult, 1) and
        # cheaper, where r * 0.1 would give 27.200000000000003.
        names = t.names.get(channel)
        if names is None:
            names = t.names[channel] = tuple(f"{t.name}_{channel}{s}" for s in t.suffixes)
        for name, r, mult in zip(names, raw, t.mults):
            out[name] = r / mult
    return out


def encode(items: Iterable[tuple[int, str, float | tuple[float, ...]]]) -> bytes:
    """LPP bytes for (channel, type name, value) items; a multi-field type takes a tuple.

    Values are rounded to the type's resolution; a value outside what the type can carry
    raises ValueError rather than wrapping around on the wire.
    """
    out = bytearray()
    for channel, type_name, value in items:
        t = _BY_NAME.get(type_name)
        if t is None:
            raise ValueError(f"unknown LPP type {type_name!r}")
        if not 0 <= channel <= 0xFF:
            raise ValueError(f"{type_name}: channel {channel} outside 0..255")
        values = value if isinstance(value, tuple) else (value,)
        if len(values) != len(t.mults):
            raise ValueError(f"{type_name}: expected {len(t.mults)} values, got {value!r}")
        raws: list[int] = []
        for v, mult, low, high in zip(values, t.mults, t.lows, t.highs):
            scaled = v * mult
            # Range checked after rounding, so extremes that scale a hair over (32.767 G ->
            # 32767.000000000004) still encode; the guard keeps NaN and infinity away from round().
            r = round(scaled) if low - 1 < scaled < high + 1 else None
            if r is None or not low <= r <= high:
                raise ValueError(f"{type_name}: value {v!r} outside {low / mult}..{high / mult}")
            if t.wide:
                raws += (r >> 16, r & 0xFFFF)
            else:
                raws.append(r)
        out += t.record.pack(channel, t.type_id, *raws)
    return bytes(out)
