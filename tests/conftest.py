"""Shared fixtures: a real mosquitto on a free loopback port, an MQTT recorder, device files."""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.commands.demo import free_port, wait_listening
from gateway.uplink.devices import add_device

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class Broker:
    """A mosquitto process the test owns, so it can stop and restart it."""

    def __init__(self, workdir: Path, extra_listeners: str = "") -> None:
        """A plain anonymous listener on `port`, and any `extra_listeners` (mosquitto.conf lines)."""
        self.port = free_port()
        self.workdir = workdir
        self.config = workdir / "mosquitto.conf"
        # Persistence keeps subscribers' sessions (and their queued QoS 1 messages) across a restart.
        # `user`: started as root, mosquitto would otherwise drop to a user who cannot read or write here.
        self.config.write_text(
            f"per_listener_settings true\nuser {getpass.getuser()}\n"
            f"persistence true\npersistence_location {workdir}/\n"
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{extra_listeners}"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if not wait_listening(self.port, 10):
            raise RuntimeError(f"mosquitto did not listen on 127.0.0.1:{self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if not Path(MOSQUITTO).exists():
        pytest.fail("mosquitto is not installed: .ci/run installs it (apt-get install -y mosquitto)")
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


class Recorder:
    """Subscribes to topics on the test broker and keeps every message in order."""

    def __init__(self, port: int, topics: list[str], session: str | None = None) -> None:
        """With `session`, a persistent session: QoS 1 messages wait at the broker while it is away."""
        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=session or "", clean_session=session is None
        )
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda c, u, mid, rc, p: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._subscribed.wait(60), "recorder could not subscribe"

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))
            self._cond.notify_all()

    def wait_for(self, predicate, timeout: float = 120.0) -> list[tuple[str, bytes, bool]]:
        """Block until predicate(messages) holds; fail with what arrived otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    got = "\n".join(f"{t} {p[:200]!r}" for t, p, _ in self.messages[-20:])
                    raise AssertionError(f"timed out; last messages:\n{got}")
                self._cond.wait(left)
            return list(self.messages)

    def payloads(self, topic: str) -> list[dict]:
        with self._cond:
            return [json.loads(p) for t, p, _ in self.messages if t == topic]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def recorder_factory() -> Iterator:
    made: list[Recorder] = []

    def make(port: int, topics: list[str], session: str | None = None) -> Recorder:
        r = Recorder(port, topics, session)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


@pytest.fixture
def devices_file(tmp_path: Path) -> Path:
    path = tmp_path / "devices.toml"
    for name in ("pump-house", "cold-room"):
        add_device(path, name)
    return path


def write_config(
    path: Path, *, port: str, dialect: str, mqtt_port: int, devices_file: Path, state_path: Path, extra: str = ""
) -> Path:
    path.write_text(
        f'gateway_id = "test"\ndevices_file = "{devices_file}"\nstate_path = "{state_path}"\n{extra}\n'
        f'[serial]\nport = "{port}"\ndialect = "{dialect}"\nreply_timeout_s = 5\n'
        f'[mqtt]\nport = {mqtt_port}\n'
        f"[log]\nrejection_log_interval_s = 0.01\n"
    )
    return path


def wait_serviced(predicate, publisher, timeout: float = 120.0) -> None:
    """Wait as the daemon's loop does: servicing the MqttPublisher between checks."""
    deadline = time.monotonic() + timeout
    while True:
        publisher.service()
        if predicate():
            return
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# For tests that count every reading at a subscriber: at QoS 0 the broker drops telemetry for a
# subscriber that falls behind (a loaded machine's test process), as it may for any dashboard.
EVERY_READING = {"LORA_GATEWAY_MQTT__TELEMETRY_QOS": "1"}


class GatewayProcess:
    """`lora-gateway run` as a real process, the way systemd starts it."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.proc: subprocess.Popen[str] | None = None
        self.log = config.with_suffix(".log")

    def start(self, env: dict[str, str] | None = None) -> GatewayProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(self.config)],
            stdout=subprocess.DEVNULL, stderr=self.log.open("a"), text=True,
            env=None if env is None else {**os.environ, **env},
        )
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self.proc = None
        return code

    def output(self) -> str:
        return self.log.read_text()

    def wait_for_output(self, predicate, what: str, timeout: float = 120.0) -> str:
        """Block until predicate(log text) holds. The deadline only bounds a hang: a loaded
        machine may take long to start the gateway, and nothing here depends on how long."""
        deadline = time.monotonic() + timeout
        while not predicate(text := self.output()):
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode} before {what}:\n{text[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{text[-2000:]}")
            time.sleep(0.1)
        return text

    def wait_ready(self) -> GatewayProcess:
        """Wait until the module is configured, so that no frame is sent before anyone listens."""
        self.wait_for_output(lambda text: re.search(r" ready$", text, re.M) is not None, "the module's set-up")
        return self


@pytest.fixture
def gateways() -> Iterator:
    made: list[GatewayProcess] = []

    def make(config: Path) -> GatewayProcess:
        g = GatewayProcess(config)
        made.append(g)
        return g

    yield make
    for g in made:
        if g.proc is not None:
            g.proc.kill()
            g.proc.wait()
