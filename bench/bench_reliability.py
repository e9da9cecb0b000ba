"""Reliability under load: alerts lost across a broker outage and a kill -9, reconnect times,
outbox throughput.

    python -m bench.bench_reliability [--rate 1000] [--outage 30] [--rounds 3] [--json out.json]

A real `lora-gateway run` reads an emulated module on a pty at `--rate` frames/s from 10 devices
whose values jump by many standard deviations for a few seconds every ~10 s, so alerts are raised
and cleared all along. A dashboard subscribes to the alerts with a persistent session. An alert
counts as committed when the gateway logs it (after the outbox commit); it is lost if the
dashboard never receives it.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_pipeline import Broker, make_devices  # noqa: E402
from bench.tables import table  # noqa: E402
from firmware_sim.modules import EMULATORS  # noqa: E402
from firmware_sim.pty_link import PtyModule  # noqa: E402
from gateway.publish.outbox import Outbox  # noqa: E402
from gateway.uplink import lpp  # noqa: E402
from gateway.uplink.devices import load_devices, session_keys  # noqa: E402
from gateway.uplink.lorawan import build_uplink  # noqa: E402

COMMITTED = re.compile(r"alert (\S+) (raised|cleared) committed")


class Dashboard:
    """Subscribes to alerts and events with a persistent session, as a dashboard should."""

    def __init__(self, port: int) -> None:
        self.alerts: set[tuple[str, str]] = set()
        self.events: list[dict[str, Any]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-dashboard", clean_session=False)
        self.client.reconnect_delay_set(1, 1)
        self.online_at: list[float] = []
        self.telemetry: list[tuple[float, float]] = []  # (received, the reading's time), wall clock
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(
            [("rel/+/alert", 1), ("rel/bridge/event", 1), ("rel/bridge/state", 1), ("rel/+", 0)])
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        body = json.loads(msg.payload)
        if msg.topic.count("/") == 1 and msg.topic != "rel/bridge":
            if not msg.retain:
                self.telemetry.append((time.time(), body["time"]))
        elif msg.topic.endswith("/state"):
            if body["state"] == "online":
                self.online_at.append(time.monotonic())
        elif msg.topic.endswith("/alert"):
            self.alerts.add((body["id"], body["state"]))
        else:
            self.events.append({**body, "_at": time.monotonic()})

    def fresh_after(self, end: float, timeout: float = 60) -> float | None:
        """Seconds from `end` (wall clock) to the first telemetry of a reading made after it."""
        wait(lambda: any(t >= end for _, t in list(self.telemetry)), timeout)
        return min((got - end for got, t in list(self.telemetry) if t >= end), default=None)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Load:
    """Frames at a fixed rate from a background thread; values jump every ~10 s per device."""

    def __init__(self, module_ref: list[PtyModule], devices_file: Path, rate: float) -> None:
        self.keys = session_keys(load_devices(devices_file))
        self.module_ref = module_ref
        self.rate = rate
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._fcnt = [0] * len(self.keys)
        self._thread.start()

    def _run(self) -> None:
        rng = random.Random(1)
        start = time.perf_counter()
        n = 0
        while not self._stop.is_set():
            due = start + n / self.rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            dev = n % len(self.keys)
            t = time.perf_counter() - start
            jump = 12.0 if (t + dev) % 10 < 2 else 0.0
            value = 20 + rng.gauss(0, 0.3) + jump
            frame = build_uplink(self.keys[dev], self._fcnt[dev], 1, lpp.encode([(1, "temperature", value)]))
            self._fcnt[dev] += 1
            self.module_ref[0].send_frame(frame, -80, 7)
            self.sent += 1
            n += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def start_gateway(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(config)], cwd=ROOT,
                            stderr=log.open("a"), stdout=subprocess.DEVNULL)


def wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def scenario(workdir: Path, rate: float, outage_s: float, rounds: int) -> dict[str, Any]:
    # Persistent, so the dashboard's session and its waiting alerts survive the broker restart.
    broker = Broker(workdir, persistent=True)
    devices = make_devices(workdir, 10)
    link = workdir / "ttyLoRa"
    module = [PtyModule(EMULATORS["rylr"](), link=link)]
    log = workdir / "gateway.log"
    config = workdir / "config.toml"
    config.write_text(
        f'devices_file = "{devices}"\nstate_path = "{workdir}/state.db"\nmodel_root = "{workdir}/none"\n'
        f'[serial]\nport = "{link}"\n[mqtt]\nport = {broker.port}\nbase_topic = "rel"\n'
        f"[detector]\nwarmup = 300\n"
    )
    dashboard = Dashboard(broker.port)
    gateway = start_gateway(config, log)
    time.sleep(3)
    load = Load(module, devices, rate)
    results: dict[str, Any] = {"rate": rate, **{k: [] for k in (
        "broker_back_to_online_s", "broker_back_to_fresh_telemetry_s", "port_back_to_serial_back_s",
        "port_back_to_fresh_telemetry_s")}}
    try:
        time.sleep(15)
        # 1. Broker outages.
        for _ in range(rounds):
            broker.stop()
            time.sleep(outage_s)
            back, back_wall = time.monotonic(), time.time()
            broker.start()
            wait(lambda: any(t > back for t in dashboard.online_at), 60)
            results["broker_back_to_online_s"].append(next(t for t in dashboard.online_at if t > back) - back)
            results["broker_back_to_fresh_telemetry_s"].append(dashboard.fresh_after(back_wall))
            time.sleep(5)
        # 2. kill -9 under load, then a restart.
        gateway.send_signal(signal.SIGKILL)
        gateway.wait()
        killed, killed_wall = time.monotonic(), time.time()
        gateway = start_gateway(config, log)
        wait(lambda: any(t > killed for t in dashboard.online_at), 60)
        results["kill_to_online_again_s"] = next(t for t in dashboard.online_at if t > killed) - killed
        results["kill_to_fresh_telemetry_s"] = dashboard.fresh_after(killed_wall)
        time.sleep(10)
        # 3. The module unplugged for 5 s and plugged back.
        for _ in range(rounds):
            module[0].close()
            time.sleep(5)
            replug, replug_wall = time.monotonic(), time.time()
            module[0] = PtyModule(EMULATORS["rylr"](), link=link)
            wait(lambda: any(e["type"] == "serial_back" and e["_at"] > replug for e in dashboard.events), 60)
            results["port_back_to_serial_back_s"].append(next(
                (e["_at"] - replug for e in dashboard.events if e["type"] == "serial_back" and e["_at"] > replug),
                None))
            results["port_back_to_fresh_telemetry_s"].append(dashboard.fresh_after(replug_wall))
            time.sleep(5)
    finally:
        load.stop()
        time.sleep(3)
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(30)
        committed = set(COMMITTED.findall(log.read_text()))
        wait(lambda: committed <= dashboard.alerts, 30)
        dashboard.stop()
        module[0].close()
        broker.stop()
    results.update(frames_sent=load.sent, alerts_committed=len(committed),
                   alerts_received=len(committed & dashboard.alerts), alerts_lost=len(committed - dashboard.alerts))
    return results


def outbox_throughput(workdir: Path, n: int) -> dict[str, float]:
    box = Outbox(workdir / "outbox-bench.db")
    start = time.perf_counter()
    ids = [box.add("t/alert", b'{"id":"x","state":"raised"}')[0].id for _ in range(n)]
    added = time.perf_counter() - start
    start = time.perf_counter()
    for i in ids:
        box.remove(i)
    removed = time.perf_counter() - start
    box.close()
    return {"commits_per_s": n / added, "removes_per_s": n / removed}


def _span(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    missing = f" ({len(values) - len(got)} never)" if len(got) < len(values) else ""
    if not got:
        return "-" + missing
    return (f"{min(got):.2f}" if len(got) == 1 else f"{min(got):.2f}-{max(got):.2f}") + missing


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--outage", type=float, default=30.0, help="seconds the broker is away")
    p.add_argument("--rounds", type=int, default=3, help="broker outages and unplugs, each")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-reliability-"))
    r = scenario(workdir, args.rate, args.outage, args.rounds)
    ob = outbox_throughput(workdir, 2000)
    table(f"Under {args.rate:.0f} frames/s through the pty ({r['frames_sent']} frames sent)",
          ["alerts committed", "received", "lost"],
          [[str(r["alerts_committed"]), str(r["alerts_received"]), str(r["alerts_lost"])]])
    table(f"Recovery, seconds from the fault's end ({args.rounds} rounds: min-max)",
          ["fault", "to bridge online / serial_back", "to first fresh telemetry"],
          [["broker stopped, then back", _span(r["broker_back_to_online_s"]), _span(r["broker_back_to_fresh_telemetry_s"])],
           ["module unplugged, then back", _span(r["port_back_to_serial_back_s"]),
            _span(r["port_back_to_fresh_telemetry_s"])],
           ["kill -9, then restart", _span([r["kill_to_online_again_s"]]), _span([r["kill_to_fresh_telemetry_s"]])]])
    table("Outbox (SQLite WAL, synchronous=FULL), one alert per transaction", ["commits/s", "acknowledged removes/s"],
          [[f"{ob['commits_per_s']:,.0f}", f"{ob['removes_per_s']:,.0f}"]])
    if args.json:
        args.json.write_text(json.dumps({"scenario": r, "outbox": ob}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
