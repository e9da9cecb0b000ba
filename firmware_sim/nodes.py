"""Simulated sensor nodes: readings encoded as Cayenne LPP inside LoRaWAN ABP uplinks."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway import lpp
from gateway.lorawan import SessionKeys, build_uplink

LPP_FPORT = 1  # the port the Cayenne LPP convention uses

Signal = Callable[[float, random.Random], float]


def daily_temperature(mean: float = 18.0, swing: float = 6.0, noise: float = 0.2) -> Signal:
    def value(t: float, rng: random.Random) -> float:
        return mean + swing * math.sin(2 * math.pi * (t % 86400) / 86400 - math.pi / 2) + rng.gauss(0, noise)

    return value


def humidity(mean: float = 60.0, noise: float = 2.0) -> Signal:
    return lambda t, rng: min(100.0, max(0.0, mean + rng.gauss(0, noise)))


def battery(start: float = 3.3, sag_per_day: float = 0.002) -> Signal:
    first: list[float] = []  # the sag counts from the node's first sample, not from the epoch

    def value(t: float, rng: random.Random) -> float:
        if not first:
            first.append(t)
        return max(2.5, start - sag_per_day * (t - first[0]) / 86400 + rng.gauss(0, 0.005))

    return value


@dataclass(frozen=True)
class Sensor:
    channel: int
    lpp_type: str
    signal: Signal


def default_sensors() -> list[Sensor]:
    return [
        Sensor(1, "temperature", daily_temperature()),
        Sensor(2, "relative_humidity", humidity()),
        Sensor(3, "analog_input", battery()),
    ]


@dataclass
class SensorNode:
    """One node's firmware: samples its sensors and frames them with its keys and counter."""

    keys: SessionKeys
    sensors: list[Sensor] = field(default_factory=default_sensors)
    period_s: float = 10.0
    fcnt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    @property
    def name(self) -> str:
        return self.keys.name

    def sample(self, t: float) -> list[tuple[int, str, float]]:
        return [(s.channel, s.lpp_type, s.signal(t, self.rng)) for s in self.sensors]

    def uplink(self, t: float) -> tuple[bytes, list[tuple[int, str, float]]]:
        """The next frame on air and the readings it carries."""
        readings = self.sample(t)
        frame = build_uplink(self.keys, self.fcnt, LPP_FPORT, lpp.encode(readings))
        self.fcnt = (self.fcnt + 1) & 0xFFFFFFFF
        return frame, readings
