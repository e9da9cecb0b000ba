"""Nodes and radio channel (the engine) paced against the wall clock, heard by a module on a pty."""

from __future__ import annotations

import csv
import json
import math
import random
import threading
import time
from collections import Counter, deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Self, TypedDict, Unpack

from firmware_sim.engine import Engine, SimNode
from firmware_sim.modules import (
    EMULATORS,
    ModuleEmulator,
    Rak3172Emulator,
    Rn2483Emulator,
    RylrEmulator,
)
from firmware_sim.nodes import SensorNode
from firmware_sim.pty_link import PtyModule
from firmware_sim.radio import Delivery, RadioConfig
from firmware_sim.scenario import Label, Scenario, build_nodes, origin_of
from gateway.uplink.devices import add_devices, load_devices, session_keys

_HOLD_RETRY_S = 0.02
_BITS_PER_BYTE = 10  # 8N1 framing
_EVENT_OVERHEAD = 26  # a receive event's bytes besides the frame's hex: prefix, fields, signal, CR LF
_GATEWAY_SETTLE_S = 0.5  # the gateway is set up once it has sent a command and then fallen quiet

SentRecord = tuple[str, int, list[tuple[int, str, float]], int, float]


class RunOptions(TypedDict, total=False):
    """Simulation's keyword arguments that from_scenario passes through."""

    link: Path | None
    max_frames: int | None
    speed: float
    duration_s: float | None  # given, even as None, it overrides the scenario's
    hold: bool
    wait_for_gateway: bool
    keep_sent: int


class LabelRow(TypedDict):
    """A label with the wall times (unix seconds) the run reached its start and end; None if not."""

    node: str
    channel: str
    fault: str
    start_s: float
    end_s: float
    start_wall: float | None
    end_wall: float | None


class Clock:
    """Simulated seconds against the wall: `speed` times faster than real time (inf: unpaced)."""

    def __init__(self, speed: float) -> None:
        if not speed > 0:
            raise ValueError(f"speed {speed} must be above 0")
        self.speed = speed
        self._mono0 = self._wall0 = 0.0

    @property
    def paced(self) -> bool:
        return math.isfinite(self.speed)

    def start(self) -> None:
        self._mono0, self._wall0 = time.monotonic(), time.time()

    def delay(self, t: float) -> float:
        """Wall seconds until simulated time `t` is due."""
        return self._mono0 + t / self.speed - time.monotonic()

    def wall_at(self, t: float) -> float:
        """Unix time of simulated time `t` (unpaced: now, as the simulation passes it)."""
        return self._wall0 + t / self.speed if self.paced else time.time()

    def pause(self, seconds: float) -> None:
        self._mono0 += seconds
        self._wall0 += seconds


class Simulation:
    """The engine's packets, paced by a Clock, sent to a module emulator; runs in a background thread.

    Without `engine`, the nodes are the devices file's with default sensors over an ideal radio
    (every packet arrives), every `period_s` seconds, staggered.
    """

    def __init__(
        self,
        dialect: str,
        devices_file: Path | None = None,
        *,
        period_s: float = 5.0,
        link: Path | None = None,
        seed: int | None = None,
        max_frames: int | None = None,
        engine: Engine | None = None,
        labels: list[Label] | None = None,
        speed: float = 1.0,
        duration_s: float | None = None,
        hold: bool = False,
        wait_for_gateway: bool = False,
        keep_sent: int = 100_000,
    ) -> None:
        """`speed`: simulated seconds per wall second (inf: unpaced). `hold`: a packet nobody hears
        (port closed, receiver not armed, buffer full) is retried while the clock waits, and events
        leave no faster than the module's baud rate, so a replay loses nothing. `wait_for_gateway`:
        start the clock once a gateway has set up the module. `keep_sent` bounds `.sent`."""
        self.rng = random.Random(seed)
        if engine is None:
            if devices_file is None:
                raise ValueError("give a devices file or an engine")
            keys = session_keys(load_devices(devices_file))
            nodes = [
                SimNode(SensorNode(k, period_s=period_s, rng=random.Random(self.rng.random())),
                        distance_m=self.rng.uniform(100, 1500), first_s=i * period_s / len(keys))
                for i, k in enumerate(keys)
            ]
            # Lossless, but signal figures that vary from node to node and packet to packet.
            radio = RadioConfig.ideal().model_copy(update={"fading_db": 2.0})
            engine = Engine(nodes, radio, rng=self.rng, origin=time.time())
        self.engine = engine
        self.labels = labels or []
        self.dialect = dialect
        self.link = link
        self.clock = Clock(speed)
        self.duration_s = duration_s
        self.max_frames = max_frames
        self.hold = hold
        self.wait_for_gateway = wait_for_gateway
        self.frames_sent = 0  # module events someone had the port open for
        # Of those: intact first copies, corrupt frames (the gateway's MIC must refuse them) and
        # intact second copies (its replay check must refuse them).
        self.port_counts: Counter[str] = Counter()
        self.unheard = 0  # packets the module could not pass on (port closed, not armed, buffer full)
        self.off_channel = 0  # single-channel radio: packets on a frequency or SF the module is not tuned to
        self.sent: deque[SentRecord] = deque(maxlen=keep_sent)  # intact first copies, as the gateway sees them
        self.error: Exception | None = None
        self.finished = threading.Event()
        self._last_command = 0.0
        self._serial_free_at = 0.0  # hold mode: when the module's UART has sent the last event
        self._walls: dict[float, float] = {}
        self._bounds = sorted({b for label in self.labels for b in (label.start_s, label.end_s)})
        self.module = self._new_module()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lora-sim", daemon=True)

    @classmethod
    def from_scenario(
        cls,
        scenario: Scenario,
        dialect: str,
        devices_file: Path,
        *,
        count: int | None = None,
        seed: int | None = None,
        **options: Unpack[RunOptions],
    ) -> Simulation:
        """The scenario's fleet (padded or cut to `count`); nodes missing from the devices file are added."""
        specs = scenario.fleet(count)
        known = set(load_devices(devices_file)) if devices_file.exists() else set()
        missing: dict[float, list[str]] = {}
        for spec in specs:
            if spec.name not in known:
                missing.setdefault(spec.period_s, []).append(spec.name)
        for period_s, names in missing.items():
            add_devices(devices_file, names, period_s=period_s)
        keys = {k.name: k for k in session_keys(load_devices(devices_file))}
        rng = random.Random(scenario.simulation.seed if seed is None else seed)
        origin = origin_of(scenario, time.time())
        nodes, labels = build_nodes(specs, keys, rng, origin)
        engine = Engine(nodes, scenario.radio, rng=rng, origin=origin)
        options.setdefault("duration_s", scenario.simulation.duration_s)
        return cls(dialect, engine=engine, labels=labels, **options)

    @property
    def port(self) -> str:
        return self.module.port

    @property
    def nodes(self) -> list[SensorNode]:
        return [n.firmware for n in self.engine.nodes]

    def _new_module(self) -> PtyModule:
        emulator = EMULATORS[self.dialect]()
        handle = emulator.handle_line

        def watched(line: str) -> list[str]:
            self._last_command = time.monotonic()
            return handle(line)

        # An instance attribute, so the emulator class stays as the real module behaves.
        setattr(emulator, "handle_line", watched)  # noqa: B010
        return PtyModule(emulator, link=self.link)

    @property
    def emulator(self) -> ModuleEmulator:
        return self.module.emulator

    def start(self) -> Simulation:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            if self.wait_for_gateway:
                while not self._stop.wait(0.05):
                    if self._last_command and time.monotonic() - self._last_command > _GATEWAY_SETTLE_S:
                        break
            self.clock.start()
            engine = self.engine
            while not self._stop.is_set():
                t = engine.next_time()
                if t is None or (self.duration_s is not None and t > self.duration_s):
                    break
                if self.clock.paced:
                    delay = self.clock.delay(t)
                    if delay > 0 and self._stop.wait(delay):
                        break
                for delivery in engine.step():
                    self._emit(delivery)
                while self._bounds and self._bounds[0] <= engine.now:
                    b = self._bounds.pop(0)
                    self._walls[b] = self.clock.wall_at(b)
                if self.max_frames is not None and self.frames_sent >= self.max_frames:
                    break
            if self.duration_s is not None and not self._stop.is_set():
                for b in [b for b in self._bounds if b <= self.duration_s]:
                    self._walls[b] = self.clock.wall_at(b)
        except Exception as e:  # noqa: BLE001 -- kept for stop() to raise: a dead thread must not pass silently
            self.error = e
        finally:
            self.finished.set()

    def _hold_until(self, when: float) -> None:
        """Wait (monotonic `when`) with the simulated clock stopped."""
        t0 = time.monotonic()
        if when > t0:
            self._stop.wait(when - t0)
            self.clock.pause(time.monotonic() - t0)

    def _emit(self, d: Delivery) -> None:
        if self.engine.radio.single_channel and tuned_to(self.emulator) != (d.freq_hz, d.sf):
            self.off_channel += 1
            return
        if self.hold:
            # No faster than the module's UART: a burst would overflow the pty mid-line, and the
            # half line written would spoil the retry.
            self._hold_until(self._serial_free_at)
        heard = self.module.send_frame(d.frame, d.rssi, d.snr)
        while self.hold and not heard and not self._stop.is_set():
            self._hold_until(time.monotonic() + _HOLD_RETRY_S)
            heard = self.module.send_frame(d.frame, d.rssi, d.snr)
        if self.hold:
            line_bytes = 2 * len(d.frame) + _EVENT_OVERHEAD
            self._serial_free_at = time.monotonic() + line_bytes * _BITS_PER_BYTE / self.emulator.DEFAULT_BAUD
        if not heard:
            self.unheard += 1
            return
        self.frames_sent += 1
        kind = "corrupted" if d.corrupted else "duplicate" if d.duplicate else "intact"
        self.port_counts[kind] += 1
        if kind == "intact":
            self.sent.append((d.node, d.fcnt, d.readings, d.rssi, d.snr))

    def label_rows(self) -> list[LabelRow]:
        """Ground truth, with wall times where the run reached them."""
        return [
            LabelRow(node=lb.node, channel=lb.channel, fault=lb.fault, start_s=lb.start_s, end_s=lb.end_s,
                     start_wall=self._walls.get(lb.start_s), end_wall=self._walls.get(lb.end_s))
            for lb in self.labels
        ]

    def write_labels(self, path: Path) -> None:
        """CSV (by the suffix .csv) or JSON; wall times in ISO 8601 UTC, empty (null) where not reached."""
        rows = [
            {**r, "start_wall": _iso(r["start_wall"]), "end_wall": _iso(r["end_wall"])} for r in self.label_rows()
        ]
        tmp = path.with_name(f".{path.name}.tmp")
        if path.suffix.lower() == ".csv":
            with tmp.open("w", newline="") as f:
                writer = csv.DictWriter(f, ["node", "channel", "fault", "start_s", "end_s", "start_wall", "end_wall"])
                writer.writeheader()
                writer.writerows(rows)
        else:
            tmp.write_text(json.dumps(rows, indent=1) + "\n")
        tmp.replace(path)

    def unplug(self) -> None:
        """The USB module is pulled out: the port disappears, packets are not heard."""
        self.module.close()

    def replug(self) -> None:
        """Plugged back in: a fresh module (unconfigured) on a new pty, behind the same link."""
        self.module = self._new_module()

    def stop(self) -> None:
        """Stop the thread and close the port; an exception the thread died of is raised here."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.module.close()
        if self.error is not None:
            raise RuntimeError("the simulation thread failed") from self.error

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def tuned_to(emulator: ModuleEmulator) -> tuple[int, int]:
    """The frequency and spreading factor a module listens on, from its emulated settings."""
    match emulator:
        case RylrEmulator():
            return emulator.band, emulator.parameter[0]
        case Rak3172Emulator():
            return emulator.frequency, emulator.sf
        case Rn2483Emulator():
            return int(emulator.settings["freq"]), int(emulator.settings["sf"].removeprefix("sf"))
    raise TypeError(f"no tuning known for {type(emulator).__name__}")


def _iso(unix: float | None) -> str | None:
    if unix is None:
        return None
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
