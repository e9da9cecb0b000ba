"""`lora-gateway demo`: simulator, broker and gateway together, nothing to configure."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

DEMO_NODES = ("pump-house", "cold-room", "greenhouse")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def _start_mosquitto(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if binary is None:
        raise RuntimeError("mosquitto is not installed: install it (apt-get install mosquitto) or pass --broker HOST:PORT")
    port = _free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not _wait_listening(port, 10):
        proc.kill()
        raise RuntimeError(f"mosquitto did not start on 127.0.0.1:{port}")
    return proc, port


def _format(topic: str, payload: bytes, base: str) -> str | None:
    suffix = topic[len(base) + 1:]
    if suffix == "bridge/event":
        event = json.loads(payload)
        return f"event   {event.get('type')}: {event.get('reason', '')} {event.get('detail', '')}".rstrip()
    if suffix == "bridge/state":
        return f"bridge  {json.loads(payload)['state']}"
    if "/" in suffix:
        return f"{suffix:<24} {payload.decode(errors='replace')[:120]}" if suffix.endswith("/alert") else None
    body: dict[str, Any] = json.loads(payload)
    values = "  ".join(f"{k}={v:g}" for k, v in body["values"].items())
    return f"{body['device']:<12} fcnt {body['fcnt']:<5} rssi {body['rssi']} snr {body['snr']}  {values}"


def _print_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
    line = _format(msg.topic, msg.payload, "lora-gateway")
    if line is not None:
        print(line, flush=True)


def run_demo(args: argparse.Namespace) -> int:
    from firmware_sim.simulation import Simulation
    from gateway.devices import add_device

    workdir = Path(tempfile.mkdtemp(prefix="lora-gateway-demo-"))
    broker: subprocess.Popen[bytes] | None = None
    gateway: subprocess.Popen[bytes] | None = None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        if args.broker:
            host, _, port_text = args.broker.rpartition(":")
            host, port = host or "127.0.0.1", int(port_text)
        else:
            broker, port = _start_mosquitto(workdir)
            host = "127.0.0.1"
        devices = workdir / "devices.toml"
        for name in DEMO_NODES:
            add_device(devices, name, period_s=args.period)
        sim = Simulation(args.dialect, devices, period_s=args.period, seed=7).start()
        config = workdir / "config.toml"
        config.write_text(
            f'gateway_id = "demo"\ndevices_file = "devices.toml"\nstate_path = "state.db"\n'
            f'[serial]\nport = "{sim.port}"\ndialect = "{args.dialect}"\n'
            f'[mqtt]\nhost = "{host}"\nport = {port}\n'
        )
        print(f"demo: {args.dialect} module emulated on {sim.port}, broker {host}:{port}, files in {workdir}")
        print(f"demo: watch it too with: mosquitto_sub -h {host} -p {port} -t 'lora-gateway/#' -v")
        gateway = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config", str(config)])

        client = mqtt.Client(CallbackAPIVersion.VERSION2)
        client.on_connect = lambda c, u, f, rc, p: c.subscribe("lora-gateway/#")
        client.on_message = _print_message
        client.connect(host, port)
        client.loop_start()
        deadline = time.monotonic() + args.duration if args.duration else None
        try:
            while not stop.wait(0.2):
                if gateway.poll() is not None:
                    print(f"demo: the gateway exited with {gateway.returncode}", file=sys.stderr)
                    return 1
                if deadline is not None and time.monotonic() > deadline:
                    break
        except KeyboardInterrupt:
            pass
        client.loop_stop()
        client.disconnect()
        gateway.send_signal(signal.SIGTERM)
        code = gateway.wait(timeout=15)
        gateway = None
        sim.stop()
        print("demo: stopped")
        return code
    except RuntimeError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    finally:
        if gateway is not None:
            gateway.kill()
        if broker is not None:
            broker.terminate()
            broker.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run simulator + broker + gateway together and show what arrives (Ctrl-C stops)",
        description="Start an emulated LoRa module with three sensor nodes, a mosquitto broker on a free "
        "loopback port (or --broker), and the gateway; print what the gateway publishes.",
    )
    p.add_argument("--dialect", choices=["rylr", "rak3172", "rn2483"], default="rylr")
    p.add_argument("--broker", help="use this broker (HOST:PORT) instead of starting mosquitto")
    p.add_argument("--period", type=float, default=2.0, help="seconds between a node's uplinks (default: 2)")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: run until Ctrl-C)")
    p.set_defaults(func=run_demo)
