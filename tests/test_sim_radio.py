"""The simulated radio channel: duty cycle, collisions, distance, bit errors, duplicates.

The engine runs in simulated time without a pty, so these are exact and fast; what the module
hears goes through the gateway's own UplinkDecoder, which must reject every corrupt frame.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict

import pytest

from firmware_sim.airtime import eu868_sub_band
from firmware_sim.engine import Engine, SimNode
from firmware_sim.nodes import Sensor, SensorNode
from firmware_sim.radio import Delivery, RadioConfig
from gateway.records import RadioFrame, Rejected
from gateway.uplink import lpp
from gateway.uplink.lorawan import SessionKeys, UplinkDecoder

# No randomness in the channel unless a test asks for it.
QUIET = RadioConfig(shadowing_db=0, fading_db=0, duty_cycle=False, losses=False, capture_db=None)


def make_node(
    i: int,
    *,
    times: list[float] | None = None,
    period: float = 10.0,
    sf: int = 7,
    distance: float = 100.0,
    channels: tuple[int, ...] = (868_100_000,),
    first: float = 0.0,
) -> SimNode:
    rng = random.Random(i)
    keys = SessionKeys(f"n{i}", 0x26000000 + i, rng.randbytes(16), rng.randbytes(16))
    sensors = [Sensor(1, "temperature", lambda t, r: round(r.uniform(-20, 40), 1))]
    return SimNode(SensorNode(keys, sensors, period_s=period, rng=rng), sf=sf, distance_m=distance,
                   channels_hz=channels, first_s=first, times=times)


def run(nodes: list[SimNode], radio: RadioConfig, until: float, seed: int = 0) -> tuple[Engine, list[Delivery]]:
    engine = Engine(nodes, radio, rng=random.Random(seed), origin=1_780_000_000.0, keep_log=True)
    return engine, list(engine.run(until))


class Counters:
    def __init__(self) -> None:
        self.saved: dict[int, int] = {}

    def frame_counters(self) -> dict[int, int]:
        return dict(self.saved)

    def set_frame_counters(self, counters: dict[int, int]) -> None:
        self.saved.update(counters)


def gateway_verdicts(nodes: list[SimNode], heard: list[Delivery]) -> list[str]:
    """What the gateway's decoder makes of each heard frame, in order: 'ok' or the rejection reason."""
    decoder = UplinkDecoder([n.firmware.keys for n in nodes], Counters())
    out = []
    for d in heard:
        try:
            uplink = decoder.decode(RadioFrame(d.frame, d.rssi, d.snr, d.t))
        except Rejected as e:
            out.append(e.reason)
            continue
        assert lpp.decode(uplink.payload) == pytest.approx({f"{t}_{c}": v for c, t, v in d.readings}, abs=0.05)
        out.append("ok")
    return out


# --- duty cycle ---------------------------------------------------------------------------


def test_no_node_exceeds_its_sub_band_duty_cycle_over_a_run() -> None:
    # SF12 packets (~1.5 s) every 5 s ask for ~30% of the air; the rule allows 1% in h1.4 and h1.5
    # and 10% in h1.7, each sub-band on its own.
    channels = (867_100_000, 868_100_000, 868_300_000, 869_525_000)
    nodes = [make_node(i, sf=12, period=5.0, channels=channels, first=i * 0.37) for i in range(10)]
    horizon = 4 * 3600.0
    engine, _ = run(nodes, RadioConfig(shadowing_db=0, fading_db=0, collisions=False, losses=False), horizon)
    assert engine.log is not None
    assert engine.stats.duty_skipped > 0 and engine.stats.duty_delayed > 0  # the limit really bound them

    by_band: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for tx in engine.log:
        by_band[(tx.node, eu868_sub_band(tx.freq_hz).name)].append((tx.start, tx.end))
    assert {band for _, band in by_band} == {"h1.4", "h1.5", "h1.7"}
    for (node, band_name), txs in by_band.items():
        limit = next(b.limit for b in (eu868_sub_band(f) for f in channels) if b.name == band_name)
        # After each packet the sub-band stays off for airtime * (1/limit - 1).
        for (s0, e0), (s1, _) in itertools.pairwise(txs):
            assert s1 >= s0 + (e0 - s0) / limit - 1e-9, (node, band_name)
        airtime = sum(e - s for s, e in txs)
        longest = max(e - s for s, e in txs)
        assert airtime <= limit * horizon + longest, (node, band_name, airtime / horizon)
    # Per sub-band, not per node: a node on three sub-bands uses more than 1% in total.
    total: defaultdict[str, float] = defaultdict(float)
    for tx in engine.log:
        total[tx.node] += tx.end - tx.start
    assert min(total.values()) / horizon > 0.02


def test_without_duty_cycle_enforcement_the_same_fleet_would_break_it() -> None:
    nodes = [make_node(i, sf=12, period=5.0, first=i * 0.37) for i in range(3)]
    engine, _ = run(nodes, QUIET, 3600.0)
    assert engine.stats.airtime_s / 3 / 3600 > 0.1 and engine.stats.duty_delayed == 0


# --- collisions ---------------------------------------------------------------------------


def test_overlapping_packets_on_one_channel_and_sf_collide() -> None:
    nodes = [make_node(0, times=[0.0]), make_node(1, times=[0.01])]
    engine, heard = run(nodes, QUIET, 10)
    assert heard == [] and engine.stats.collided == 2


@pytest.mark.parametrize(
    ("second", "why"),
    [
        ({"times": [5.0]}, "later"),
        ({"times": [0.01], "channels": (868_300_000,)}, "another frequency"),
        ({"times": [0.01], "sf": 8}, "another spreading factor"),
    ],
)
def test_packets_that_do_not_overlap_do_not_collide(second: dict, why: str) -> None:
    nodes = [make_node(0, times=[0.0]), make_node(1, **second)]
    engine, heard = run(nodes, QUIET, 10)
    assert sorted(d.node for d in heard) == ["n0", "n1"], why
    assert engine.stats.collided == 0


def test_a_packet_starting_as_another_ends_does_not_collide() -> None:
    first = make_node(0, times=[0.0])
    engine, _ = run([first], QUIET, 10)
    assert engine.log is not None
    end = engine.log[0].end
    engine, heard = run([make_node(0, times=[0.0]), make_node(1, times=[end])], QUIET, 10)
    assert len(heard) == 2 and engine.stats.collided == 0


def test_capture_effect_lets_the_much_stronger_packet_through() -> None:
    near, far = make_node(0, times=[0.0], distance=100), make_node(1, times=[0.01], distance=1000)
    engine, heard = run([near, far], QUIET.model_copy(update={"capture_db": 6.0}), 10)
    assert [d.node for d in heard] == ["n0"] and engine.stats.collided == 1
    # Two packets within 6 dB of each other: neither survives.
    a, b = make_node(0, times=[0.0], distance=100), make_node(1, times=[0.01], distance=110)
    engine, heard = run([a, b], QUIET.model_copy(update={"capture_db": 6.0}), 10)
    assert heard == [] and engine.stats.collided == 2


def test_collisions_happen_exactly_where_transmissions_overlap() -> None:
    # A busy channel: 40 nodes, random times, two frequencies and two SFs.
    rng = random.Random(7)
    nodes = [
        make_node(i, times=sorted(rng.uniform(0, 120) for _ in range(20)),
                  channels=(rng.choice((868_100_000, 868_300_000)),), sf=rng.choice((7, 8)))
        for i in range(40)
    ]
    engine, heard = run(nodes, QUIET, 200)
    assert engine.log is not None
    overlapping = {
        (a.node, a.fcnt)
        for a in engine.log
        for b in engine.log
        if a is not b and (a.freq_hz, a.sf) == (b.freq_hz, b.sf) and a.start < b.end and b.start < a.end
    }
    assert 0 < len(overlapping) < len(engine.log)
    assert {(d.node, d.fcnt) for d in heard} == {(t.node, t.fcnt) for t in engine.log} - overlapping
    assert engine.stats.collided == len(overlapping)


# --- distance, bit errors, duplicates -----------------------------------------------------


def test_loss_rises_with_distance_and_a_higher_sf_reaches_further() -> None:
    radio = RadioConfig(shadowing_db=0, fading_db=3.0, duty_cycle=False, collisions=False)
    distances = [200, 1000, 2000, 2600, 3200, 5000]
    times = [i * 10.0 for i in range(300)]

    def delivered_share(sf: int) -> list[float]:
        nodes = [make_node(i, times=times, distance=d, sf=sf) for i, d in enumerate(distances)]
        _, heard = run(nodes, radio, times[-1] + 10)
        return [sum(d.node == f"n{i}" for d in heard) / len(times) for i in range(len(distances))]

    sf7 = delivered_share(7)
    assert sf7[0] == 1.0 and sf7[-1] < 0.02
    assert all(a >= b for a, b in itertools.pairwise(sf7))
    assert 0 < sf7[3] < 1  # the edge of SF7's range is gradual
    sf12 = delivered_share(12)
    assert sf12[-1] > 0.9  # 5 km is no problem at SF12


def test_rssi_and_snr_follow_the_path_loss_model() -> None:
    radio = QUIET
    nodes = [make_node(0, times=[0.0], distance=100), make_node(1, times=[5.0], distance=2000)]
    _, heard = run(nodes, radio, 10)
    near, far = heard
    assert near.rssi == round(radio.mean_rssi(100)) and far.rssi == round(radio.mean_rssi(2000))
    assert far.rssi < near.rssi
    assert far.snr == round(radio.mean_rssi(2000) - radio.noise_floor_dbm)


def test_corrupt_frames_the_crc_misses_are_caught_by_the_mic() -> None:
    # Near the SF7 floor many packets carry bit errors; a fifth of those get past the CRC.
    radio = RadioConfig(shadowing_db=0, fading_db=2.0, duty_cycle=False, collisions=False, crc_escape=0.2)
    times = [i * 10.0 for i in range(400)]
    nodes = [make_node(i, times=times, distance=2200) for i in range(3)]
    engine, heard = run(nodes, radio, times[-1] + 10)
    assert engine.stats.crc_error > engine.stats.corrupted > 0
    verdicts = gateway_verdicts(nodes, heard)
    for d, verdict in zip(heard, verdicts):
        assert verdict == ("bad_mic" if d.corrupted else "ok")
    assert verdicts.count("ok") == engine.stats.delivered


def test_duplicates_reach_the_module_and_the_gateway_rejects_the_copy_as_replay() -> None:
    radio = QUIET.model_copy(update={"duplicate_probability": 1.0})
    nodes = [make_node(0, times=[0.0, 10.0, 20.0])]
    engine, heard = run(nodes, radio, 30)
    assert [d.duplicate for d in heard] == [False, True] * 3 and engine.stats.duplicates == 3
    assert gateway_verdicts(nodes, heard) == ["ok", "replay"] * 3


def test_same_seed_same_run() -> None:
    radio = RadioConfig()

    def outcome(seed: int) -> list[tuple[str, int, int]]:
        nodes = [make_node(i, period=30.0, distance=500 + 300 * i, first=i) for i in range(8)]
        for n in nodes:
            n.jitter = 0.05
        return [(d.node, d.fcnt, d.rssi) for d in run(nodes, radio, 3600, seed)[1]]

    assert outcome(1) == outcome(1) != outcome(2)
