"""The daemon's health snapshot, and the thread that writes it for `lora-gateway status`.

The snapshot is a JSON file in the runtime directory (RAM: /run/lora-gateway under systemd),
else beside the state database. It is written when it changed, checked every INTERVAL_S, and at
least every HEARTBEAT_S, so that an idle daemon writes little and `status` still tells a hung one
by the snapshot's age: with 10,000 devices it is about 1 MB, which rewritten every 2 s on a Pi's
SD card was 43 GB a day. It is written to a temporary file, then renamed: a reader never sees
half a file. gateway.commands.status reads it from another process.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from gateway.records import Reading

log = logging.getLogger(__name__)

INTERVAL_S = 2.0
HEARTBEAT_S = 10.0


@dataclass(slots=True)
class ModuleHealth:
    port: str
    dialect: str
    connected: bool


@dataclass(slots=True)
class BrokerHealth:
    host: str
    port: int
    connected: bool
    error: str | None = None  # why the last connection attempt failed, while it does


@dataclass(slots=True)
class DeviceHealth:
    name: str
    last_seen: float  # unix time of the last accepted uplink
    last_rssi: float | None
    alert_state: str = "ok"
    anomaly_score: float | None = None
    warming_up: dict[str, int] = field(default_factory=dict)  # channel -> percent of its warm-up done


@dataclass(slots=True)
class HealthSnapshot:
    pid: int
    started_at: float
    written_at: float
    module: ModuleHealth
    broker: BrokerHealth
    model: str | None  # "name@version", None before a model is active
    devices: list[DeviceHealth] = field(default_factory=list)
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> count since start
    frames_accepted: int = 0
    outbox_depth: int = 0
    telemetry_dropped: int = 0
    telemetry_lost: int = 0  # sent at QoS 0 as the connection went down
    interval_s: float = HEARTBEAT_S  # the longest between two writes

    @property
    def uptime_s(self) -> float:
        return self.written_at - self.started_at

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "uptime_s": self.uptime_s}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HealthSnapshot:
        return cls(
            pid=int(d["pid"]),
            started_at=float(d["started_at"]),
            written_at=float(d["written_at"]),
            module=ModuleHealth(**d["module"]),
            broker=BrokerHealth(**d["broker"]),
            model=d.get("model"),
            devices=[DeviceHealth(**x) for x in d.get("devices", [])],
            rejected={str(k): int(v) for k, v in d.get("rejected", {}).items()},
            frames_accepted=int(d.get("frames_accepted", 0)),
            outbox_depth=int(d.get("outbox_depth", 0)),
            telemetry_dropped=int(d.get("telemetry_dropped", 0)),
            telemetry_lost=int(d.get("telemetry_lost", 0)),
            interval_s=float(d.get("interval_s", HEARTBEAT_S)),
        )


def health_path(state_path: Path, runtime_dir: Path | None = None) -> Path:
    """state.db -> state.health.json, in `runtime_dir` if set, else beside the state database."""
    return (runtime_dir or state_path.parent) / f"{state_path.stem}.health.json"


def write_health(path: Path, snapshot: HealthSnapshot) -> None:
    """Atomically replace the snapshot. No fsync: it says how the daemon is now, not what must survive."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(snapshot.to_dict(), f, separators=(",", ":"), allow_nan=False)
        # Readable by an operator's `status` without the daemon's privileges: it holds no secrets.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class DeviceTable:
    """Last sight of each device, fed by the daemon's loop and read by the health thread."""

    def __init__(self) -> None:
        self._devices: dict[str, DeviceHealth] = {}

    def saw(
        self,
        reading: Reading,
        alert_state: str = "ok",
        anomaly_score: float | None = None,
        warming_up: dict[str, int] | None = None,
    ) -> None:
        # A fresh object per update: the reader copies the dict and never sees one half-updated.
        rssi = reading.rssi if math.isfinite(reading.rssi) else None  # unknown, e.g. from ChirpStack without rxInfo
        self._devices[reading.device] = DeviceHealth(
            reading.device, reading.time, rssi, alert_state, anomaly_score, warming_up or {}
        )

    def rows(self) -> list[DeviceHealth]:
        return sorted(dict(self._devices).values(), key=lambda d: d.name)


class HealthReporter:
    """Writes `collect()` to `path` from its own thread, so a serial outage does not stop it: when
    it changed (checked every `interval_s`) and at least every HEARTBEAT_S."""

    def __init__(self, path: Path, collect: Callable[[], HealthSnapshot], interval_s: float = INTERVAL_S) -> None:
        self.path = path
        self.collect = collect
        self.interval_s = interval_s
        self._last: HealthSnapshot | None = None  # as last written, written_at aside
        self._written_at = 0.0
        self._stop = threading.Event()
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)

    def start(self) -> HealthReporter:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            log.warning("cannot create %s for the health snapshot: %s", self.path.parent, e.strerror)
        self.write_if_changed()
        self._thread.start()
        return self

    def write_if_changed(self, force: bool = False) -> bool:
        """Write the snapshot if it changed or HEARTBEAT_S passed (or `force`); True if written."""
        try:
            snapshot = self.collect()
            unchanged = replace(snapshot, written_at=0.0)
            if not force and unchanged == self._last and snapshot.written_at - self._written_at < HEARTBEAT_S:
                return False
            write_health(self.path, snapshot)
        except Exception as e:  # noqa: BLE001  (the thread must live on: a stale snapshot would read as a hang)
            if str(e) != self._error:  # once per cause, not every interval (a full disk lasts)
                log.warning("cannot write the health snapshot %s: %s", self.path, e)
            self._error = str(e)
            return False
        self._error = None
        self._last, self._written_at = unchanged, snapshot.written_at
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.write_if_changed()

    def stop(self) -> None:
        """Stop and write a last snapshot; `status` then sees the pid gone."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.write_if_changed(force=True)
