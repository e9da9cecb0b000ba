"""MQTT side of the gateway: bridge state with last will, info, per-device state, events, alerts.

Alerts go through the outbox (committed before publishing, deleted once acknowledged).
Telemetry waits in a bounded queue while the broker is away, oldest dropped first and
counted. After every (re)connect the bridge state, info, each device's last state and the
waiting messages are published again.

Only the daemon's thread publishes (`service()` does the reconnect work): paho calls its
callbacks with its own locks held, so a callback that waited for ours could deadlock.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections import deque
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.config import MqttConfig
from gateway.outbox import Outbox, OutboxMessage
from gateway.telemetry import to_json

log = logging.getLogger(__name__)


ONLINE = to_json({"state": "online"})
OFFLINE = to_json({"state": "offline"})


class MqttPublisher:
    """Owns the paho client; paho's network loop runs in its own thread, publishing in the caller's."""

    def __init__(
        self, cfg: MqttConfig, gateway_id: str, info: dict[str, Any], outbox: Outbox, telemetry_queue: int = 10_000
    ) -> None:
        self.cfg = cfg
        self.base = cfg.base_topic
        self._info = info
        self.outbox = outbox
        self.connected = threading.Event()  # set once the session is re-established by service()
        self._session_up = threading.Event()  # set by paho's thread, cleared on disconnect
        self._telemetry: deque[tuple[str, str, int, bool]] = deque()
        self._telemetry_cap = telemetry_queue
        self.telemetry_dropped = 0
        self._dropped_unreported = 0
        self._last_state: dict[str, str] = {}  # topic -> payload, republished on reconnect
        self._inflight: dict[int, mqtt.MQTTMessageInfo] = {}  # outbox id -> paho's handle
        self._last_sent: mqtt.MQTTMessageInfo | None = None  # see drain()
        protocol = MQTTProtocolVersion.MQTTv5 if cfg.protocol == "5" else MQTTProtocolVersion.MQTTv311
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id or f"lora-gateway-{gateway_id}",
            protocol=protocol,
        )
        self.client.will_set(self.topic("bridge/state"), OFFLINE, qos=1, retain=True)
        if cfg.username is not None:
            self.client.username_pw_set(cfg.username, cfg.password)
        if cfg.tls is not None:
            self.client.tls_set(
                ca_certs=str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
                certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
            self.client.tls_insecure_set(cfg.tls.insecure)
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        if protocol == MQTTProtocolVersion.MQTTv311:
            # No client-side window: with paho's default of 20, each acknowledgement walks the waiting
            # messages to release the next (about a tenth of paho's time per message). An MQTT 5 broker
            # may disconnect a client that exceeds its Receive Maximum, which paho cannot adopt once
            # connected: there paho's 20 stays (mosquitto and EMQX allow 20 or more).
            self.client.max_inflight_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    def topic(self, suffix: str) -> str:
        return f"{self.base}/{suffix}"

    def start(self) -> None:
        """Connect in the background; paho retries with backoff until the broker is there."""
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.error("broker %s:%d refused the connection: %s", self.cfg.host, self.cfg.port, reason)
            return
        log.info("connected to broker %s:%d", self.cfg.host, self.cfg.port)
        self._session_up.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._session_up.clear()
        if reason.is_failure:
            log.warning("lost the broker %s:%d (%s); reconnecting", self.cfg.host, self.cfg.port, reason)

    def service(self) -> None:
        """Call often from the publishing thread: catches up after a (re)connect, retires acknowledged alerts."""
        for message_id, info in list(self._inflight.items()):
            if info.is_published():
                del self._inflight[message_id]
                self.outbox.remove(message_id)
        if not self._session_up.is_set():
            self.connected.clear()
            return
        if self.connected.is_set():
            return
        publish = self._send
        publish(self.topic("bridge/state"), ONLINE, qos=1, retain=True)
        publish(self.topic("bridge/info"), to_json(self._info), qos=1, retain=True)
        for topic, payload in self._last_state.items():
            publish(topic, payload, qos=1, retain=True)
        while self._telemetry:
            publish(*self._telemetry.popleft())
        if self._dropped_unreported:
            publish(self.topic("bridge/event"), to_json({
                "type": "telemetry_dropped", "count": self._dropped_unreported, "total": self.telemetry_dropped,
                "detail": f"queue of {self._telemetry_cap} full while the broker was away"}))
            self._dropped_unreported = 0
        # Alerts paho still holds in flight are resent by paho itself.
        for message in self.outbox.pending(limit=self.outbox.cap):
            if message.id not in self._inflight:
                self._send_outbox(message)
        self.connected.set()

    def _send_outbox(self, message: OutboxMessage) -> None:
        self._inflight[message.id] = self._send(message.topic, message.payload, message.qos, message.retain)

    def _send(self, topic: str, payload: str | bytes, qos: int = 0, retain: bool = False) -> mqtt.MQTTMessageInfo:
        self._last_sent = info = self.client.publish(topic, payload, qos=qos, retain=retain)
        return info

    def drain(self, timeout_s: float) -> bool:
        """Wait until the broker has acknowledged every message so far; False on timeout or while it is away.

        Waiting for the last one is enough: a broker acknowledges QoS 1 messages in the order it
        received them (MQTT 3.1.1, 4.6), and paho sends in the order of the publish calls.
        """
        if self._telemetry:
            return False  # queued while the broker is away: nothing to wait for before it is back
        info = self._last_sent
        if info is None:
            return True
        try:
            info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError):  # paho: not connected, or the message was refused
            return False
        return info.is_published()

    def _publish_or_queue(self, topic: str, payload: str, qos: int, retain: bool) -> None:
        if self.connected.is_set():
            self._send(topic, payload, qos, retain)
            return
        if len(self._telemetry) >= self._telemetry_cap:
            self._telemetry.popleft()
            self.telemetry_dropped += 1
            self._dropped_unreported += 1
        self._telemetry.append((topic, payload, qos, retain))

    def publish_alert(self, device: str, alert: dict[str, Any]) -> int:
        """Commit to the outbox, then publish; returns how many old alerts the cap pushed out."""
        message, dropped = self.outbox.add(self.topic(f"{device}/alert"), to_json(alert).encode(), qos=1)
        if dropped:
            log.error("alert outbox full (%d): dropped the %d oldest alert(s)", self.outbox.cap, dropped)
        if self.connected.is_set():
            self._send_outbox(message)
        return dropped

    def publish_info(self, info: dict[str, Any]) -> None:
        """New info (a reloaded model); a reconnect publishes the latest info anyway."""
        self._info = info
        if self.connected.is_set():
            self._send(self.topic("bridge/info"), to_json(info), qos=1, retain=True)

    def publish_state(self, device: str, payload: str) -> None:
        """A device's last reading (gateway.telemetry.telemetry_payload), retained."""
        self._retain(self.topic(device), payload)

    def publish_availability(self, device: str, online: bool) -> None:
        self._retain(self.topic(f"{device}/availability"), "online" if online else "offline")

    def _retain(self, topic: str, payload: str) -> None:
        self._last_state[topic] = payload
        self._publish_or_queue(topic, payload, 1, True)

    def publish_discovery(self, configs: list[tuple[str, dict[str, Any]]]) -> None:
        """Home Assistant discovery configs: retained, and published again after every reconnect."""
        for topic, payload in configs:
            self._retain(topic, to_json(payload))

    def publish_event(self, event: dict[str, Any]) -> None:
        self._publish_or_queue(self.topic("bridge/event"), to_json(event), 0, False)

    def stop(self, timeout_s: float = 3.0) -> None:
        """Say offline ourselves (the will only fires on an unclean loss), then disconnect."""
        if self.connected.is_set():
            self._send(self.topic("bridge/state"), OFFLINE, qos=1, retain=True)
            self.drain(timeout_s)
        self.client.disconnect()
        self.client.loop_stop()
