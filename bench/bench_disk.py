"""Disk writes and CPU of a real daemon at a radio's rate: bytes a frame and a day, by file;
CPU time a frame.

    python -m bench.bench_disk                        # 20 and 10,000 devices, 17 frames/s, 180 s each
    python -m bench.bench_disk --devices 20 --seconds 30 --rate 140
    python -m bench.bench_disk --cpu 0,17,140         # CPU a frame at these rates instead (no strace; 0: idle)

A real `lora-gateway run` reads an emulated module on a pty, fed at `--rate` frames/s (17: one SF7
channel, full), round robin over the devices, and publishes to a real mosquitto. Every device is
heard once before the clock starts, so that 10,000 devices fill the daemon's tables. The health
snapshot goes to a RAM directory (`runtime_dir`), as under systemd.

Written bytes come from the kernel: /proc/PID/io `write_bytes` (what the process sent towards the
block layer, every file), and, with strace installed, the bytes of every write by file. The floor
row is a process that only commits the frame counters, one commit a frame, as the daemon must
before it publishes a frame. CPU is the daemon's utime + stime (/proc/PID/stat, all threads)
over the measured seconds, in runs without strace.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_pipeline import Broker, make_devices  # noqa: E402
from bench.tables import table  # noqa: E402
from gateway.uplink import lpp  # noqa: E402
from gateway.uplink.devices import load_devices, session_keys  # noqa: E402
from gateway.uplink.lorawan import build_uplink  # noqa: E402

DAY_S = 86400
# strace -y names each descriptor: "12</var/lib/x/state.db-wal>", "7<socket:[123]>", "5</dev/pts/3>".
_WRITE = re.compile(r"^\d+\s+(?:p?write(?:v|64)?|pwritev2?)\((\d+)<([^>]*)>.*\)\s+=\s+(\d+)$")


def _io_write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/io has no write_bytes")


def _traced(cmd: list[str], trace: Path) -> list[str]:
    if shutil.which("strace") is None:
        return cmd
    return ["strace", "-f", "-qq", "-y", "-s", "0", "-e", "signal=none",
            "-e", "trace=write,pwrite64,writev,pwritev", "-o", str(trace), *cmd]


def _traced_pid(proc: subprocess.Popen[Any]) -> int:
    """The measured process: under strace, strace's only child."""
    if shutil.which("strace") is None:
        return proc.pid
    return int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])


def _by_file(trace: Path, start: int, workdir: Path) -> dict[str, int]:
    """Bytes written from offset `start` of the trace on, by file (sockets and ptys apart)."""
    out: Counter[str] = Counter()
    if not trace.exists():
        return {}
    with trace.open() as f:
        f.seek(start)
        for line in f:
            m = _WRITE.match(line.strip())
            if m is None:
                continue
            path, n = m.group(2), int(m.group(3))
            if path.startswith(("socket:", "TCP", "UDP", "UNIX", "pipe:", "anon_inode:")):
                continue  # the network and the process's own wake-ups, not the disk
            if path.startswith(("/dev/pts/", "/dev/tty")):
                continue  # the serial port
            name = Path(path).name
            # A snapshot's temporary file is the snapshot: ".state.health.json.x1y2" -> "state.health.json"
            if name.startswith(".") and ".health.json." in name:
                name = name[1:].rsplit(".", 1)[0]
            where = "RAM" if Path(path).is_relative_to((workdir / "run").resolve()) else "disk"
            out[f"{name} ({where})"] += n
    return dict(out)


def _size(trace: Path) -> int:
    return trace.stat().st_size if trace.exists() else 0


def _ram_dir() -> Path:
    shm = Path("/dev/shm")
    return Path(tempfile.mkdtemp(prefix="bench-disk-run-", dir=shm if shm.is_dir() else None))


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def gateway_run(workdir: Path, broker: Broker, devices_file: Path, rate: float, seconds: float,
                traced: bool = True) -> dict[str, Any]:
    from firmware_sim.modules import EMULATORS
    from firmware_sim.pty_link import PtyModule

    keys = session_keys(load_devices(devices_file))
    n = len(keys)
    run = workdir / "run"
    run.symlink_to(_ram_dir())
    notify = workdir / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(120)
    trace = workdir / "gateway.strace"
    with PtyModule(EMULATORS["rylr"]()) as module:
        config = workdir / "disk.toml"
        config.write_text(
            f'devices_file = "{devices_file}"\nstate_path = "{workdir}/state.db"\nmodel_root = "{workdir}/none"\n'
            f'runtime_dir = "{run}"\n'
            f'[serial]\nport = "{module.port}"\n[mqtt]\nport = {broker.port}\nbase_topic = "disk"\n'
        )
        cmd = [sys.executable, "-m", "gateway", "run", "--config", str(config)]
        log = workdir / "gateway.log"
        gateway = subprocess.Popen(_traced(cmd, trace) if traced else cmd, cwd=ROOT, stderr=log.open("w"),
                                   env={**os.environ, "NOTIFY_SOCKET": str(notify)})
        pid = gateway.pid
        try:
            try:
                while b"READY=1" not in sock.recv(4096):
                    pass
            except TimeoutError:
                raise RuntimeError(f"the daemon did not start:\n{log.read_text()[-3000:]}") from None
            pid = _traced_pid(gateway) if traced else gateway.pid

            def send(fcnt: int, dev: int) -> None:
                payload = lpp.encode([(1, "temperature", 20 + (fcnt + dev) % 50 / 10),
                                      (2, "relative_humidity", 50 + dev % 7)])
                while not module.send_frame(build_uplink(keys[dev], fcnt, 1, payload), -80, 7):
                    time.sleep(0.01)

            for dev in range(n):  # every device heard once, at the module's pace
                send(0, dev)
            time.sleep(12)  # past a detector flush and the history's write of the warm-up
            io_start, trace_start, cpu_start = _io_write_bytes(pid), _size(trace), _cpu_s(pid)
            total = int(rate * seconds)
            start = time.perf_counter()
            for i in range(total):
                while (delay := start + i / rate - time.perf_counter()) > 0:
                    time.sleep(delay)
                send(1 + i // n, i % n)
            if not total:  # rate 0: the daemon idle, every device heard once before
                time.sleep(seconds)
            elapsed = time.perf_counter() - start
            io_bytes = _io_write_bytes(pid) - io_start
            cpu = _cpu_s(pid) - cpu_start
            status = Path(f"/proc/{pid}/status").read_text()
            peak_rss_mb = next(int(x.split()[1]) / 1024 for x in status.splitlines() if x.startswith("VmHWM:"))
            files = _by_file(trace, trace_start, workdir)
        finally:
            os.kill(pid, signal.SIGTERM)  # the daemon itself, not strace
            gateway.wait(30)
            sock.close()
    return {"devices": n, "rate": rate, "frames": total, "seconds": elapsed, "write_bytes": io_bytes,
            "cpu_s": cpu, "peak_rss_mb": peak_rss_mb, "files": files}


def floor_child(state: Path, devices: int, rate: float, seconds: float) -> None:
    """The one commit a frame the daemon owes before publishing: the frame counter, nothing else."""
    from gateway.service.state import StateStore

    store = StateStore(state)
    store.set_frame_counters({dev: 0 for dev in range(devices)})
    print("ready", flush=True)
    sys.stdin.readline()
    total = int(rate * seconds)
    start = time.perf_counter()
    for i in range(total):
        while (delay := start + i / rate - time.perf_counter()) > 0:
            time.sleep(delay)
        store.set_frame_counters({i % devices: 1 + i // devices})
    store.close()
    print(json.dumps({"frames": total, "seconds": time.perf_counter() - start}), flush=True)


def floor_run(workdir: Path, devices: int, rate: float, seconds: float) -> dict[str, Any]:
    trace = workdir / "floor.strace"
    cmd = [sys.executable, "-m", "bench.bench_disk", "--floor-child", str(workdir / "floor.db"),
           "--devices", str(devices), "--rate", str(rate), "--seconds", str(seconds)]
    child = subprocess.Popen(_traced(cmd, trace), cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    child.stdout.readline()
    pid = _traced_pid(child)
    io_start, trace_start = _io_write_bytes(pid), _size(trace)
    child.stdin.write("go\n")
    child.stdin.flush()
    result = json.loads(child.stdout.readline())
    io_bytes = _io_write_bytes(pid) - io_start
    files = _by_file(trace, trace_start, workdir)
    child.wait(30)
    return {"devices": devices, "rate": rate, **result, "write_bytes": io_bytes, "files": files}


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_disk", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", default="20,10000", help="comma-separated device counts (default: 20,10000)")
    p.add_argument("--rate", type=float, default=17.0, help="frames/s (default: 17, one SF7 channel)")
    p.add_argument("--seconds", type=float, default=180.0,
                   help="measured seconds per run (default: 180, three detector flushes and history intervals)")
    p.add_argument("--cpu", help="comma-separated rates: measure CPU a frame at each, with the first device count "
                   "(0: the daemon idle)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--floor-child", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    counts = [int(x) for x in args.devices.split(",")]
    if args.floor_child:
        floor_child(args.floor_child, counts[0], args.rate, args.seconds)
        return 0
    if not Path(f"/proc/{os.getpid()}/io").exists():
        p.error("needs /proc/PID/io (Linux)")
    if shutil.which("strace") is None:
        print("strace not found: totals only, no figures by file", flush=True)
    results: dict[str, Any] = {"disk": [], "cpu": []}
    top = Path(tempfile.mkdtemp(prefix="bench-disk-"))
    broker = Broker(top)
    try:
        for count in counts if not args.cpu else []:
            workdir = top / f"d{count}"
            workdir.mkdir()
            devices_file = make_devices(workdir, count)
            floor = floor_run(workdir, count, args.rate, args.seconds)
            ours = gateway_run(workdir, broker, devices_file, args.rate, args.seconds)
            results["disk"].append({"gateway": ours, "floor": floor})
            shutil.rmtree((workdir / "run").resolve(), ignore_errors=True)
        for i, rate in enumerate([float(x) for x in args.cpu.split(",")] if args.cpu else []):
            workdir = top / f"cpu{i}-{rate:g}"  # a rate may be given twice, to see the runs' spread
            workdir.mkdir()
            results["cpu"].append(gateway_run(workdir, broker, make_devices(workdir, counts[0]), rate, args.seconds,
                                              traced=False))
            shutil.rmtree((workdir / "run").resolve(), ignore_errors=True)
    finally:
        broker.stop()
        shutil.rmtree(top, ignore_errors=True)

    def per_frame(b: float, r: dict[str, Any]) -> str:
        return f"{b / r['frames']:,.0f}"

    def per_day(b: float, r: dict[str, Any]) -> str:
        return f"{b / r['seconds'] * DAY_S / 1e9:.2f}"

    for result in results["disk"]:
        ours, floor = result["gateway"], result["floor"]
        rows = [[f"daemon: {name}", per_frame(b, ours), per_day(b, ours)]
                for name, b in sorted(ours["files"].items(), key=lambda kv: -kv[1])]
        rows += [[f"floor: {name}", per_frame(b, floor), per_day(b, floor)] for name, b in floor["files"].items()]
        above = ours["write_bytes"] / ours["frames"] - floor["write_bytes"] / floor["frames"]
        rows += [["daemon: all files, /proc write_bytes", per_frame(ours["write_bytes"], ours),
                  per_day(ours["write_bytes"], ours)],
                 ["floor: frame counters only, /proc write_bytes", per_frame(floor["write_bytes"], floor),
                  per_day(floor["write_bytes"], floor)],
                 ["daemon above the floor, /proc write_bytes", f"{above:,.0f}",
                  f"{above * ours['rate'] * DAY_S / 1e9:.2f}"]]
        table(f"Disk writes, {ours['devices']:,} devices at {ours['rate']:g} frames/s "
              f"({ours['frames']:,} frames in {ours['seconds']:.0f} s; the daemon's peak RSS {ours['peak_rss_mb']:.0f} MB)",
              ["file", "bytes a frame", "GB a day"], rows)
    if results["cpu"]:
        table(f"CPU of the daemon at radio rates, {counts[0]:,} devices (all threads, utime + stime)",
              ["frames/s", "frames", "CPU s", "CPU us a frame", "share of one core"],
              [[f"{r['rate']:g}", f"{r['frames']:,}", f"{r['cpu_s']:.2f}",
                f"{r['cpu_s'] / r['frames'] * 1e6:,.0f}" if r["frames"] else "-",
                f"{r['cpu_s'] / r['seconds']:.2%}"] for r in results["cpu"]])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0

if __name__ == "__main__":
    sys.exit(main())
