"""A few sensor nodes transmitting to one emulated module on a pseudo-terminal."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

from firmware_sim.modules import EMULATORS
from firmware_sim.nodes import SensorNode
from firmware_sim.pty_link import PtyModule
from gateway.devices import load_devices, session_keys


class Simulation:
    """Nodes on a schedule, heard by a module emulator; runs in a background thread."""

    def __init__(
        self,
        dialect: str,
        devices_file: Path,
        *,
        period_s: float = 5.0,
        link: Path | None = None,
        seed: int | None = None,
        max_frames: int | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.nodes = [
            SensorNode(keys, period_s=period_s, rng=random.Random(self.rng.random()))
            for keys in session_keys(load_devices(devices_file))
        ]
        self.dialect = dialect
        self.link = link
        self.module = PtyModule(EMULATORS[dialect](), link=link)
        self.max_frames = max_frames
        self.frames_sent = 0
        self.sent: list[tuple[str, int, list[tuple[int, str, float]], int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lora-sim", daemon=True)

    @property
    def port(self) -> str:
        return self.module.port

    def start(self) -> Simulation:
        self._thread.start()
        return self

    def _run(self) -> None:
        start = time.monotonic()
        # Stagger the nodes so they do not all transmit at the same instant.
        due = [start + i * node.period_s / max(1, len(self.nodes)) for i, node in enumerate(self.nodes)]
        while not self._stop.is_set():
            i = min(range(len(due)), key=due.__getitem__)
            if self._stop.wait(max(0.0, due[i] - time.monotonic())):
                return
            node = self.nodes[i]
            frame, readings = node.uplink(time.time())
            rssi = self.rng.randint(-115, -60)
            snr = round(self.rng.uniform(-5.0, 10.0))
            if self.module.send_frame(frame, rssi, snr):
                self.sent.append((node.name, node.fcnt - 1, readings, rssi, snr))
                self.frames_sent += 1
            due[i] += node.period_s
            if self.max_frames is not None and self.frames_sent >= self.max_frames:
                return

    def unplug(self) -> None:
        """The USB module is pulled out: the port disappears, packets are not heard."""
        self.module.close()

    def replug(self) -> None:
        """Plugged back in: a fresh module (unconfigured) on a new pty, behind the same link."""
        self.module = PtyModule(EMULATORS[self.dialect](), link=self.link)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.module.close()

    def __enter__(self) -> Simulation:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
