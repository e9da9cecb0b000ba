"""`lora-gateway status`: the running daemon's health, read from the snapshot it writes.

It reads the snapshot from another process, so it works without any socket or privilege, and
tells a dead daemon (pid gone) or a hung one (snapshot stale) from a running one.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.commands.common import CONFIG_HELP, load
from gateway.service.health import HealthSnapshot, health_path

# A snapshot older than this many intervals means the daemon is hung or gone.
STALE_INTERVALS = 3


class HealthError(Exception):
    """No usable snapshot: missing or unreadable file; phrased for the user."""


def read_health(path: Path) -> HealthSnapshot:
    try:
        return HealthSnapshot.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise HealthError(f"{path}: no health snapshot (has the daemon ever run with this configuration? Under "
                          "systemd it is in runtime_dir: set runtime_dir = \"/run/lora-gateway\")") from None
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
        f"  broker   {b.host}:{b.port}: "
        f"{'connected' if b.connected else 'DISCONNECTED' + (f': {b.error}' if b.error else '')}",
        f"  model    {snapshot.model or 'none active'}",
        f"  frames   {snapshot.frames_accepted} accepted, {sum(snapshot.rejected.values())} rejected",
    ]
    for r, n in sorted(snapshot.rejected.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"             {n:>8}  {r}")
    lines.append(f"  outbox   {snapshot.outbox_depth} alert(s) waiting; {snapshot.telemetry_dropped} telemetry dropped, "
                 f"{snapshot.telemetry_lost} lost at QoS 0")
    lines.append(f"  devices  {len(snapshot.devices)}")
    for d in snapshot.devices:
        rssi = "-" if d.last_rssi is None else f"{d.last_rssi:g} dBm"
        score = "" if d.anomaly_score is None else f"  score {d.anomaly_score:.3f}"
        lines.append(f"    {d.name:<20} seen {_ago(now - d.last_seen):<12} rssi {rssi:<9} alert {d.alert_state}{score}")
        if d.warming_up:  # a score of 0 until then is no all-clear: say so
            progress = ", ".join(f"{channel} {percent}%" for channel, percent in sorted(d.warming_up.items()))
            lines.append(f"      warming up (no alerts yet): {progress}")
    return "\n".join(lines)


def handler(args: argparse.Namespace) -> int:
    """Exit 0 when the daemon runs, 1 when it does not or never wrote a snapshot."""
    cfg = load(args.config)
    path = health_path(cfg.state_path, cfg.runtime_dir)
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
        description="Read the health snapshot the daemon writes to runtime_dir (else beside its state database) "
        "and print it. "
        "Exit status 0 if the daemon is running, 1 if not.",
    )
    p.add_argument("--config", "-c", help=CONFIG_HELP)
    p.add_argument("--json", action="store_true", help="print the snapshot as JSON, with `running` and `reason`")
    p.set_defaults(func=handler)
