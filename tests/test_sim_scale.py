"""1,000 nodes at full speed through a real pty: frames flow, nothing fails, memory stays bounded."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

from firmware_sim.engine import Engine
from firmware_sim.scenario import build_nodes, bundled, load_scenario
from firmware_sim.simulation import Simulation
from gateway.uplink.lorawan import SessionKeys


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class PortReader:
    """Plays the gateway's part on the pty: reads every line, counts receive events."""

    def __init__(self, port: str) -> None:
        self.fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
        self.events = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        pending = b""
        while not self._stop.is_set():
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # closed under it: the end
                return
            *lines, pending = (pending + chunk).split(b"\r\n")
            self.events += sum(line.startswith(b"+RCV=") for line in lines)

    def close(self) -> None:
        self._stop.set()
        os.close(self.fd)  # the blocked read returns with an error and the thread ends


def test_a_thousand_nodes_at_full_speed(tmp_path: Path) -> None:
    farm = load_scenario(bundled("farm.toml"))
    specs = farm.fleet(1000)
    keys = {s.name: SessionKeys(s.name, 0x26000000 + i, random.Random(i).randbytes(16), bytes(16))
            for i, s in enumerate(specs)}
    rng = random.Random(1)
    origin = time.time()
    nodes, labels = build_nodes(specs, keys, rng, origin)
    engine = Engine(nodes, farm.radio, rng=rng, origin=origin)
    sim = Simulation("rylr", engine=engine, labels=labels, speed=float("inf"), duration_s=7200.0, keep_sent=1000)
    reader = PortReader(sim.port)
    early: int | None = None
    try:
        sim.start()
        while not sim.finished.wait(0.05):
            if early is None and engine.now >= 1800:
                early = rss_bytes()
        assert sim.error is None, repr(sim.error)
        late = rss_bytes()
    finally:
        sim.stop()
        reader.close()

    stats = engine.stats
    # A busy channel: ~8,000 s of airtime in 7,200 s over three frequencies, pure ALOHA, so a
    # good share collides, yet most arrives.
    assert stats.sampled > 40_000 and stats.collided > 0.05 * stats.transmitted
    assert stats.delivered > 0.6 * stats.transmitted
    in_flight = stats.transmitted - (stats.delivered + stats.corrupted + stats.collided + stats.too_weak
                                     + stats.crc_error)
    assert 0 <= in_flight <= len(nodes)
    # Frames crossed the pty; the module passes on what it hears whether or not anyone keeps up.
    assert reader.events > 0.9 * sim.frames_sent > 30_000
    assert len(sim.sent) == 1000
    # Three quarters of the run added no memory to speak of: nothing grows per frame.
    assert early is not None and late - early < 16 * 1024 * 1024, (early, late)
    assert all(r["end_wall"] is not None for r in sim.label_rows() if r["end_s"] <= 7200)
