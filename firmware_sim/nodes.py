"""Simulated sensor nodes: readings encoded as Cayenne LPP inside LoRaWAN ABP uplinks.

A signal is a function of the node's clock `t` (unix seconds) and the node's random stream.
Faults are applied on top of the clean signal, so a test can compare the two.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from gateway.uplink import lpp
from gateway.uplink.lorawan import SessionKeys, build_uplink

LPP_FPORT = 1  # the port the Cayenne LPP convention uses
DAY_S = 86400.0

Signal = Callable[[float, random.Random], float]
FaultKind = Literal["spike", "drift", "stuck", "level_shift", "noise", "dropout"]


def _daily(t: float) -> float:
    """-1 at midnight, +1 at noon (UTC): the shape of a day's temperature."""
    return math.sin(2 * math.pi * (t % DAY_S) / DAY_S - math.pi / 2)


def daily_temperature(mean: float = 18.0, swing: float = 6.0, noise: float = 0.2) -> Signal:
    return lambda t, rng: mean + swing * _daily(t) + rng.gauss(0, noise)


def humidity(mean: float = 60.0, noise: float = 2.0, swing: float = 0.0) -> Signal:
    """Relative humidity; with `swing`, highest at night when the air is coolest."""
    return lambda t, rng: min(100.0, max(0.0, mean - swing * _daily(t) + rng.gauss(0, noise)))


def battery(start: float = 3.3, sag_per_day: float = 0.002) -> Signal:
    first: list[float] = []  # the sag counts from the node's first sample, not from the epoch

    def value(t: float, rng: random.Random) -> float:
        if not first:
            first.append(t)
        return max(2.5, start - sag_per_day * (t - first[0]) / DAY_S + rng.gauss(0, 0.005))

    return value


@dataclass(frozen=True, slots=True)
class PumpCycle:
    """A pump that runs `on_fraction` of every `cycle_s`; current and vibration both follow it."""

    cycle_s: float = 3600.0
    on_fraction: float = 0.3
    phase_s: float = 0.0

    def on(self, t: float) -> bool:
        return (t + self.phase_s) % self.cycle_s < self.on_fraction * self.cycle_s


def pump_current(pump: PumpCycle, on_a: float = 4.0, idle_a: float = 0.05, noise: float = 0.05) -> Signal:
    return lambda t, rng: max(0.0, (on_a if pump.on(t) else idle_a) + rng.gauss(0, noise))


def vibration_rms(pump: PumpCycle, on_rms: float = 2.5, idle_rms: float = 0.1, noise: float = 0.1) -> Signal:
    return lambda t, rng: max(0.0, (on_rms if pump.on(t) else idle_rms) + rng.gauss(0, noise))


@dataclass(frozen=True)
class Sensor:
    channel: int
    lpp_type: str
    signal: Signal
    low: float = -math.inf  # physical range: a fault cannot push a reading past it
    high: float = math.inf

    @property
    def name(self) -> str:
        """The gateway's name for this value."""
        return f"{self.lpp_type}_{self.channel}"


def default_sensors() -> list[Sensor]:
    return [
        Sensor(1, "temperature", daily_temperature()),
        Sensor(2, "relative_humidity", humidity(), 0.0, 100.0),
        Sensor(3, "analog_input", battery()),
    ]


@dataclass
class Fault:
    """A fault on one channel (None: the whole node, for dropout) over [start, end) of the node's clock."""

    kind: FaultKind
    channel: int | None
    start: float
    end: float
    magnitude: float = 0.0
    _held: float | None = field(default=None, init=False, repr=False)  # the stuck value

    def active(self, t: float) -> bool:
        return self.start <= t < self.end

    def apply(self, value: float, t: float, rng: random.Random) -> float:
        match self.kind:
            case "spike" | "level_shift":
                return value + self.magnitude
            case "drift":
                return value + self.magnitude * (t - self.start) / (self.end - self.start)
            case "stuck":
                if self._held is None:
                    self._held = value
                return self._held
            case "noise":
                return value + rng.gauss(0, self.magnitude)
        return value


@dataclass
class SensorNode:
    """One node's firmware: samples its sensors and frames them with its keys and counter."""

    keys: SessionKeys
    sensors: list[Sensor] = field(default_factory=default_sensors)
    period_s: float = 10.0
    fcnt: int = 0
    rng: random.Random = field(default_factory=random.Random)
    faults: list[Fault] = field(default_factory=list)
    # Fault noise draws from its own stream so a faulty run's clean values match a fault-free run's.
    fault_rng: random.Random = field(default_factory=random.Random)

    @property
    def name(self) -> str:
        return self.keys.name

    def silent(self, t: float) -> bool:
        """True inside a dropout: the node sends nothing."""
        return any(f.kind == "dropout" and f.active(t) for f in self.faults)

    def sample(self, t: float) -> list[tuple[int, str, float]]:
        out = []
        for s in self.sensors:
            value = s.signal(t, self.rng)
            for f in self.faults:
                if f.channel == s.channel and f.active(t):
                    value = f.apply(value, t, self.fault_rng)
            out.append((s.channel, s.lpp_type, min(s.high, max(s.low, value))))
        return out

    def uplink(self, t: float) -> tuple[bytes, list[tuple[int, str, float]]]:
        """The next frame on air and the readings it carries."""
        readings = self.sample(t)
        frame = build_uplink(self.keys, self.fcnt, LPP_FPORT, lpp.encode(readings))
        self.fcnt = (self.fcnt + 1) & 0xFFFFFFFF
        return frame, readings
