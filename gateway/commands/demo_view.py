"""The demo's live view: what the gateway publishes over MQTT folded into a table, as any dashboard
would see it, with each raised alert marked by what the simulator injected, so that a user tells a
true alert from a false one."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO

import paho.mqtt.client as mqtt


@dataclass(frozen=True)
class Injected:
    """A fault the simulator injects, over [start_s, end_s) simulated seconds: what tells a true
    alert from a false one."""

    device: str
    channel: str
    fault: str
    start_s: float
    end_s: float


# A raise this long after a fault's end is still that fault's: the detector may see the change
# back (the door closed again) only as the windows that hold the fault move on.
INJECTED_GRACE_S = 3600.0


class GroundTruth:
    """The injected faults against the simulated clock, for the live view."""

    def __init__(self, faults: list[Injected], sim_time: Callable[[float], float]) -> None:
        self.faults = faults
        self.sim_time = sim_time  # unix time -> simulated seconds

    def explain(self, device: str, channels: Iterable[str], when: float) -> Injected | None:
        """The injected fault an alert of `device` on `channels` raised at `when` (unix time) is about."""
        t = self.sim_time(when)
        for f in self.faults:
            if f.device == device and f.channel in channels and f.start_s <= t < f.end_s + INJECTED_GRACE_S:
                return f
        return None

    def active(self, when: float) -> list[Injected]:
        t = self.sim_time(when)
        return [f for f in self.faults if f.start_s <= t < f.end_s]


@dataclass
class DeviceView:
    name: str
    values: dict[str, float] = field(default_factory=dict)
    fcnt: int | None = None
    rssi: float | None = None
    snr: float | None = None
    score: float | None = None
    alert_state: str = "ok"
    online: bool = True
    seen: float = 0.0  # monotonic, for "n s ago"


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


class LiveView:
    """What the gateway publishes, folded into a table; thread-safe (paho calls `on_message` from its thread)."""

    def __init__(self, base: str, out: TextIO, tty: bool, header: list[str], truth: GroundTruth | None = None) -> None:
        self.base = base
        self.out = out
        self.tty = tty
        self.header = header
        self.truth = truth
        self.devices: dict[str, DeviceView] = {}
        self.log: list[str] = []  # alerts and events, newest last
        self.alerts = 0
        self.false_alerts = 0
        self._shown_active: list[Injected] = []
        self.bridge = "connecting"
        self._printed: dict[str, float] = {}
        self._size: os.terminal_size | None = None
        self._lock = threading.Lock()

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self.handle(msg.topic, bytes(msg.payload))
        except (ValueError, KeyError, TypeError):
            pass  # a payload this view does not understand is not the demo's business

    def handle(self, topic: str, payload: bytes) -> None:
        parts = topic[len(self.base) + 1:].split("/")
        with self._lock:
            if parts == ["bridge", "state"]:
                self.bridge = json.loads(payload)["state"]
                self._note(f"gateway {self.bridge}")
            elif parts == ["bridge", "event"]:
                e = json.loads(payload)
                what = " ".join(str(e[k]) for k in ("reason", "detail") if e.get(k))
                self._note(f"event {e.get('type')}: {what}".rstrip(": "))
            elif len(parts) == 1 and parts[0] != "bridge":
                self._reading(json.loads(payload))
            elif len(parts) == 2 and parts[1] == "availability":
                self._device(parts[0]).online = payload == b"online"
            elif len(parts) == 2 and parts[1] == "alert":
                a = json.loads(payload)
                raised = a["state"] == "raised"
                self.alerts += raised
                channels = ", ".join(f"{c} {s:.2f}" for c, s in a.get("channels", {}).items())
                mark = self._mark(a) if raised else ""
                self._note(f"ALERT {a['state'].upper()} {a['device']}: score {a['score']:.2f} "
                           f"(threshold {a['threshold']:.2f}) {channels}".rstrip() + mark)

    def _mark(self, alert: dict[str, Any]) -> str:
        """What the demo injected, or that it injected nothing there: a false alert."""
        if self.truth is None:
            return ""
        fault = self.truth.explain(alert["device"], alert.get("channels", {}), float(alert["time"]))
        if fault is not None:
            return f"  [injected: {fault.fault} on {fault.channel}]"
        self.false_alerts += 1
        return "  [FALSE ALERT: nothing injected here]"

    def follow_injections(self, now: float) -> None:
        """A line when an injected fault starts or ends, so that the alerts that follow make sense."""
        if self.truth is None:
            return
        active = self.truth.active(now)
        with self._lock:
            for f in active:
                if f not in self._shown_active:
                    self._note(f"INJECTED {f.fault} on {f.device} {f.channel} starts")
            for f in self._shown_active:
                if f not in active:
                    self._note(f"INJECTED {f.fault} on {f.device} {f.channel} ends")
            self._shown_active = active

    def _device(self, name: str) -> DeviceView:
        return self.devices.setdefault(name, DeviceView(name))

    def _reading(self, body: dict[str, Any]) -> None:
        d = self._device(body["device"])
        changed = d.alert_state != body.get("alert_state", "ok")
        d.values, d.fcnt, d.rssi, d.snr = body["values"], body["fcnt"], body["rssi"], body["snr"]
        d.score, d.alert_state, d.seen = body.get("anomaly_score"), body.get("alert_state", "ok"), time.monotonic()
        # Plain output: a device's line at most once a second (and whenever its alert state changes).
        if not self.tty and (changed or d.seen - self._printed.get(d.name, -1.0) >= 1.0):
            self._printed[d.name] = d.seen
            self._emit(self._device_line(d))

    def _note(self, text: str) -> None:
        line = f"{datetime.now():%H:%M:%S}  {text}"
        self.log = [*self.log[-7:], line]
        if not self.tty:
            self._emit(line)

    def _emit(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    @staticmethod
    def _device_line(d: DeviceView) -> str:
        state = "ALERT" if d.alert_state == "raised" else ("offline" if not d.online else "ok")
        values = "  ".join(f"{k}={v:g}" for k, v in sorted(d.values.items()))
        return (f"{d.name:<12} {state:<7} score {_num(d.score, '.2f'):>4}  rssi {_num(d.rssi, '.0f'):>4} dBm  "
                f"snr {_num(d.snr, '.1f'):>5}  fcnt {d.fcnt if d.fcnt is not None else '-':>5}  {values}")

    def screen(self) -> list[tuple[str, bool]]:
        """The terminal view: (line, highlighted) pairs; a device in alert is highlighted."""
        now = time.monotonic()
        with self._lock:
            lines = [(text, False) for text in self.header]
            summary = (f"gateway: {self.bridge}    devices: {len(self.devices)}    alerts raised: {self.alerts} "
                       f"(false: {self.false_alerts})")
            lines += [(summary, False), ("", False)]
            for d in sorted(self.devices.values(), key=lambda d: d.name):
                lines.append((f"{self._device_line(d)}  ({now - d.seen:.0f} s ago)", d.alert_state == "raised"))
            lines += [("", False), ("alerts and events:", False)]
            lines += [(text, "  ALERT RAISED " in text or "  INJECTED " in text) for text in self.log or ["  (none yet)"]]
        return lines

    def draw(self) -> None:
        """Redraw in place: home, each line cut to the width and cleared to its end, then the rest cleared."""
        size = shutil.get_terminal_size()
        # After a resize, lines wrapped at the old width may sit anywhere: clear the whole screen once.
        clear = "\x1b[2J" if size != self._size else ""
        self._size = size
        width = size.columns
        body = "".join(f"\x1b[1;31m{text[:width]}\x1b[0m\x1b[K\n" if hot else f"{text[:width]}\x1b[K\n"
                       for text, hot in self.screen())
        self.out.write(f"{clear}\x1b[H{body}\x1b[J")
        self.out.flush()
