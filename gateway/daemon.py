"""The daemon: wires serial link, pipeline and MQTT publisher together, and nothing else."""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

from gateway import __version__
from gateway.config import GatewayConfig
from gateway.devices import load_devices, session_keys
from gateway.dialects import DIALECTS
from gateway.lorawan import UplinkDecoder
from gateway.mqtt_publisher import MqttPublisher
from gateway.outbox import Outbox
from gateway.pipeline import Pipeline
from gateway.rejections import RejectionCounter
from gateway.serial_link import ModuleError, SerialLink, SerialLost
from gateway.sd_notify import Notifier
from gateway.state import StateStore

log = logging.getLogger(__name__)

_IDLE_CHECK_S = 0.5
_RECONNECT_MAX_S = 30.0


class Daemon:
    def __init__(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg
        devices = load_devices(cfg.devices_file)
        self.store = StateStore(cfg.state_path)
        dialect = DIALECTS[cfg.serial.dialect]()
        self.link = SerialLink(cfg.serial, dialect)
        self.pipeline = Pipeline(
            dialect,
            UplinkDecoder(session_keys(devices), self.store),
            RejectionCounter(cfg.log.rejection_log_interval_s),
        )
        self.notifier = Notifier()
        self.publisher = MqttPublisher(
            cfg.mqtt,
            cfg.gateway_id,
            {
                "version": __version__,
                "gateway_id": cfg.gateway_id,
                "dialect": cfg.serial.dialect,
                "device_count": len(devices),
                "model": None,
            },
            Outbox(cfg.state_path, cfg.mqtt.outbox_cap),
            cfg.mqtt.telemetry_queue,
        )
        self._seen: set[str] = set()
        self._stop = threading.Event()

    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        self._stop.set()

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT. A module that fails its first set-up is an error (exit 1)."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.link.open()  # ModuleError propagates: wrong port, baud or dialect is for the user to fix
        log.info("%s ready", self.link.describe())
        self.publisher.start()
        self.notifier.ready(self._status())
        try:
            while not self._stop.is_set():
                try:
                    self._serve_link()
                except SerialLost as e:
                    self._event({"type": "serial_lost", "detail": str(e), "time": time.time()})
                    self._reconnect()
        finally:
            self.notifier.stopping()
            self.link.close()
            self.publisher.stop()
            self.publisher.outbox.close()
            self.store.close()
        return 0

    def _status(self) -> str:
        rejected = sum(self.pipeline.rejections.counts.values())
        broker = "connected" if self.publisher.connected.is_set() else "broker away"
        return (
            f"{self.pipeline.frames_accepted} frames, {rejected} rejected, {broker}, "
            f"outbox {len(self.publisher.outbox)}"
        )

    def _serve_link(self) -> None:
        last_idle_check = time.monotonic()
        for batch in self.link.lines():
            if self._stop.is_set():
                return
            now = time.time()
            if batch:
                out = self.pipeline.process(batch, now)
                for command in out.commands:
                    self.link.write(command)
                for event in out.events:
                    self.publisher.publish_event(event)
                for reading in out.readings:
                    if reading.device not in self._seen:
                        self._seen.add(reading.device)
                        self.publisher.publish_availability(reading.device, True)
                    self.publisher.publish_reading(reading)
            if time.monotonic() - last_idle_check > _IDLE_CHECK_S:
                # The watchdog ping comes from this loop, so a hung pipeline stops it and systemd restarts us.
                last_idle_check = time.monotonic()
                self.notifier.watchdog()
                self.notifier.status(self._status())
                for command in self.link.dialect.on_idle(now):
                    self.link.write(command)

    def _reconnect(self) -> None:
        # Waiting for the port is not a hang: keep the watchdog fed between tries.
        longest = min(_RECONNECT_MAX_S, self.notifier.watchdog_interval_s or _RECONNECT_MAX_S)
        delay = 0.5
        while not self._stop.wait(delay):
            self.notifier.watchdog()
            try:
                self.link.open()
            except ModuleError as e:
                log.warning("serial still away: %s; retrying in %.1f s", e, delay)
                delay = min(delay * 2, longest)
                continue
            log.info("%s back", self.link.describe())
            self._event({"type": "serial_back", "detail": self.link.describe(), "time": time.time()})
            return

    def _event(self, event: dict[str, object]) -> None:
        log.warning("%s: %s", event["type"], event.get("detail", ""))
        self.publisher.publish_event(event)
