"""`lora-gateway demo`: a simulated farm, a broker and the gateway together, nothing to configure.

The farm's nodes run on a sped-up clock with one injected fault (the cold room's door is
left open for an hour), so an alert is raised and cleared within a minute or so. The view is built only from
what the gateway publishes over MQTT, as any dashboard would see it: redrawn in place on a
terminal, plain lines when the output is a file or a pipe.

Broker: `--broker HOST:PORT`, else mosquitto when installed, else an embedded amqtt broker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

BASE = "lora-gateway"
DEFAULT_SPEED = 600.0
# A small farm; the cold room's door is left open for an hour after five simulated hours. No day-night swing:
# the detector would rightly need a whole simulated day to learn one, too long for a demo.
FAULT_START_S = 5 * 3600
FARM: dict[str, Any] = {
    "simulation": {"seed": 7},
    "nodes": [
        {"name": "pump-house", "period_s": 60, "pump": {"cycle_s": 1800, "on_fraction": 0.3, "phase_s": 0},
         "sensors": [{"kind": "current", "channel": 1, "on_a": 4.2},
                     {"kind": "vibration", "channel": 2, "on_rms": 2.8}]},
        {"name": "cold-room", "period_s": 60,
         "sensors": [{"kind": "temperature", "channel": 1, "mean": 3.0, "swing": 0.0, "noise": 0.1},
                     {"kind": "humidity", "channel": 2, "mean": 85.0, "swing": 0.0}],
         "faults": [{"kind": "level_shift", "channel": 1, "start_s": FAULT_START_S, "duration_s": 3600,
                     "magnitude": 6.0}]},
        {"name": "greenhouse", "period_s": 60,
         "sensors": [{"kind": "temperature", "channel": 1, "mean": 22.0, "swing": 0.0},
                     {"kind": "humidity", "channel": 2, "mean": 70.0, "swing": 0.0}]},
    ],
}
# Learning for over three simulated hours before any alert: soon enough for a demo, long enough to be calm.
# A wider range tolerance: a few hours of Gaussian noise have not yet shown its extremes; and an alert
# needs three readings in a row, as a short learning time leaves single readings a little jumpy.
DETECTOR = "[detector]\nwarmup = 200\nrange_tolerance = 0.5\nmin_duration = 3\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


class Broker(Protocol):
    name: str
    port: int

    def stop(self) -> None: ...


class Mosquitto:
    name = "mosquitto"

    def __init__(self, binary: str, workdir: Path) -> None:
        self.port = free_port()
        conf = workdir / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_listening(self.port, 10):
            self.stop()
            raise RuntimeError(f"mosquitto did not start on 127.0.0.1:{self.port}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


class EmbeddedBroker:
    """amqtt in a thread with its own event loop: the demo then needs nothing outside pip."""

    name = "embedded amqtt"

    def __init__(self, workdir: Path) -> None:
        from amqtt.broker import Broker as AmqttBroker

        # Its log (a cancelled task's traceback at shutdown, among others) goes to a file, not over the view.
        amqtt_log = logging.getLogger("amqtt")
        amqtt_log.addHandler(logging.FileHandler(workdir / "broker.log"))
        amqtt_log.propagate = False

        self.port = free_port()
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self._loop = asyncio.new_event_loop()
        self._broker = AmqttBroker(config, loop=self._loop)
        self._thread = threading.Thread(target=self._loop.run_forever, name="amqtt", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._broker.start(), self._loop).result(timeout=10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


def start_broker(workdir: Path, embedded: bool) -> Broker:
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if binary is not None and not embedded:
        return Mosquitto(binary, workdir)
    try:
        return EmbeddedBroker(workdir)
    except ModuleNotFoundError as e:
        if e.name != "amqtt":
            raise
        raise RuntimeError("no broker: install mosquitto (apt-get install mosquitto), or the embedded one with "
                           "pip install 'lora-gateway[demo]', or pass --broker HOST:PORT") from None


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

    def __init__(self, base: str, out: TextIO, tty: bool, header: list[str]) -> None:
        self.base = base
        self.out = out
        self.tty = tty
        self.header = header
        self.devices: dict[str, DeviceView] = {}
        self.log: list[str] = []  # alerts and events, newest last
        self.alerts = 0
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
                self.alerts += a["state"] == "raised"
                channels = ", ".join(f"{c} {s:.2f}" for c, s in a.get("channels", {}).items())
                self._note(f"ALERT {a['state'].upper()} {a['device']}: score {a['score']:.2f} "
                           f"(threshold {a['threshold']:.2f}) {channels}".rstrip())

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
            summary = f"gateway: {self.bridge}    devices: {len(self.devices)}    alerts raised: {self.alerts}"
            lines += [(summary, False), ("", False)]
            for d in sorted(self.devices.values(), key=lambda d: d.name):
                lines.append((f"{self._device_line(d)}  ({now - d.seen:.0f} s ago)", d.alert_state == "raised"))
            lines += [("", False), ("alerts and events:", False)]
            lines += [(text, "  ALERT RAISED " in text) for text in self.log or ["  (none yet)"]]
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


def run_demo(args: argparse.Namespace) -> int:
    from firmware_sim.scenario import Scenario
    from firmware_sim.simulation import Simulation

    workdir = Path(tempfile.mkdtemp(prefix="lora-gateway-demo-"))
    broker: Broker | None = None
    gateway: subprocess.Popen[bytes] | None = None
    sim: Simulation | None = None
    client: mqtt.Client | None = None
    tty = sys.stdout.isatty()
    stop = threading.Event()
    # SIGHUP: the terminal went away. Without it the demo would die and leave gateway and broker behind.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    try:
        if args.broker:
            host, _, port_text = args.broker.rpartition(":")
            host, port, broker_name = host or "127.0.0.1", int(port_text), "given"
        else:
            broker = start_broker(workdir, args.embedded_broker)
            host, port, broker_name = "127.0.0.1", broker.port, broker.name
        devices = workdir / "devices.toml"
        sim = Simulation.from_scenario(Scenario.model_validate(FARM), args.dialect, devices, speed=args.speed,
                                       duration_s=None, wait_for_gateway=True)
        config = workdir / "config.toml"
        config.write_text(
            f'gateway_id = "demo"\ndevices_file = "devices.toml"\nstate_path = "state.db"\n{DETECTOR}'
            f'[serial]\nport = "{sim.port}"\ndialect = "{args.dialect}"\n'
            f'[mqtt]\nhost = "{host}"\nport = {port}\nbase_topic = "{BASE}"\n'
        )
        gateway_log = workdir / "gateway.log"
        with gateway_log.open("wb") as log_file:
            # In the demo's process group: whatever ends the whole group (a terminal's Ctrl-C, a supervisor's
            # kill) ends it too; a hangup only reloads its model, and the demo then stops it with SIGTERM.
            gateway = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(config)],
                                       stdout=log_file, stderr=subprocess.STDOUT)
        sim.start()
        header = [
            f"lora-gateway demo: {len(FARM['nodes'])} simulated nodes at {args.speed:g}x real time, one fault "
            f"(cold-room door left open after {FAULT_START_S // 3600} simulated hours); Ctrl-C stops",
            f"  {args.dialect} module emulated on {sim.port}; broker {broker_name} at {host}:{port}; "
            f"files in {workdir}{'' if args.keep else ' (removed at exit; --keep keeps them)'}",
            f"  watch too: mosquitto_sub -h {host} -p {port} -t '{BASE}/#' -v",
        ]
        view = LiveView(BASE, sys.stdout, tty, header)
        if not tty:
            print("\n".join(header), flush=True)
        client = mqtt.Client(CallbackAPIVersion.VERSION2)
        client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{BASE}/#")
        client.on_message = view.on_message
        client.connect(host, port)
        client.loop_start()
        if tty:
            sys.stdout.write("\x1b[?25l")  # hide the cursor while redrawing
        deadline = time.monotonic() + args.duration if args.duration else None
        while not stop.wait(0.25):
            if tty:
                view.draw()
            if gateway.poll() is not None:
                print(f"demo: the gateway exited with {gateway.returncode}:\n{gateway_log.read_text()[-3000:]}",
                      file=sys.stderr)
                return 1
            if deadline is not None and time.monotonic() > deadline:
                break
        return 0
    except KeyboardInterrupt:
        return 0
    except RuntimeError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        if client is not None:
            client.loop_stop()
            client.disconnect()
        if gateway is not None:
            if gateway.poll() is None:
                gateway.send_signal(signal.SIGTERM)
            try:
                gateway.wait(timeout=15)
            except subprocess.TimeoutExpired:
                gateway.kill()
                gateway.wait()
        if sim is not None:
            sim.stop()
        if broker is not None:
            broker.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        try:  # last, as the terminal may be gone
            if tty:
                sys.stdout.write("\x1b[?25h")
            print(f"demo: stopped; files kept in {workdir}" if args.keep else "demo: stopped", flush=True)
        except OSError:
            pass
        signal.signal(signal.SIGINT, signal.default_int_handler)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run a simulated farm, a broker and the gateway together, with a live view (Ctrl-C stops)",
        description="Start an emulated LoRa module with three simulated sensor nodes (one develops a fault), a "
        "broker (mosquitto if installed, else an embedded one; or --broker) and the gateway, and show "
        "devices, values, RSSI, anomaly scores and alerts live from the MQTT topics.",
    )
    p.add_argument("--dialect", choices=["rylr", "rak3172", "rn2483"], default="rylr")
    p.add_argument("--broker", help="use this broker (HOST:PORT) instead of starting one")
    p.add_argument("--embedded-broker", action="store_true", help="use the embedded broker even if mosquitto is there")
    p.add_argument("--speed", type=float, default=DEFAULT_SPEED,
                   help=f"simulated seconds per real second (default: {DEFAULT_SPEED:g}; nodes report every "
                   "simulated minute)")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: run until Ctrl-C)")
    p.add_argument("--keep", action="store_true", help="keep the working files (config, state, gateway log)")
    p.set_defaults(func=run_demo)
