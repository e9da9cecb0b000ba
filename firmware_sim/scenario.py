"""Scenario files: a fleet of nodes, their sensors, radio placement and the faults to inject.

TOML validated by pydantic; every error names the file and the key. The labels (ground truth)
follow from the faults: which node, which channel as the gateway names it, which fault, when.
"""

from __future__ import annotations

import importlib.resources
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from firmware_sim.airtime import eu868_sub_band
from firmware_sim.engine import SimNode
from firmware_sim.nodes import (
    Fault,
    FaultKind,
    PumpCycle,
    Sensor,
    SensorNode,
    battery,
    daily_temperature,
    humidity,
    pump_current,
    vibration_rms,
)
from firmware_sim.radio import EU868_DEFAULT_CHANNELS_HZ, RadioConfig
from gateway.config import ConfigError, read_toml
from gateway.uplink import lpp
from gateway.uplink.lorawan import SessionKeys

_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _SensorBase(_Spec):
    channel: int = Field(ge=0, le=255, description="LPP channel; the gateway names the value <lpp_type>_<channel>.")
    lpp_type: str | None = Field(None, description="LPP type to send it as; default by kind.")
    noise: float | None = Field(None, ge=0, description="Std. dev. of the measurement noise.")

    @model_validator(mode="after")
    def _known_type(self) -> _SensorBase:
        if self.lpp_type is not None and self.lpp_type not in {t.name for t in lpp.TYPES.values()}:
            raise ValueError(f"lpp_type {self.lpp_type!r} is not a Cayenne LPP type")
        return self


class TemperatureSpec(_SensorBase):
    kind: Literal["temperature"]
    mean: float = 18.0
    swing: float = Field(6.0, description="Half the day-night difference; coldest at midnight UTC.")

    def build(self, pump: PumpCycle) -> Sensor:
        return Sensor(self.channel, self.lpp_type or "temperature",
                      daily_temperature(self.mean, self.swing, 0.2 if self.noise is None else self.noise))

    @property
    def typical(self) -> float:
        return max(self.swing, 2.0)


class HumiditySpec(_SensorBase):
    kind: Literal["humidity"]
    mean: float = Field(65.0, ge=0, le=100)
    swing: float = Field(10.0, description="Day-night change; most humid at midnight.")

    def build(self, pump: PumpCycle) -> Sensor:
        return Sensor(self.channel, self.lpp_type or "relative_humidity",
                      humidity(self.mean, 1.5 if self.noise is None else self.noise, self.swing), 0.0, 100.0)

    @property
    def typical(self) -> float:
        return 10.0


class VibrationSpec(_SensorBase):
    kind: Literal["vibration"]
    on_rms: float = Field(2.5, ge=0, description="RMS vibration (mm/s) while the pump runs.")
    idle_rms: float = Field(0.1, ge=0)

    def build(self, pump: PumpCycle) -> Sensor:
        return Sensor(self.channel, self.lpp_type or "analog_input",
                      vibration_rms(pump, self.on_rms, self.idle_rms, 0.1 if self.noise is None else self.noise), 0.0)

    @property
    def typical(self) -> float:
        return max(self.on_rms, 0.5)


class CurrentSpec(_SensorBase):
    kind: Literal["current"]
    on_a: float = Field(4.0, ge=0, description="Pump current (A) while it runs.")
    idle_a: float = Field(0.05, ge=0)

    def build(self, pump: PumpCycle) -> Sensor:
        return Sensor(self.channel, self.lpp_type or "current",
                      pump_current(pump, self.on_a, self.idle_a, 0.05 if self.noise is None else self.noise), 0.0)

    @property
    def typical(self) -> float:
        return max(self.on_a, 0.5)


class BatterySpec(_SensorBase):
    kind: Literal["battery"]
    start_v: float = Field(3.3, gt=0)
    sag_per_day: float = Field(0.002, ge=0, description="Volts lost per simulated day.")

    def build(self, pump: PumpCycle) -> Sensor:
        return Sensor(self.channel, self.lpp_type or "voltage", battery(self.start_v, self.sag_per_day), 0.0)

    @property
    def typical(self) -> float:
        return 0.2


SensorSpec = Annotated[
    TemperatureSpec | HumiditySpec | VibrationSpec | CurrentSpec | BatterySpec, Field(discriminator="kind")
]

# Default fault size in units of the sensor's typical variation.
_DEFAULT_MAGNITUDE = {"spike": 3.0, "level_shift": 1.5, "drift": 2.0, "noise": 0.5, "stuck": 0.0, "dropout": 0.0}


class PumpSpec(_Spec):
    cycle_s: float = Field(3600.0, gt=0, description="One on-off cycle, simulated seconds.")
    on_fraction: float = Field(0.3, gt=0, le=1)
    phase_s: float | None = Field(None, description="Offset into the cycle at the start; default random.")


class FaultSpec(_Spec):
    kind: FaultKind
    channel: int | None = Field(None, ge=0, le=255, description="Channel it hits; not for dropout (the whole node).")
    start_s: float = Field(ge=0, description="Simulated seconds from the start.")
    end_s: float | None = Field(None, description="End (exclusive); or give duration_s.")
    duration_s: float | None = Field(None, gt=0)
    magnitude: float | None = Field(None, description="Offset (spike, level_shift), total drift, noise std. dev.")

    @model_validator(mode="after")
    def _window(self) -> FaultSpec:
        if (self.end_s is None) == (self.duration_s is None):
            raise ValueError("give exactly one of end_s and duration_s")
        if self.end_s is not None and self.end_s <= self.start_s:
            raise ValueError(f"end_s: {self.end_s} is not after start_s {self.start_s}")
        if (self.kind == "dropout") != (self.channel is None):
            raise ValueError("channel: dropout takes no channel (it silences the node); every other fault needs one")
        return self

    @property
    def end(self) -> float:
        return self.end_s if self.end_s is not None else self.start_s + (self.duration_s or 0.0)


class NodeSpec(_Spec):
    name: str = Field(pattern=_NAME)
    period_s: float = Field(60.0, gt=0, description="Seconds between uplinks (simulated).")
    sf: int = Field(7, ge=7, le=12, description="Spreading factor.")
    distance_m: float = Field(500.0, gt=0, description="Distance to the gateway.")
    channels_hz: list[int] = Field(default_factory=lambda: list(EU868_DEFAULT_CHANNELS_HZ), min_length=1)
    jitter: float = Field(0.02, ge=0, lt=1, description="Each period varies by up to this share of itself.")
    pump: PumpSpec = Field(default_factory=PumpSpec)
    sensors: list[SensorSpec] = Field(min_length=1)
    faults: list[FaultSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> NodeSpec:
        channels = [s.channel for s in self.sensors]
        if len(set(channels)) != len(channels):
            raise ValueError(f"sensors: channels repeat: {channels}")
        for i, f in enumerate(self.faults):
            if f.channel is not None and f.channel not in channels:
                raise ValueError(f"faults.{i}.channel: channel {f.channel} has no sensor (channels: {channels})")
        return self

    @field_validator("channels_hz")
    @classmethod
    def _eu868(cls, v: list[int]) -> list[int]:
        for freq in v:
            eu868_sub_band(freq)  # its ValueError says which frequency
        return v


class SimulationSpec(_Spec):
    seed: int | None = None
    duration_s: float | None = Field(None, gt=0, description="Simulated seconds to run; default: until stopped.")
    start: datetime | None = Field(None, description="The nodes' clock at the start (sets the time of day); "
                                   "default: now.")


class Scenario(_Spec):
    simulation: SimulationSpec = Field(default_factory=SimulationSpec)
    radio: RadioConfig = Field(default_factory=RadioConfig)
    nodes: list[NodeSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> Scenario:
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"nodes: names repeat: {sorted({n for n in names if names.count(n) > 1})}")
        return self

    def fleet(self, count: int | None) -> list[NodeSpec]:
        """The scenario's nodes, padded to `count` with fault-free copies (name-2, name-3, ...) or cut."""
        if count is None:
            return list(self.nodes)
        out = list(self.nodes[:count])
        taken = {n.name for n in self.nodes}
        k = 2
        while len(out) < count:
            for template in self.nodes:
                if len(out) == count:
                    break
                name = f"{template.name[:60]}-{k}"
                if name not in taken:
                    out.append(template.model_copy(update={"name": name, "faults": []}))
                    taken.add(name)
            k += 1
        return out


def bundled(name: str) -> Path:
    """A scenario shipped with the package (farm.toml, ...)."""
    return Path(str(importlib.resources.files("firmware_sim") / "scenarios" / name))


def resolve(path: Path) -> Path:
    """`path` as given, else the bundled scenario of that name."""
    if path.exists() or path.parent != Path("."):
        return path
    shipped = bundled(path.name)
    return shipped if shipped.exists() else path


def load_scenario(path: Path) -> Scenario:
    raw = read_toml(path)
    try:
        return Scenario.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_describe(path, e)) from None


def _describe(path: Path, err: ValidationError) -> str:
    """One line per error: file, full key, message. A validator names the key below its own
    (`faults.0.channel: ...`), so that part joins the key, and whole tables are not echoed."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        sub, sep, rest = msg.partition(": ")
        if sep and re.fullmatch(r"[\w.]+", sub):
            key, msg = f"{key}.{sub}" if key else sub, rest
        shown = e["type"] != "missing" and not isinstance(e["input"], dict | list)
        lines.append(f"{path}: {key or '(top level)'}: {msg}" + (f" (got {e['input']!r})" if shown else ""))
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Label:
    """Ground truth: `fault` on `node`'s value `channel` over [start_s, end_s) simulated seconds."""

    node: str
    channel: str
    fault: str
    start_s: float
    end_s: float


def build_nodes(
    specs: list[NodeSpec], keys: dict[str, SessionKeys], rng: random.Random, origin: float
) -> tuple[list[SimNode], list[Label]]:
    """Simulated nodes for `specs` (keys by name), the nodes' clock reading `origin` at time 0."""
    nodes: list[SimNode] = []
    labels: list[Label] = []
    for spec in specs:
        phase = spec.pump.phase_s if spec.pump.phase_s is not None else rng.uniform(0, spec.pump.cycle_s)
        pump = PumpCycle(spec.pump.cycle_s, spec.pump.on_fraction, phase)
        sensors = [s.build(pump) for s in spec.sensors]
        by_channel = {built.channel: (spec_s, built) for spec_s, built in zip(spec.sensors, sensors, strict=True)}
        faults = []
        for f in spec.faults:
            magnitude = f.magnitude
            if magnitude is None and f.channel is not None:
                magnitude = _DEFAULT_MAGNITUDE[f.kind] * by_channel[f.channel][0].typical
            faults.append(Fault(f.kind, f.channel, origin + f.start_s, origin + f.end, magnitude or 0.0))
            hit = [by_channel[f.channel][1]] if f.channel is not None else sensors
            labels += [Label(spec.name, s.name, f.kind, f.start_s, f.end) for s in hit]
        firmware = SensorNode(keys[spec.name], sensors, spec.period_s, rng=random.Random(rng.random()),
                              faults=faults, fault_rng=random.Random(rng.random()))
        nodes.append(SimNode(firmware, spec.sf, spec.distance_m, tuple(spec.channels_hz),
                             first_s=rng.uniform(0, spec.period_s), jitter=spec.jitter))
    return nodes, labels


def origin_of(scenario: Scenario, now: float) -> float:
    start = scenario.simulation.start
    if start is None:
        return now
    return (start if start.tzinfo else start.replace(tzinfo=UTC)).timestamp()  # naive means UTC
