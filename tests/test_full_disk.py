"""A full disk under the state database (a real tmpfs, filled by the test) is survived: one clear error, telemetry
and alerts still published, the daemon recovers by itself when space returns."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_sim.modules import EMULATORS
from firmware_sim.pty_link import PtyModule
from gateway.service.state import StateStore

from .test_alerts_end_to_end import alerts, make_node, setup, stream

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", f"tmpfs-{uuid.uuid4().hex[:8]}", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of the disk; returns the file to delete to give them back."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as e:
                assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def events(messages: list) -> list[dict]:
    return [json.loads(p) for t, p, _ in messages if t == "lora-gateway/bridge/event"]


def test_a_full_disk_is_survived_and_recovered_from(tmp_path: Path, small_disk: Path, broker, recorder_factory,
                                                    gateways, devices_file: Path) -> None:
    recorder = recorder_factory(broker.port, ["lora-gateway/#"])
    node = make_node(devices_file)
    with PtyModule(EMULATORS["rylr"]()) as module:
        config = setup(tmp_path, broker, devices_file, module)
        config.write_text(config.read_text().replace(str(tmp_path / "state.db"), str(small_disk / "state.db")))
        gateway = gateways(config).start().wait_ready()
        stream(module, node, 0, 500)  # warmed up, state written
        recorder.wait_for(lambda m: any(t == "lora-gateway/pump-house" and json.loads(p)["fcnt"] == 499
                                        for t, p, _ in m))
        filler = fill(small_disk)
        stream(module, node, 500, 800)  # through the fault: its alerts cannot be committed
        got = recorder.wait_for(lambda m: any(e["type"] == "alert_not_durable" for e in events(m)), timeout=120)
        failing = [e for e in events(got) if e["type"] == "storage_failing"]
        assert len(failing) == 1 and "database or disk is full" in failing[0]["detail"], events(got)
        undurable = {e["id"] for e in events(got) if e["type"] == "alert_not_durable"}
        # Published all the same, at once, at QoS 1.
        recorder.wait_for(lambda m: undurable <= {a["id"] for a in alerts(m)})
        assert gateway.proc is not None and gateway.proc.poll() is None  # still running

        filler.unlink()  # space returns
        stream(module, node, 800, 1000)
        recorder.wait_for(lambda m: any(e["type"] == "storage_back" for e in events(m)))
        recorder.wait_for(lambda m: any(t == "lora-gateway/pump-house" and json.loads(p)["fcnt"] == 999
                                        for t, p, _ in m))
        assert gateway.stop() == 0
    # Writes went on once space returned: the last frame counter is on disk.
    store = StateStore(small_disk / "state.db")
    assert store.frame_counters() == {node.keys.dev_addr: 999}
    store.close()
    out = gateway.output()
    assert out.count("ERROR gateway.service.storage") == 1, out[-3000:]  # one clear line, not one per write
    assert "database or disk is full" in out and "cannot rollback" not in out
    assert "Traceback" not in out
    states = [json.loads(p)["fcnt"] for t, p, _ in recorder.messages if t == "lora-gateway/pump-house"]
    assert set(range(500, 1000)) <= set(states)  # telemetry went on throughout
