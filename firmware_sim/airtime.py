"""LoRa time on air (Semtech SX127x datasheet formula) and the EU868 duty-cycle budget."""

from __future__ import annotations

from dataclasses import dataclass

# LoRaWAN turns low data rate optimisation on from this symbol time (SF11 and SF12 at 125 kHz).
_LDRO_SYMBOL_S = 0.016


def symbol_time(sf: int, bw_hz: int) -> float:
    """Seconds per LoRa symbol: 2^SF / BW."""
    return (1 << sf) / bw_hz


def time_on_air(
    payload_len: int,
    sf: int,
    bw_hz: int = 125_000,
    cr: int = 1,
    preamble: int = 8,
    explicit_header: bool = True,
    crc: bool = True,
    low_dr_optimize: bool | None = None,
) -> float:
    """Seconds a LoRa packet of `payload_len` bytes is on air.

    `cr` is 1..4 for 4/5..4/8. `low_dr_optimize=None` switches it on when a symbol lasts
    16 ms or more, as LoRaWAN stacks do. SX127x formula: SF6..SF12 only (the SX126x
    counts SF5/SF6 differently).
    """
    if not 6 <= sf <= 12:
        raise ValueError(f"spreading factor {sf} outside SF6..SF12")
    if not 1 <= cr <= 4:
        raise ValueError(f"coding rate {cr} outside 1..4 (4/5..4/8)")
    if not 0 <= payload_len <= 255:
        raise ValueError(f"payload length {payload_len} outside 0..255")
    if bw_hz <= 0 or preamble < 0:
        raise ValueError("bandwidth must be positive and preamble non-negative")
    t_sym = symbol_time(sf, bw_hz)
    de = t_sym >= _LDRO_SYMBOL_S if low_dr_optimize is None else low_dr_optimize
    # Integer arithmetic for the ceiling so exact figures stay exact.
    numerator = 8 * payload_len - 4 * sf + 28 + 16 * crc - 20 * (not explicit_header)
    denominator = 4 * (sf - 2 * de)
    payload_symbols = 8 + max(-(-numerator // denominator) * (cr + 4), 0)
    return (preamble + 4.25 + payload_symbols) * t_sym


@dataclass(frozen=True, slots=True)
class SubBand:
    name: str
    low_hz: int
    high_hz: int
    limit: float  # fraction of time a transmitter may occupy the sub-band


# ETSI EN 300 220-2 sub-bands as the LoRaWAN EU868 regional parameters use them.
EU868_SUB_BANDS: tuple[SubBand, ...] = (
    SubBand("h1.3", 863_000_000, 865_000_000, 0.001),
    SubBand("h1.4", 865_000_000, 868_000_000, 0.01),
    SubBand("h1.5", 868_000_000, 868_600_000, 0.01),
    SubBand("h1.6", 868_700_000, 869_200_000, 0.001),
    SubBand("h1.7", 869_400_000, 869_650_000, 0.1),
    SubBand("h1.9", 869_700_000, 870_000_000, 0.01),
)


def eu868_sub_band(freq_hz: int) -> SubBand:
    """The EU868 sub-band holding `freq_hz`; ValueError in the gaps and outside 863-870 MHz."""
    for band in EU868_SUB_BANDS:
        # Half-open, so an edge where two sub-bands touch (868.0 MHz) belongs to the upper one.
        if band.low_hz <= freq_hz < band.high_hz:
            return band
    raise ValueError(f"{freq_hz} Hz is in no EU868 sub-band")


class DutyCycle:
    """Per-sub-band transmit budget: after each transmission the sub-band is off for
    airtime * (1 / limit - 1), so its share of time on air never exceeds `limit`."""

    def __init__(self, limit: float = 0.01) -> None:
        if not 0 < limit <= 1:
            raise ValueError(f"duty-cycle limit {limit} outside (0, 1]")
        self.limit = limit
        self._free_at: dict[str, float] = {}

    def free_at(self, sub_band: SubBand | None = None) -> float:
        """When the sub-band (or the one shared band) may next be used; 0 if never used."""
        return self._free_at.get("" if sub_band is None else sub_band.name, 0.0)

    def next_allowed(self, now: float, airtime: float, sub_band: SubBand | None = None) -> float:
        """Book a transmission of `airtime` seconds wanted at `now`; return when it may start.

        The start is `now`, or later while the sub-band is still off after an earlier
        transmission; the booking then keeps the sub-band off until start + airtime / limit.
        Without `sub_band` all transmissions share one band at this instance's limit.
        """
        if airtime < 0:
            raise ValueError(f"negative airtime {airtime}")
        key, limit = ("", self.limit) if sub_band is None else (sub_band.name, sub_band.limit)
        start = max(now, self._free_at.get(key, now))
        self._free_at[key] = start + airtime + airtime * (1 / limit - 1)
        return start
