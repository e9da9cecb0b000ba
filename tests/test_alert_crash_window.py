"""A kill -9 at any instant of committing an alert loses no alert: the real gateway dies (os._exit)
inside the commit, restarts, and the dashboard still gets the raise before its clear."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_sim.modules import EMULATORS
from firmware_sim.pty_link import PtyModule

from .conftest import GatewayProcess
from .test_alerts_end_to_end import alerts, make_node, setup, stream

CRASH_AT = Path(__file__).with_name("crash_at.py")


class CrashingGateway(GatewayProcess):
    def __init__(self, config: Path, point: str) -> None:
        super().__init__(config)
        self.point = point

    def start(self, env: dict[str, str] | None = None) -> CrashingGateway:
        self.proc = subprocess.Popen([sys.executable, str(CRASH_AT), self.point, "run", "--config", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=self.log.open("a"), text=True)
        return self


@pytest.mark.parametrize("point", ["publish_alert", "flush_after_alert"])
def test_a_crash_while_committing_a_raise_never_loses_it(
    tmp_path: Path, broker, recorder_factory, gateways, devices_file, point: str
) -> None:
    recorder = recorder_factory(broker.port, ["lora-gateway/#"], session="dashboard")
    node = make_node(devices_file)
    with PtyModule(EMULATORS["rylr"]()) as module:
        config = setup(tmp_path, broker, devices_file, module)
        crashing = CrashingGateway(config, point)
        try:
            crashing.start()
            recorder.wait_for(lambda m: any(t == "lora-gateway/bridge/state" and b"online" in p for t, p, _ in m))
            stream(module, node, 0, 700)  # into the fault (readings 600-699): the raise is being committed
            assert crashing.proc is not None
            assert crashing.proc.wait(timeout=60) == 137, crashing.output()
        finally:
            if crashing.proc is not None and crashing.proc.poll() is None:
                crashing.proc.kill()
        gateway = gateways(config).start()
        recorder.wait_for(lambda m: sum(t == "lora-gateway/bridge/state" and b"online" in p for t, p, _ in m) >= 2)
        # On past the fault's end, and through the next fault if the state of the first was lost with the crash.
        stream(module, node, 700, 1800)
        recorder.wait_for(lambda m: "cleared" in [a["state"] for a in alerts(m)], timeout=120)
        assert gateway.stop() == 0
    states = [a["state"] for a in alerts(recorder.messages)]
    assert states[0] == "raised", (states, gateway.output()[-3000:])
    cleared = next(a for a in alerts(recorder.messages) if a["state"] == "cleared")
    assert cleared["id"] in {a["id"] for a in alerts(recorder.messages) if a["state"] == "raised"}
