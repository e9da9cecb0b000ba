"""Discrete-event simulation of a fleet of nodes and the radio channel, in simulated seconds.

No threads, no clock, no I/O: `step()` processes the next event and returns the packets the
module hears. The runner in simulation.py paces it against the wall clock and a pty; tests and
the benchmark drive it directly.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from firmware_sim.airtime import DutyCycle, eu868_sub_band, time_on_air
from firmware_sim.nodes import SensorNode
from firmware_sim.radio import (
    EU868_DEFAULT_CHANNELS_HZ,
    Channel,
    Delivery,
    RadioConfig,
    Transmission,
)

# At equal times a packet ends before the next one starts (touching is no overlap), and nodes
# sample last, after the moment's packets have come and gone.
_END, _START, _SAMPLE = 0, 1, 2


@dataclass
class SimNode:
    """A node's firmware plus where and how it transmits."""

    firmware: SensorNode
    sf: int = 7
    distance_m: float = 100.0
    channels_hz: tuple[int, ...] = EU868_DEFAULT_CHANNELS_HZ
    first_s: float = 0.0  # simulated time of the first sample
    jitter: float = 0.0  # each period varies uniformly by +-jitter of itself, as stacks randomise
    times: Sequence[float] | None = None  # explicit sample times (a replay); None: every period
    duty: DutyCycle = field(default_factory=DutyCycle)
    shadowing_db: float = 0.0
    pending: bool = False  # a frame waits for its duty-cycle slot
    _next: int = field(default=0, init=False, repr=False)  # index into `times`

    @property
    def name(self) -> str:
        return self.firmware.name


@dataclass
class Stats:
    sampled: int = 0
    silent: int = 0  # sampled in a dropout: built, counted, never sent
    duty_skipped: int = 0  # due while the previous frame still waited for its slot
    duty_delayed: int = 0  # sent later than sampled because of the duty cycle
    transmitted: int = 0
    delivered: int = 0
    collided: int = 0
    too_weak: int = 0
    crc_error: int = 0
    corrupted: int = 0  # passed the module's CRC with bit errors: the gateway's MIC must catch them
    duplicates: int = 0
    airtime_s: float = 0.0


class Engine:
    def __init__(
        self,
        nodes: list[SimNode],
        radio: RadioConfig,
        *,
        rng: random.Random,
        origin: float,
        keep_log: bool = False,
    ) -> None:
        """`origin` is the nodes' clock (unix seconds) at simulated time 0."""
        self.nodes = nodes
        self.radio = radio
        self.rng = rng
        self.origin = origin
        self.channel = Channel(radio, random.Random(rng.random()))
        self.stats = Stats()
        self.now = 0.0
        # With keep_log every transmission is kept, for tests; a long run leaves it off.
        self.log: list[Transmission] | None = [] if keep_log else None
        self._events: list[tuple[float, int, int, int, Transmission | None]] = []
        self._seq = 0
        for i, node in enumerate(nodes):
            node.shadowing_db = rng.gauss(0, radio.shadowing_db) if radio.shadowing_db else 0.0
            if node.times is None:
                self._push(node.first_s, _SAMPLE, i, None)
            elif node.times:
                self._push(node.times[0], _SAMPLE, i, None)
                node._next = 1

    def _push(self, t: float, kind: int, index: int, tx: Transmission | None) -> None:
        self._seq += 1
        heapq.heappush(self._events, (t, kind, self._seq, index, tx))

    def next_time(self) -> float | None:
        return self._events[0][0] if self._events else None

    def step(self) -> list[Delivery]:
        """Process the next event; the packets the module hears at this moment."""
        t, kind, _, index, tx = heapq.heappop(self._events)
        self.now = t
        if kind == _SAMPLE:
            self._sample(index)
            return []
        assert tx is not None
        if kind == _START:
            self.nodes[index].pending = False
            self.channel.begin(tx)
            self.stats.transmitted += 1
            self.stats.airtime_s += tx.end - tx.start
            if self.log is not None:
                self.log.append(tx)
            self._push(tx.end, _END, index, tx)
            return []
        outcome, heard = self.channel.end(tx)
        setattr(self.stats, outcome, getattr(self.stats, outcome) + 1)
        self.stats.duplicates += len(heard) > 1
        return heard

    def run(self, until: float) -> Iterator[Delivery]:
        """Every packet heard up to simulated time `until`."""
        while self._events and self._events[0][0] <= until:
            yield from self.step()
        self.now = max(self.now, until)

    def _sample(self, index: int) -> None:
        node = self.nodes[index]
        t = self.now
        self._schedule_next(index, node, t)
        self.stats.sampled += 1
        if node.pending:
            self.stats.duty_skipped += 1
            return
        clock = self.origin + t
        frame, readings = node.firmware.uplink(clock)
        if node.firmware.silent(clock):
            self.stats.silent += 1
            return
        freq = self._pick_channel(node, t)
        airtime = time_on_air(len(frame), node.sf, self.radio.bandwidth_hz)
        start = node.duty.next_allowed(t, airtime, eu868_sub_band(freq)) if self.radio.duty_cycle else t
        if start > t:
            self.stats.duty_delayed += 1
        rssi = self.radio.mean_rssi(node.distance_m) + node.shadowing_db
        if self.radio.fading_db:
            rssi += self.rng.gauss(0, self.radio.fading_db)
        tx = Transmission(node.name, frame, freq, node.sf, start, start + airtime, rssi,
                          node.firmware.fcnt - 1, readings)
        node.pending = True
        self._push(start, _START, index, tx)

    def _pick_channel(self, node: SimNode, t: float) -> int:
        """A random channel among those free soonest, as LoRaWAN stacks pick under the duty cycle."""
        channels = node.channels_hz
        if len(channels) == 1:
            return channels[0]
        if self.radio.duty_cycle:
            free = [max(t, node.duty.free_at(eu868_sub_band(f))) for f in channels]
            soonest = min(free)
            channels = tuple(f for f, at in zip(channels, free) if at == soonest)
        return channels[0] if len(channels) == 1 else self.rng.choice(channels)

    def _schedule_next(self, index: int, node: SimNode, t: float) -> None:
        if node.times is not None:
            if node._next < len(node.times):
                self._push(node.times[node._next], _SAMPLE, index, None)
                node._next += 1
            return
        period = node.firmware.period_s
        if node.jitter:
            period *= 1 + self.rng.uniform(-node.jitter, node.jitter)
        self._push(t + period, _SAMPLE, index, None)
