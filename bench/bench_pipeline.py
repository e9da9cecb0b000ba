"""Pipeline benchmarks: throughput against the naive way, latency through a real pty and broker,
daemon memory and start-up, and scaling with devices and window length.

    python -m bench                          # everything (about 10 minutes on 2 cores)
    python -m bench --quick                  # smaller runs
    python -m bench --json out.json          # also the figures as JSON
    python -m bench --only throughput,daemon
    python -m bench --only daemon --devices 10000 --heard 3
    python -m bench --only daemon --devices 10000 --restart-full

(`python -m bench` is `python -m bench.bench_pipeline`.)

Each figure comes from this one run on this machine; speeds are also given as ratios against
the naive baseline measured in the same run. Throughput runs are pinned to one core.
The naive way needs torch (the [train] extra); a mosquitto binary must be installed.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.tables import table  # noqa: E402
from gateway.commands.demo import free_port, wait_listening  # noqa: E402
from gateway.uplink import lpp  # noqa: E402
from gateway.uplink.devices import add_devices, load_devices, session_keys  # noqa: E402
from gateway.uplink.lorawan import SessionKeys, build_uplink  # noqa: E402

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
SECTIONS = ("throughput", "latency", "daemon", "scaling")
STAGES = {
    "pipeline": "line -> reading: dialect, MIC, decryption, LPP, frame counters committed",
    "detector": "detector: buffers, normalization, one int8 ONNX call a batch, likelihood, alert state",
    "payload": "state payload JSON",
    "history": "history: a row a device a minute kept, written in one SQLite transaction every 10 s",
    "mqtt": "MQTT: paho publishing, both threads, until acknowledged",
}


# ---------------------------------------------------------------- shared set-up

class Broker:
    def __init__(self, workdir: Path, persistent: bool = False) -> None:
        """`persistent`: subscribers' sessions and their waiting messages survive a restart."""
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        store = f"persistence true\npersistence_location {workdir}/\nuser {getpass.getuser()}\n" if persistent else (
            "persistence false\n")
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{store}max_queued_messages 0\n")
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        if not wait_listening(self.port, 10):
            raise RuntimeError(f"mosquitto did not listen on 127.0.0.1:{self.port}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


@contextlib.contextmanager
def gateway_process(config: Path, **popen: Any) -> Iterator[subprocess.Popen[bytes]]:
    """`lora-gateway run` on `config`; stopped on the way out whatever happened inside: a daemon
    left running keeps reopening its port's path, and a later run's pty may get that path."""
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(config)], cwd=ROOT, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def make_devices(workdir: Path, count: int, prefix: str = "dev-") -> Path:
    """A devices file of `count` devices named prefix0, prefix1, ..."""
    path = workdir / f"devices-{prefix}{count}.toml"
    if not path.exists():
        add_devices(path, [f"{prefix}{i}" for i in range(count)])
    return path


def sensor_value(i: int, dev: int, rng: random.Random) -> tuple[float, float]:
    return 20 + 3 * ((i + dev) % 50) / 50 + rng.gauss(0, 0.2), 50 + rng.gauss(0, 2)


def sensor_uplink(keys: SessionKeys, i: int, dev: int, rng: random.Random) -> bytes:
    """Device `dev`'s i-th frame (counter i): its temperature and humidity, unrounded."""
    t, h = sensor_value(i, dev, rng)
    return build_uplink(keys, i, 1, lpp.encode([(1, "temperature", t), (2, "relative_humidity", h)]))


def record_lines(devices_file: Path, frames: int, seed: int = 1) -> list[bytes]:
    """RYLR receive events as the module would print them, round robin over the devices."""
    keys = session_keys(load_devices(devices_file))
    rng = random.Random(seed)
    lines = []
    for n in range(frames):
        dev = n % len(keys)
        i = n // len(keys)
        t, h = sensor_value(i, dev, rng)
        payload = lpp.encode([(1, "temperature", round(t, 1)), (2, "relative_humidity", round(h * 2) / 2)])
        data = build_uplink(keys[dev], i, 1, payload).hex().upper()
        lines.append(f"+RCV=1,{len(data)},{data},-80,7".encode())
    return lines


def run_child(kind: str, **kw: Any) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.pipeline_children", kind]
    for k, v in kw.items():
        cmd += [f"--{k}", str(v)]
    # One core: the targets are per core, and taskset keeps paho's thread on it too.
    cmd = ["taskset", "-c", "0", *cmd] if shutil.which("taskset") else cmd
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- end-to-end through pty and broker

def latency_run(workdir: Path, broker: Broker, devices_file: Path, rate: float, seconds: float) -> dict[str, Any]:
    """Send frames through an emulated module on a pty at `rate`; time each until a subscriber has it."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from firmware_sim.modules import EMULATORS
    from firmware_sim.pty_link import PtyModule

    keys = session_keys(load_devices(devices_file))
    sent: dict[tuple[str, int], float] = {}
    arrived: dict[tuple[str, int], float] = {}
    base = f"lat{int(rate)}"

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        now = time.perf_counter()
        body = json.loads(msg.payload)
        arrived.setdefault((body["device"], body["fcnt"]), now)

    sub = mqtt.Client(CallbackAPIVersion.VERSION2)
    ready = threading.Event()
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{base}/+", qos=0)
    sub.on_subscribe = lambda *a: ready.set()
    sub.on_message = on_message
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()
    ready.wait(10)
    with PtyModule(EMULATORS["rylr"]()) as module:
        config = workdir / f"latency-{int(rate)}.toml"
        config.write_text(
            f'devices_file = "{devices_file}"\nstate_path = "{workdir}/lat-{int(rate)}.db"\n'
            f'model_root = "{workdir}/no-models"\n'
            f'[serial]\nport = "{module.port}"\n[mqtt]\nport = {broker.port}\nbase_topic = "{base}"\n'
        )
        with gateway_process(config, stderr=subprocess.DEVNULL):
            time.sleep(3)
            rng = random.Random(2)
            total = int(rate * seconds)
            start = time.perf_counter()
            for n in range(total):
                due = start + n / rate
                while (delay := due - time.perf_counter()) > 0:
                    time.sleep(delay)
                dev = n % len(keys)
                i = n // len(keys)
                frame = sensor_uplink(keys[dev], i, dev, rng)
                sent[(keys[dev].name, i)] = time.perf_counter()
                module.send_frame(frame, -80, 7)
            time.sleep(2)
    sub.loop_stop()
    lat = sorted((arrived[k] - sent[k]) * 1000 for k in sent if k in arrived)
    return {
        "rate": rate, "sent": len(sent), "arrived": len(lat),
        "p50_ms": statistics.median(lat), "p99_ms": lat[int(0.99 * (len(lat) - 1))], "max_ms": lat[-1],
        "achieved_rate": total / (time.perf_counter() - start - 2),
    }


# Frames the daemon bench sends before it waits for their telemetry, each sent again until it
# arrives: the figures are then those of a daemon that heard every frame, checked, not assumed.
_HEARD_CHUNK = 32
_HEARD_TRIES = 5


def daemon_memory_and_startup(workdir: Path, broker: Broker, devices_file: Path, frames_per_device: int,
                              state: Path | None = None) -> dict[str, Any]:
    """Peak RSS of a real daemon that has heard every device `frames_per_device` times (each frame
    sent until its telemetry arrives), and its time from exec to READY=1; its RSS 2 s after the
    last frame (after READY=1 when it hears none). `state`: the state database it starts on
    (default: a new one)."""
    from firmware_sim.modules import EMULATORS
    from firmware_sim.pty_link import PtyModule

    keys = session_keys(load_devices(devices_file))
    state = state or workdir / "memory.db"
    notify = workdir / "notify.sock"
    notify.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(60)
    arrived = _Arrivals(broker.port, "mem")
    resent = 0
    with PtyModule(EMULATORS["rylr"]()) as module:
        config = workdir / "memory.toml"
        config.write_text(
            f'devices_file = "{devices_file}"\nstate_path = "{state}"\nmodel_root = "{workdir}/none"\n'
            f'[serial]\nport = "{module.port}"\n[mqtt]\nport = {broker.port}\nbase_topic = "mem"\n'
        )
        start = time.perf_counter()
        notified = {**os.environ, "NOTIFY_SOCKET": str(notify)}
        with gateway_process(config, stderr=subprocess.DEVNULL, env=notified) as gateway:
            while b"READY=1" not in sock.recv(4096):
                pass
            ready_s = time.perf_counter() - start
            rng = random.Random(3)
            for i in range(frames_per_device):
                frames = {(k.name, i): sensor_uplink(k, i, dev, rng) for dev, k in enumerate(keys)}
                resent += _send_until_heard(module, arrived, frames)
            time.sleep(2)
            status = dict(x.split(":", 1) for x in Path(f"/proc/{gateway.pid}/status").read_text().splitlines())
            hwm, rss = (int(status[field].split()[0]) / 1024 for field in ("VmHWM", "VmRSS"))
    arrived.close()
    sock.close()
    return {"devices": len(keys), "ready_s": ready_s, "peak_rss_mb": hwm, "rss_mb": rss, "resent": resent}


def _send_until_heard(module: Any, arrived: _Arrivals, frames: dict[tuple[str, int], bytes]) -> int:
    """Send the frames _HEARD_CHUNK at a time, each again until its telemetry arrives; returns the
    frames sent again. A frame still missing after _HEARD_TRIES sends is an error."""
    resent = 0
    keys = list(frames)
    for chunk_start in range(0, len(keys), _HEARD_CHUNK):
        missing = keys[chunk_start:chunk_start + _HEARD_CHUNK]
        for attempt in range(_HEARD_TRIES):
            resent += len(missing) if attempt else 0
            for key in missing:
                while not module.send_frame(frames[key], -80, 7):
                    time.sleep(0.01)
            arrived.wait_for(missing, 2.0)
            missing = [key for key in missing if key not in arrived.seen]
            if not missing:
                break
        else:
            raise RuntimeError(f"the daemon did not publish {len(missing)} frames after {_HEARD_TRIES} sends each, "
                               f"e.g. {missing[0]}")
    return resent


class _Arrivals:
    """The (device, fcnt) of every telemetry message under `base`, as a subscriber sees them."""

    def __init__(self, port: int, base: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.seen: set[tuple[str, int]] = set()
        self._cond = threading.Condition()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2)
        subscribed = threading.Event()
        self._client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{base}/+", qos=1)
        self._client.on_subscribe = lambda *a: subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError(f"could not subscribe to {base}/+ on 127.0.0.1:{port}")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        body = json.loads(msg.payload)
        with self._cond:
            self.seen.add((body["device"], body["fcnt"]))
            self._cond.notify_all()

    def wait_for(self, keys: list[tuple[str, int]], timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: all(key in self.seen for key in keys), timeout)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller runs")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--repeats", type=int, default=3, help="throughput runs per variant; the median is reported")
    p.add_argument("--only", help=f"comma-separated sections to run: {', '.join(SECTIONS)} (default: all)")
    p.add_argument("--devices", type=int, default=1000, help="devices in the daemon section")
    p.add_argument("--heard", type=int, help="readings from each device in the daemon section (default 70; --quick 3; "
                   "0: the daemon idle with its devices configured)")
    p.add_argument("--restart-full", action="store_true",
                   help="daemon section: instead of hearing the devices, start the daemon on a state database of "
                   "--devices devices with full detector buffers (bench.bench_detector's steady state: two channels "
                   "each, every record a copy of one channel's after 3,000 readings) and report its start to "
                   "READY=1, its peak RSS and its RSS 2 s after READY=1")
    args = p.parse_args()
    sections = set(args.only.split(",")) if args.only else set(SECTIONS)
    if unknown := sections - set(SECTIONS):
        p.error(f"--only: unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    if args.restart_full and args.heard is not None:
        p.error("--restart-full hears no device: leave out --heard")
    results: dict[str, Any] = {"machine": f"{os.cpu_count()} cores, {os.uname().machine}, Python {sys.version.split()[0]}"}
    workdir = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    broker = Broker(workdir)
    try:
        devices_n = 100
        frames = 12_000 if args.quick else 40_000
        devices_file = make_devices(workdir, devices_n)
        lines_file = workdir / "lines.txt"
        lines_file.write_text("\n".join(x.hex() for x in record_lines(devices_file, frames)))
        print(f"{results['machine']}; {frames} pre-recorded frames from {devices_n} devices", flush=True)

        if "throughput" in sections:
            # Interleaved, so that a change in the machine's load between runs hits every variant alike.
            # name: (child, figure the median is taken by, the child's options)
            variants = {"naive": ("naive", "fps", {}), "gateway": ("gateway", "fps", {"qos": 0}),
                        "gateway_qos1": ("gateway", "fps", {"qos": 1}),
                        "paho": ("paho", "us_per_message", {"messages": frames}),
                        "runtime": ("runtime", "rss_mb", {}), "stages": ("stages", "frames", {})}
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
            for _ in range(args.repeats):
                for name, (kind, _, kw) in variants.items():
                    runs[name].append(run_child(kind, lines=lines_file, devices=devices_file, broker=broker.port, **kw))
            median: dict[str, dict[str, Any]] = {}
            for name, (_, key, _) in variants.items():
                median[name] = sorted(runs[name], key=lambda r, key=key: r[key])[len(runs[name]) // 2]
                median[name]["runs"] = [round(r[key], 1) for r in runs[name]]
            naive_m, ours, ours1, paho, runtime = (median[name] for name in ("naive", "gateway", "gateway_qos1", "paho",
                                                                             "runtime"))
            stages = {name: statistics.median(r[name] for r in runs["stages"]) for name in STAGES}
            results["throughput"] = {"gateway": ours, "gateway_qos1": ours1, "naive": naive_m, "paho_floor": paho,
                                     "runtime_floor": runtime, "stages_cpu_us": stages}
            paho_rate = 1e6 / paho["us_per_message"]
            table("Throughput, pre-recorded lines, one core (median of runs), each timed until the broker "
                  "acknowledged the last message",
                  ["variant", "frames/s", "us/frame", "runs", "peak RSS MB", "vs naive: speed", "vs naive: memory"],
                  [["naive: float torch, one packet at a time", f"{naive_m['fps']:,.0f}", f"{1e6 / naive_m['fps']:.1f}",
                    str([round(x) for x in naive_m["runs"]]), f"{naive_m['rss_mb']:.0f}", "1.0x", "1.00"],
                   *[[f"gateway: the daemon's batch path, telemetry at QoS {qos}", f"{r['fps']:,.0f}",
                      f"{1e6 / r['fps']:.1f}", str([round(x) for x in r["runs"]]), f"{r['rss_mb']:.0f}",
                      f"{r['fps'] / naive_m['fps']:.1f}x", f"{r['rss_mb'] / naive_m['rss_mb']:.2f}"]
                     for qos, r in ((0, ours), (1, ours1))],
                   ["floor: paho alone, one QoS 1 telemetry message per frame", f"{paho_rate:,.0f}",
                    f"{paho['us_per_message']:.1f}", str(paho["runs"]), "", f"{paho_rate / naive_m['fps']:.1f}x", ""],
                   ["floor: runtime imports and the model session, no work", "", "", str(runtime["runs"]),
                    f"{runtime['rss_mb']:.0f}", "", f"{runtime['rss_mb'] / naive_m['rss_mb']:.2f}"]])
            print("\nA floor row is what the gateway could reach if all its own work cost nothing: its ratio "
                  "bounds the gateway's.")
            total = ours["cpu_us"]
            rows = [[text, f"{stages[name]:.1f}", f"{stages[name] / total:.0%}"] for name, text in STAGES.items()]
            rest = total - sum(stages.values())
            rows.append(["the rest: interleaving costs (paho's thread taking turns for the GIL, caches), discovery "
                         "and availability checks", f"{rest:.1f}", f"{rest / total:.0%}"])
            rows.append(["gateway run, all threads (its paho network thread alone)",
                         f"{total:.1f} ({ours['other_threads_cpu_us']:.1f})", "100%"])
            table("Where a frame's time goes: each stage alone over the same lines, CPU us per frame (median of runs)",
                  ["stage", "CPU us/frame", "of the gateway's"], rows)

        if "latency" in sections:
            lat = [latency_run(workdir, broker, devices_file, rate, 5 if args.quick else 10) for rate in (100, 1000)]
            results["latency"] = lat
            table("Latency, serial line (pty) to a subscriber of a real mosquitto",
                  ["frames/s", "sent", "arrived", "p50 ms", "p99 ms", "max ms"],
                  [[f"{r['rate']:.0f}", str(r["sent"]), str(r["arrived"]), f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                    f"{r['max_ms']:.2f}"] for r in lat])

        if "daemon" in sections and args.restart_full:
            from bench.bench_detector import steady_state
            from gateway.detect.model_store import packaged_default_bundle
            from gateway.detect.scoring import OnnxScorer

            # The daemon's model (none active: the packaged default), so that the score histories load
            # too; two channels in LPP's 0.1 steps, named node0, node1, ... as in the devices file.
            state = workdir / "restart.db"
            steady_state(OnnxScorer(packaged_default_bundle()), args.devices, 2, 0.1, state).close()
            state_mb = state.stat().st_size / 1e6
            mem = daemon_memory_and_startup(workdir, broker, make_devices(workdir, args.devices, "node"), 0, state)
            results["daemon"] = {**mem, "restart_full": True, "state_mb": state_mb}
            table(f"Daemon started on a state database of {args.devices:,} devices with full detector buffers "
                  "(real process, pty, broker)",
                  ["devices", "database MB", "start to READY=1 s", "peak RSS MB", "RSS 2 s after READY=1 MB"],
                  [[str(mem["devices"]), f"{state_mb:.0f}", f"{mem['ready_s']:.2f}", f"{mem['peak_rss_mb']:.0f}",
                    f"{mem['rss_mb']:.0f}"]])
        elif "daemon" in sections:
            mem_devices = make_devices(workdir, args.devices)
            heard = args.heard if args.heard is not None else (3 if args.quick else 70)
            mem = daemon_memory_and_startup(workdir, broker, mem_devices, heard)
            results["daemon"] = {**mem, "heard": heard}
            table(f"Daemon with {args.devices:,} devices, each heard {heard} times (real process, pty, broker; "
                  "a frame whose telemetry did not arrive is sent again)",
                  ["devices", "start to READY=1 s", "peak RSS MB", "RSS 2 s after MB", "frames sent again"],
                  [[str(mem["devices"]), f"{mem['ready_s']:.2f}", f"{mem['peak_rss_mb']:.0f}", f"{mem['rss_mb']:.0f}",
                    f"{mem['resent']:,}"]])

        if "scaling" in sections:
            # (devices, window, readings a device). Each device is heard as often in every configuration
            # but the largest, so that all are past their warm-up alike (scored from the 64th reading at
            # window 32, the 256th at 128); 10,000 devices get 40 each, warm-up only, to keep the run
            # short. Interleaved over the repeats; ratios against 100 devices at window 32.
            per_device = 40 if args.quick else 400
            configs = [(10, 32, per_device), (100, 32, per_device), (1000, 32, per_device), (100, 64, per_device),
                       (100, 128, per_device)]
            if not args.quick:
                configs.insert(3, (10000, 32, 40))
            files = {}
            for n, _, each in configs:
                if (n, each) not in files:
                    dfile = make_devices(workdir, n)
                    lfile = workdir / f"lines-{n}x{each}.txt"
                    lfile.write_text("\n".join(x.hex() for x in record_lines(dfile, n * each)))
                    files[(n, each)] = (dfile, lfile)
            runs_by: dict[tuple[int, int, int], list[dict[str, Any]]] = {c: [] for c in configs}
            for _ in range(args.repeats):
                for n, w, each in configs:
                    dfile, lfile = files[(n, each)]
                    runs_by[(n, w, each)].append(run_child("gateway", lines=lfile, devices=dfile, broker=broker.port,
                                                           window=w))
            scaling = []
            for (n, w, each), rs in runs_by.items():
                best = sorted(rs, key=lambda r: r["fps"])[len(rs) // 2]
                scaling.append({"devices": n, "window": w, "per_device": each, **best,
                                "runs": [round(r["fps"]) for r in rs]})
            base = next(r for r in scaling if (r["devices"], r["window"]) == (devices_n, 32))
            results["scaling"] = scaling
            table("Scaling, one core (median of runs)",
                  ["devices", "window", "readings a device", "frames", "frames/s", "runs", "vs 100 devices, window 32",
                   "peak RSS MB"],
                  [[f"{r['devices']:,}", str(r["window"]), str(r["per_device"]), f"{r['frames']:,}", f"{r['fps']:,.0f}",
                    str(r["runs"]), f"{r['fps'] / base['fps']:.2f}", f"{r['rss_mb']:.0f}"] for r in scaling])
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
