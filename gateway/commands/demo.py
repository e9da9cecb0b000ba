"""`lora-gateway demo`: a simulated farm, a broker and the gateway together, nothing to configure.

The farm's nodes run on a sped-up clock with one injected fault (the cold room's door is
left open for an hour), so an alert is raised and cleared within a minute or so. The view is built only from
what the gateway publishes over MQTT, as any dashboard would see it (gateway.commands.demo_view):
redrawn in place on a terminal, plain lines when the output is a file or a pipe; each alert
marked by what was injected, or as a false alert.

Broker: `--broker HOST:PORT`, else mosquitto when installed, else an embedded amqtt broker.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.commands.demo_view import GroundTruth, Injected, LiveView

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
        import asyncio  # here, not at the top: `lora-gateway run` imports this module and never needs it (1.6 MB)

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
        import asyncio

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
            # -P and a cwd of its own: a `models/` or `gateway/` folder where the user stands must not
            # shadow the installed packages (python -m puts the current folder first on sys.path).
            gateway = subprocess.Popen([sys.executable, "-P", "-m", "gateway", "run", "--config", str(config)],
                                       stdout=log_file, stderr=subprocess.STDOUT, cwd=workdir)
        sim.start()
        header = [
            f"lora-gateway demo: {len(FARM['nodes'])} simulated nodes at {args.speed:g}x real time, one fault "
            f"(cold-room door left open after {FAULT_START_S // 3600} simulated hours); Ctrl-C stops",
            f"  {args.dialect} module emulated on {sim.port}; broker {broker_name} at {host}:{port}; "
            f"files in {workdir}{'' if args.keep else ' (removed at exit; --keep keeps them)'}",
            f"  watch too: mosquitto_sub -h {host} -p {port} -t '{BASE}/#' -v",
        ]
        speed, clock = args.speed, sim.clock  # the clock starts once the gateway has set up the module
        truth = GroundTruth([Injected(lb.node, lb.channel, lb.fault, lb.start_s, lb.end_s) for lb in sim.labels],
                            lambda when: (when - clock.wall_at(0)) * speed)
        view = LiveView(BASE, sys.stdout, tty, header, truth)
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
            view.follow_injections(time.time())
            if tty:
                view.draw()
            exit_code = gateway.poll()
            if exit_code == 0:
                # It exits 0 only when told to stop: a Ctrl-C reaches the whole group, and the gateway can
                # be done before this thread handles its own (another thread may take the signal).
                break
            if exit_code is not None:
                print(f"demo: the gateway exited with {exit_code}:\n{gateway_log.read_text()[-3000:]}",
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
    p.add_argument("--dialect", choices=["rylr", "rak3172", "rn2483"], default="rylr",
                   help="LoRa module to emulate (default: rylr)")
    p.add_argument("--broker", help="use this broker (HOST:PORT) instead of starting one")
    p.add_argument("--embedded-broker", action="store_true", help="use the embedded broker even if mosquitto is there")
    p.add_argument("--speed", type=float, default=DEFAULT_SPEED,
                   help=f"simulated seconds per real second (default: {DEFAULT_SPEED:g}; nodes report every "
                   "simulated minute)")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: run until Ctrl-C)")
    p.add_argument("--keep", action="store_true", help="keep the working files (config, state, gateway log)")
    p.set_defaults(func=run_demo)
