"""The daemon's health snapshot and `lora-gateway status`.

The daemon rewrites a small JSON file beside its state database every few seconds
(write to a temporary file, then rename: a reader never sees half a file). `status`
reads it from another process, so it works without any socket or privilege, and tells
a dead daemon (pid gone) or a hung one (snapshot stale) from a running one.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.records import Reading

log = logging.getLogger(__name__)

INTERVAL_S = 2.0
# A snapshot older than this many intervals means the daemon is hung or gone.
STALE_INTERVALS = 3
CONFIG_HELP = "configuration file (default: $LORA_GATEWAY_CONFIG or /etc/lora-gateway/config.toml)"


class HealthError(Exception):
    """No usable snapshot: missing or unreadable file; phrased for the user."""


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


@dataclass(slots=True)
class DeviceHealth:
    name: str
    last_seen: float  # unix time of the last accepted uplink
    last_rssi: float | None
    alert_state: str = "ok"
    anomaly_score: float | None = None


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
    interval_s: float = INTERVAL_S

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
            interval_s=float(d.get("interval_s", INTERVAL_S)),
        )


def health_path(state_path: Path) -> Path:
    """The snapshot lives beside the state database: state.db -> state.health.json."""
    return state_path.with_name(f"{state_path.stem}.health.json")


def write_health(path: Path, snapshot: HealthSnapshot) -> None:
    """Atomically replace the snapshot. No fsync: it is rewritten every few seconds, and an SD card wears."""
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


def read_health(path: Path) -> HealthSnapshot:
    try:
        return HealthSnapshot.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise HealthError(f"{path}: no health snapshot (has the daemon ever run with this configuration?)") from None
    except OSError as e:
        raise HealthError(f"{path}: cannot read: {e.strerror}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise HealthError(f"{path}: not a health snapshot: {e}") from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's (the daemon runs as its own user)
        return True
    return True


def not_running_reason(snapshot: HealthSnapshot, now: float) -> str | None:
    """Why the daemon is not running, or None if it is."""
    if not _pid_alive(snapshot.pid):
        return f"process {snapshot.pid} is gone"
    age = now - snapshot.written_at
    if age > STALE_INTERVALS * snapshot.interval_s:
        return f"snapshot is {age:.0f} s old (written every {snapshot.interval_s:g} s): the daemon is hung or gone"
    return None


class DeviceTable:
    """Last sight of each device, fed by the daemon's loop and read by the health thread."""

    def __init__(self) -> None:
        self._devices: dict[str, DeviceHealth] = {}

    def saw(self, reading: Reading, alert_state: str = "ok", anomaly_score: float | None = None) -> None:
        # A fresh object per update: the reader copies the dict and never sees one half-updated.
        rssi = reading.rssi if math.isfinite(reading.rssi) else None  # unknown, e.g. from ChirpStack without rxInfo
        self._devices[reading.device] = DeviceHealth(reading.device, reading.time, rssi, alert_state, anomaly_score)

    def rows(self) -> list[DeviceHealth]:
        return sorted(dict(self._devices).values(), key=lambda d: d.name)


class HealthReporter:
    """Writes `collect()` to `path` every interval from its own thread, so a serial outage does not stop it."""

    def __init__(self, path: Path, collect: Callable[[], HealthSnapshot], interval_s: float = INTERVAL_S) -> None:
        self.path = path
        self.collect = collect
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health", daemon=True)

    def start(self) -> HealthReporter:
        self._write()
        self._thread.start()
        return self

    def _write(self) -> None:
        try:
            write_health(self.path, self.collect())
        except Exception as e:  # noqa: BLE001  (the thread must live on: a stale snapshot would read as a hang)
            log.warning("cannot write the health snapshot %s: %s", self.path, e)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._write()

    def stop(self) -> None:
        """Stop and write a last snapshot; `status` then sees the pid gone."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._write()


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    d, h = divmod(h, 24)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


def format_report(snapshot: HealthSnapshot, now: float) -> str:
    reason = not_running_reason(snapshot, now)
    when = datetime.fromtimestamp(snapshot.written_at).isoformat(timespec="seconds")
    if reason is None:
        head = f"lora-gateway: running (pid {snapshot.pid}, up {_duration(snapshot.uptime_s)})"
    else:
        head = f"lora-gateway: NOT RUNNING: {reason}\nLast snapshot, written {when}:"
    m, b = snapshot.module, snapshot.broker
    lines = [
        head,
        f"  module   {m.dialect} on {m.port}: {'connected' if m.connected else 'DISCONNECTED'}",
        f"  broker   {b.host}:{b.port}: {'connected' if b.connected else 'DISCONNECTED'}",
        f"  model    {snapshot.model or 'none active'}",
        f"  frames   {snapshot.frames_accepted} accepted, {sum(snapshot.rejected.values())} rejected",
    ]
    for r, n in sorted(snapshot.rejected.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"             {n:>8}  {r}")
    lines.append(f"  outbox   {snapshot.outbox_depth} alert(s) waiting; {snapshot.telemetry_dropped} telemetry dropped")
    lines.append(f"  devices  {len(snapshot.devices)}")
    for d in snapshot.devices:
        rssi = "-" if d.last_rssi is None else f"{d.last_rssi:g} dBm"
        score = "" if d.anomaly_score is None else f"  score {d.anomaly_score:.3f}"
        lines.append(f"    {d.name:<20} seen {_ago(now - d.last_seen):<12} rssi {rssi:<9} alert {d.alert_state}{score}")
    return "\n".join(lines)


def handler(args: argparse.Namespace) -> int:
    """Exit 0 when the daemon runs, 1 when it does not or never wrote a snapshot."""
    from gateway.commands import _config_path
    from gateway.config import load_config

    path = health_path(load_config(_config_path(args.config)).state_path)
    now = time.time()
    try:
        snapshot = read_health(path)
    except HealthError as e:
        if args.json:
            print(json.dumps({"running": False, "reason": str(e)}))
        else:
            print(f"lora-gateway: NOT RUNNING: {e}")
        return 1
    reason = not_running_reason(snapshot, now)
    if args.json:
        print(json.dumps({"running": reason is None, "reason": reason, **snapshot.to_dict()}, indent=2))
    else:
        print(format_report(snapshot, now))
    return 0 if reason is None else 1


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "status",
        help="show the running daemon's health: module, broker, model, devices, rejections, outbox",
        description="Read the health snapshot the daemon writes beside its state database and print it. "
        "Exit status 0 if the daemon is running, 1 if not.",
    )
    p.add_argument("--config", "-c", help=CONFIG_HELP)
    p.add_argument("--json", action="store_true", help="print the snapshot as JSON, with `running` and `reason`")
    p.set_defaults(func=handler)
