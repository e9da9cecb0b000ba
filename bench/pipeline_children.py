"""The measured processes of bench_pipeline, one fresh interpreter each (`python -m
bench.pipeline_children KIND ...`): they import only what they measure, so that the peak
RSS they report is theirs, not the benchmark's."""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _recorded_lines(path: str) -> list[bytes]:
    """Line by line: the whole file read and split at once was the children's peak memory (about
    150 MB for 400,000 lines), not the gateway's."""
    with open(path) as f:
        return [bytes.fromhex(line) for line in f]


# ---------------------------------------------------------------- children (one per measurement)

def _daemon(args: argparse.Namespace) -> tuple[Any, list[bytes]]:
    """A Daemon on the bench's broker with no port opened, and the pre-recorded lines."""
    from gateway.config import load_config
    from gateway.daemon import Daemon

    lines = _recorded_lines(args.lines)
    workdir = Path(tempfile.mkdtemp())
    config = workdir / "bench.toml"
    window = f"[detector]\nwindow = {args.window}\n" if args.window else ""
    config.write_text(
        f'devices_file = "{args.devices}"\nstate_path = "{workdir}/state.db"\nmodel_root = "{workdir}/no-models"\n'
        f'[serial]\nport = "{workdir}/no-port"\n[mqtt]\nport = {args.broker}\nbase_topic = "bench"\n'
        f'telemetry_qos = {args.qos}\n{window}'
    )
    return Daemon(load_config(config)), lines


def _connect(publisher: Any) -> None:
    publisher.start()
    while not publisher.connected.is_set():
        publisher.service()
        time.sleep(0.01)
    gc.collect()  # as Daemon.run does before READY=1
    gc.freeze()


def _thread_cpu_s() -> dict[str, float]:
    """CPU seconds of each of this process's threads, by thread id."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir("/proc/self/task"):
        fields = Path(f"/proc/self/task/{tid}/stat").read_text().rpartition(")")[2].split()
        out[tid] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return out


def child_gateway(args: argparse.Namespace) -> dict[str, Any]:
    """The daemon's own batch path, lines pre-recorded instead of read from the port: dialect ->
    LoRaWAN -> LPP -> detector -> MQTT, with the history, availability and Home Assistant
    discovery it keeps; timed until the broker has acknowledged the last message."""
    daemon, lines = _daemon(args)
    publisher = daemon.publisher
    _connect(publisher)
    batch = args.batch
    threads = _thread_cpu_s()
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(lines), batch):
        publisher.service()
        daemon.handle_lines(lines[i:i + batch], time.time())
    if not publisher.drain(120):
        raise RuntimeError("the broker did not acknowledge every message")
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    main = str(threading.get_native_id())
    spent = {tid: t - threads.get(tid, 0.0) for tid, t in _thread_cpu_s().items()}
    accepted = daemon.pipeline.frames_accepted
    publisher.stop()
    return {"frames": accepted, "seconds": elapsed, "fps": accepted / elapsed, "cpu_us": cpu / accepted * 1e6,
            "main_thread_cpu_us": spent.pop(main) / accepted * 1e6,
            "other_threads_cpu_us": sum(spent.values()) / accepted * 1e6,  # paho's network loop
            "rss_mb": peak_rss_mb(), "rejected": sum(daemon.pipeline.rejections.counts.values())}


def _history_entries(pairs: list[tuple[Any, Any]], payloads: list[str]) -> list[tuple[Any, ...]]:
    """The history's rows of (reading, detector output) pairs and their payloads, as the daemon makes them."""
    return [(r.device, r.time, p, o.score, o.alert_state) for (r, o), p in zip(pairs, payloads, strict=True)]


def child_stages(args: argparse.Namespace) -> dict[str, Any]:
    """Where a frame's time goes: the daemon's stages one after another over all the lines, each
    alone (CPU us per frame). Alone they miss what they cost each other when interleaved
    (caches, paho's thread taking turns for the GIL), so they sum to less than the gateway's run."""
    from gateway.publish.telemetry import telemetry_payload

    daemon, lines = _daemon(args)
    batch = args.batch
    stages: dict[str, float] = {}

    def timed(name: str, work: Any) -> Any:
        cpu = time.process_time()
        result = work()
        stages[name] = time.process_time() - cpu
        return result

    now = time.time()
    batches = timed("pipeline", lambda: [daemon.pipeline.process(lines[i:i + batch], now).readings
                                         for i in range(0, len(lines), batch)])
    results = timed("detector", lambda: [daemon.detector.observe(readings) for readings in batches])
    pairs = [(r, o) for readings, outs in zip(batches, results, strict=True) for r, o in zip(readings, outs, strict=True)]
    payloads = timed("payload", lambda: [telemetry_payload(r, o.alert_state, o.score, o.likelihood) for r, o in pairs])
    entries = _history_entries(pairs, payloads)
    # Rows are written every few seconds, and at close: the stage is every append and that last write.
    timed("history", lambda: ([daemon.history.append(entries[i:i + batch]) for i in range(0, len(entries), batch)],
                              daemon.history.close()))
    publisher = daemon.publisher
    _connect(publisher)

    def publish() -> None:
        for i, ((r, _), p) in enumerate(zip(pairs, payloads, strict=True)):
            if i % batch == 0:
                publisher.service()
            publisher.publish_state(r.device, p)
        if not publisher.drain(120):
            raise RuntimeError("the broker did not acknowledge every message")

    timed("mqtt", publish)
    publisher.stop()
    n = len(pairs)
    return {"frames": n, **{name: seconds / n * 1e6 for name, seconds in stages.items()}}


STAGE_ORDER = ("pipeline", "detector", "payload", "history")


def child_work(args: argparse.Namespace) -> dict[str, Any]:
    """The daemon's stages up to `--upto`, batch by batch as the daemon interleaves them, over the
    first `--count` lines, on a clock of 1,000 lines a second; no broker. Run under valgrind by
    bench.bench_instructions, at two lengths: what the second costs more is per frame."""
    import gateway
    from gateway.publish.telemetry import telemetry_payload

    daemon, lines = _daemon(args)
    lines = lines[: args.count]
    depth = STAGE_ORDER.index(args.upto)
    batch = args.batch
    clock = 1.78e9
    for i in range(0, len(lines), batch):
        now = clock + i / 1000
        readings = daemon.pipeline.process(lines[i : i + batch], now).readings
        if depth < 1:
            continue
        outs = daemon.detector.observe(readings)
        if depth < 2:
            continue
        pairs = list(zip(readings, outs, strict=True))
        payloads = [telemetry_payload(r, o.alert_state, o.score, o.likelihood) for r, o in pairs]
        if depth < 3:
            continue
        daemon.history.append(_history_entries(pairs, payloads))
    if depth >= 3:
        daemon.history.close()
    return {"frames": len(lines), "gateway": str(Path(gateway.__file__).resolve().parents[1])}


def child_naive(args: argparse.Namespace) -> dict[str, Any]:
    """What most tutorials write: per packet, parse the line, check the MIC and decrypt with cipher
    objects made for that packet, run the float torch model on the channel's window, publish."""
    import re
    import struct

    import numpy as np
    import paho.mqtt.client as mqtt
    import torch
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.cmac import CMAC
    from paho.mqtt.enums import CallbackAPIVersion

    from gateway.detect.scoring import Normalization
    from gateway.uplink import lpp
    from gateway.uplink.devices import load_devices, session_keys
    from models.weights import load_weights

    torch.set_num_threads(1)
    lines = _recorded_lines(args.lines)
    model = load_weights(ROOT / "models" / "default" / "weights.safetensors").model
    model.eval()
    norm = Normalization()
    window = 32
    keys = {k.dev_addr: k for k in session_keys(load_devices(Path(args.devices)))}
    pattern = re.compile(r"\+RCV=(\d+),(\d+),([0-9A-F]+),(-?\d+),(-?\d+)")
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", args.broker)
    client.loop_start()
    history: dict[str, list[float]] = {}
    start, cpu = time.perf_counter(), time.process_time()
    frames = 0
    for raw in lines:
        m = pattern.fullmatch(raw.decode())
        data = bytes.fromhex(m.group(3))
        dev_addr, _, fcnt = struct.unpack_from("<IBH", data, 1)
        k = keys[dev_addr]
        msg, mic = data[:-4], data[-4:]
        cmac = CMAC(algorithms.AES(k.nwk_skey))
        cmac.update(struct.pack("<BIBIIBB", 0x49, 0, 0, dev_addr, fcnt, 0, len(msg)) + msg)
        if cmac.finalize()[:4] != mic:
            continue
        encrypted = data[9:-4]
        aes = Cipher(algorithms.AES(k.app_skey), modes.ECB()).encryptor()
        stream = b"".join(aes.update(struct.pack("<BIBIIBB", 1, 0, 0, dev_addr, fcnt, 0, i + 1))
                          for i in range((len(encrypted) + 15) // 16))
        values = lpp.decode(bytes(a ^ b for a, b in zip(encrypted, stream)))
        scores = {}
        for name, value in values.items():
            h = history.setdefault(f"{k.name}/{name}", [])
            h.append(value)
            del h[: -(window + norm.history)]
            if len(h) >= window + 8:
                x = norm.apply(np.array(h[:-window]), np.array(h[-window:]))
                with torch.no_grad():
                    scores[name] = float(model(torch.from_numpy(x[None, :].astype(np.float32)))[0])
        payload = {"values": values, "rssi": float(m.group(4)), "snr": float(m.group(5)), "scores": scores}
        last = client.publish(f"naive/{k.name}", json.dumps(payload), qos=1, retain=True)
        frames += 1
    last.wait_for_publish(120)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    client.loop_stop()
    return {"frames": frames, "seconds": elapsed, "fps": frames / elapsed, "cpu_us": cpu / frames * 1e6,
            "rss_mb": peak_rss_mb()}


def child_runtime(args: argparse.Namespace) -> dict[str, Any]:
    """The memory floor: a process that only imports what the daemon must (numpy, onnxruntime,
    pydantic, cryptography, paho-mqtt, pyserial, orjson, sqlite3) and opens the default model."""
    import sqlite3  # noqa: F401

    import numpy  # noqa: F401
    import onnxruntime  # noqa: F401
    import orjson  # noqa: F401
    import paho.mqtt.client  # noqa: F401
    import pydantic  # noqa: F401
    import serial  # noqa: F401
    from cryptography.hazmat.primitives.ciphers import Cipher  # noqa: F401
    from cryptography.hazmat.primitives.cmac import CMAC  # noqa: F401

    imported = peak_rss_mb()
    from gateway.detect.model_store import packaged_default_bundle
    from gateway.detect.scoring import load_session

    load_session(packaged_default_bundle() / "model.onnx")
    return {"imports_mb": imported, "rss_mb": peak_rss_mb()}


def child_paho(args: argparse.Namespace) -> dict[str, Any]:
    """The MQTT floor: paho alone publishing telemetry-sized QoS 1 retained messages, set up as
    the daemon's publisher is (network loop in its thread, no in-flight limit of paho's, Nagle
    off), until the broker acknowledged the last."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    payload = json.dumps({
        "device": "dev-10", "values": {"temperature_1": 21.4, "relative_humidity_2": 50.5}, "rssi": -80.0,
        "snr": 7.0, "fcnt": 123, "time": 1764620000.123456, "anomaly_score": 0.1234,
        "anomaly": {"temperature_1": 0.1234, "relative_humidity_2": 0.0567}, "alert_state": "ok"})
    from gateway.publish.mqtt import no_delay

    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.max_inflight_messages_set(0)  # as the publisher over MQTT 3.1.1
    client.on_socket_open = no_delay
    client.connect("127.0.0.1", args.broker)
    client.loop_start()
    client.publish("paho/ready", "", qos=1).wait_for_publish(10)
    n = args.messages
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        last = client.publish(f"paho/dev-{i % 100}", payload, qos=1, retain=True)
    last.wait_for_publish(120)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    client.loop_stop()
    return {"messages": n, "seconds": elapsed, "us_per_message": elapsed / n * 1e6, "cpu_us": cpu / n * 1e6}


CHILDREN = {"gateway": child_gateway, "stages": child_stages, "naive": child_naive, "runtime": child_runtime,
            "paho": child_paho, "work": child_work}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("kind", choices=sorted(CHILDREN))
    p.add_argument("--lines", help="pre-recorded module lines, hex, one per line")
    p.add_argument("--devices", help="devices file")
    p.add_argument("--broker", type=int, help="port of the mosquitto on 127.0.0.1")
    p.add_argument("--batch", type=int, default=64, help="lines per batch")
    p.add_argument("--window", type=int, default=0, help="detector window (default: the model's)")
    p.add_argument("--qos", type=int, default=0, choices=(0, 1), help="the gateway's telemetry QoS")
    p.add_argument("--messages", type=int, default=40_000, help="messages the paho floor publishes")
    p.add_argument("--count", type=int, default=0, help="lines the work child processes")
    p.add_argument("--upto", default="history", choices=STAGE_ORDER, help="the work child's last stage")
    args = p.parse_args()
    print(json.dumps(CHILDREN[args.kind](args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
