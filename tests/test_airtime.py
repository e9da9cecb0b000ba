"""Time on air against the Semtech SX127x figures, and the EU868 duty-cycle budget."""

from __future__ import annotations

import pytest

from firmware_sim.airtime import DutyCycle, eu868_sub_band, symbol_time, time_on_air


def test_sf7_125khz_20_bytes_matches_semtech_figure() -> None:
    # SX1276 datasheet formula / Semtech LoRa calculator: 56.576 ms.
    assert time_on_air(20, 7) == pytest.approx(0.056576, abs=1e-12)


def test_sf12_125khz_20_bytes_matches_semtech_figure() -> None:
    # Low data rate optimisation comes on by itself at SF12/125 kHz (32.768 ms symbols).
    assert time_on_air(20, 12) == pytest.approx(1.318912, abs=1e-12)


def test_low_data_rate_optimisation_is_automatic_from_16_ms_symbols() -> None:
    assert symbol_time(11, 125_000) == pytest.approx(0.016384)
    assert time_on_air(20, 11) == pytest.approx(time_on_air(20, 11, low_dr_optimize=True))
    assert time_on_air(20, 10) == pytest.approx(time_on_air(20, 10, low_dr_optimize=False))
    # Forcing it off at SF12 packs more bits per symbol: fewer symbols, shorter packet.
    assert time_on_air(51, 12, low_dr_optimize=False) < time_on_air(51, 12)


def test_header_crc_coding_rate_and_bandwidth_change_the_figure() -> None:
    base = time_on_air(20, 7)
    assert time_on_air(20, 7, explicit_header=False) < base
    assert time_on_air(20, 7, crc=False) < base
    assert time_on_air(20, 7, cr=4) > base
    assert time_on_air(20, 7, bw_hz=250_000) == pytest.approx(base / 2)
    # Preamble: 8 symbols + 4.25; each extra symbol is one symbol time.
    assert time_on_air(20, 7, preamble=9) - base == pytest.approx(symbol_time(7, 125_000))


def test_empty_payload_still_costs_header_symbols() -> None:
    # 12.25 preamble symbols + 8 + ceil((28 - 28 + 16) / 28) * 5 = 13 payload symbols.
    assert time_on_air(0, 7) == pytest.approx((12.25 + 13) * 0.001024)


@pytest.mark.parametrize(
    "kwargs",
    [{"sf": 5}, {"sf": 13}, {"sf": 7, "cr": 0}, {"sf": 7, "cr": 5}, {"sf": 7, "bw_hz": 0}],
)
def test_out_of_range_settings_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        time_on_air(20, **kwargs)


def test_payload_longer_than_lora_allows_is_refused() -> None:
    with pytest.raises(ValueError):
        time_on_air(256, 7)


def test_duty_cycle_time_off_after_each_transmission() -> None:
    dc = DutyCycle(limit=0.01)
    assert dc.next_allowed(now=0.0, airtime=1.0) == 0.0
    # Off for 1 s * (1 / 0.01 - 1) = 99 s after the 1 s transmission ends at t = 1.
    assert dc.next_allowed(now=10.0, airtime=0.5) == pytest.approx(100.0)
    # That one ends at 100.5 and holds the band for 49.5 s more.
    assert dc.next_allowed(now=100.0, airtime=0.1) == pytest.approx(150.0)
    # Later than the band frees up: no wait.
    assert dc.next_allowed(now=1000.0, airtime=0.1) == 1000.0


def test_duty_cycle_share_never_exceeds_the_limit() -> None:
    dc = DutyCycle(limit=0.01)
    airtime = time_on_air(20, 7)
    starts = [dc.next_allowed(now=0.0, airtime=airtime) for _ in range(100)]
    # Back to back as fast as allowed: one airtime in every airtime / limit seconds.
    for earlier, later in zip(starts, starts[1:]):
        assert later - earlier == pytest.approx(airtime / 0.01)


def test_duty_cycle_is_tracked_per_sub_band() -> None:
    dc = DutyCycle()
    g1 = eu868_sub_band(868_100_000)
    g3 = eu868_sub_band(869_525_000)
    assert (g1.name, g1.limit) == ("h1.5", 0.01)
    assert (g3.name, g3.limit) == ("h1.7", 0.1)
    assert dc.next_allowed(0.0, 1.0, g1) == 0.0
    assert dc.next_allowed(0.0, 1.0, g3) == 0.0  # another sub-band is not held up
    assert dc.next_allowed(0.0, 1.0, g3) == pytest.approx(10.0)  # 10 %: off 9 s
    assert dc.next_allowed(0.0, 1.0, g1) == pytest.approx(100.0)


def test_eu868_sub_band_edges_and_gaps() -> None:
    assert eu868_sub_band(868_000_000).name == "h1.5"
    assert eu868_sub_band(867_900_000).name == "h1.4"
    assert eu868_sub_band(863_000_000).limit == 0.001
    for outside in (862_999_999, 868_650_000, 869_300_000, 870_000_000, 915_000_000):
        with pytest.raises(ValueError):
            eu868_sub_band(outside)


def test_duty_cycle_limit_is_validated() -> None:
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            DutyCycle(bad)
