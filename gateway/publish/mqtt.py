"""MQTT side of the gateway: bridge state with last will, info, per-device state, events, alerts.

Alerts go through the outbox (committed before publishing, deleted once acknowledged).
Telemetry goes at `telemetry_qos` (0 by default, 1 per device where asked); retained state on
reconnect, availability, bridge/* and discovery at QoS 1. It waits in a bounded queue while the
broker is away or behind, oldest dropped first and counted: paho holds at most WINDOW messages
unacknowledged (QoS 1) or unwritten (QoS 0), so a hung broker never grows the process. A QoS 0
message that paho drops with a lost connection is counted as lost; one already written to the
socket when the connection died is lost unseen: that is the risk QoS 0 takes.

After every (re)connect: the bridge state and info, then what waited, in the order it came, then
each device's last state and the discovery configs, so that no subscriber sees a device's frame
counter go back.

Only the daemon's thread publishes (`service()` does the reconnect work): paho calls its
callbacks with its own locks held, so a callback that waited for ours could deadlock.
"""

from __future__ import annotations

import itertools
import logging
import socket
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.config import MqttConfig
from gateway.publish.broker_errors import BrokerFailures, describe
from gateway.publish.outbox import Outbox, OutboxMessage
from gateway.publish.telemetry import to_json

log = logging.getLogger(__name__)

# Telemetry, and alerts, that paho holds unacknowledged, at most. Far above what the broker's
# round trip needs (1,000 in flight carry 20,000 messages/s over a 50 ms link), and well below
# paho's 65,535 message ids, past which it refuses messages. Beyond it, telemetry waits in the
# bounded queue, as when the broker is away, and alerts in the outbox.
WINDOW = 1000

RECONNECT_S = 1

ONLINE = to_json({"state": "online"})
OFFLINE = to_json({"state": "offline"})


def _published(info: mqtt.MQTTMessageInfo) -> bool | None:
    """True once the broker has it (QoS 0: once written), False while it is on its way, None when
    paho refused it. A message handed to paho just after its socket went down is refused so, and
    is_published() raises for it ever after, even once paho has sent it on the next connection."""
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return None


def no_delay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """Messages go out as soon as paho writes them. paho leaves Nagle's algorithm on: a small
    write behind one the broker has not yet acknowledged waited for its delayed ACK, about 40 ms
    (a QoS 0 message is never answered), which was the p99 of a batch written at once."""
    with suppress(OSError):  # not a TCP socket (a unix one): nothing to hold back
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class MqttPublisher:
    """Owns the paho client; paho's network loop runs in its own thread, publishing in the caller's."""

    def __init__(
        self,
        cfg: MqttConfig,
        gateway_id: str,
        info: dict[str, Any],
        outbox: Outbox,
        telemetry_queue: int = 10_000,
        announcements: Callable[[], Iterable[tuple[str, dict[str, Any]]]] = lambda: (),
        device_qos: Mapping[str, int] | None = None,
    ) -> None:
        """`announcements`: retained messages made afresh for every (re)connect instead of kept
        (Home Assistant discovery: about 4 KB a device). `device_qos`: telemetry QoS by device,
        where it differs from `cfg.telemetry_qos`."""
        self.cfg = cfg
        self._announcements = announcements
        self.base = cfg.base_topic
        self._info = info
        self.outbox = outbox
        self.connected = threading.Event()  # set once the session is re-established by service()
        self._session_up = threading.Event()  # set by paho's thread, cleared on disconnect
        self._telemetry: deque[tuple[str, str, int, bool]] = deque()
        self._telemetry_cap = telemetry_queue
        self.telemetry_dropped = 0
        self._dropped_unreported = 0
        # Each device's last state and availability, republished on reconnect. By device: keyed by
        # topic they kept two topic strings of about 70 bytes for every device heard.
        self._last_state: dict[str, str] = {}
        self._last_availability: dict[str, str] = {}
        self._inflight: dict[int, mqtt.MQTTMessageInfo] = {}  # outbox id -> paho's handle
        self._last_sent: mqtt.MQTTMessageInfo | None = None  # see drain()
        self._last_qos = 1
        self._telemetry_qos = cfg.telemetry_qos
        self._device_qos = dict(device_qos or {})
        self._unacked: deque[mqtt.MQTTMessageInfo] = deque()  # QoS 1 telemetry not yet acknowledged
        self._unwritten: deque[mqtt.MQTTMessageInfo] = deque()  # QoS 0 messages paho has not yet written
        self.telemetry_lost = 0  # QoS 0 messages paho dropped with the connection
        self._lost_unreported = 0
        self._batching = False
        # What is still to be sent again after a reconnect: (topic, payload). None once all went.
        self._republish: Iterator[tuple[str, str]] | None = None
        self._outbox_after: int | None = None  # alerts after this outbox id still to send; None: all sent
        protocol = MQTTProtocolVersion.MQTTv5 if cfg.protocol == "5" else MQTTProtocolVersion.MQTTv311
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id or f"lora-gateway-{gateway_id}",
            protocol=protocol,
        )
        if protocol == MQTTProtocolVersion.MQTTv311:
            # No limit of paho's own: past its default 20 in flight it held QoS 1 messages back and
            # sent one for each PUBACK from its thread, each after a scan of all it holds. MQTT
            # 3.1.1 sets no such limit, and WINDOW bounds what paho holds. MQTT 5 keeps paho's 20:
            # brokers state a Receive Maximum (mosquitto: 20) that paho does not read.
            self.client.max_inflight_messages_set(0)
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
        # A retry every second at most (mqtt.js, and so Zigbee2MQTT, use 1 s): a broker that comes back
        # has the gateway's telemetry within about a second, not after a backoff of up to 30 s.
        self.client.reconnect_delay_set(min_delay=RECONNECT_S, max_delay=RECONNECT_S)
        self.failures = BrokerFailures(cfg.host, cfg.port)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_socket_open = no_delay

    def topic(self, suffix: str) -> str:
        return f"{self.base}/{suffix}"

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Hand paho the messages published inside with one wake-up of its network thread, at the
        end, instead of one each: each was a syscall and a hand-over of the GIL to paho's thread,
        which cost more than the publish itself (bench/: about 20 us a frame). paho 2.x wakes its
        thread through the socket pair `_sockpairW` (from loop_start() until the client goes);
        without it, publish() only queues, and the thread's next wake-up writes the queue."""
        wake = getattr(self.client, "_sockpairW", None)
        if wake is None or self._batching:
            yield
            return
        self._batching = True
        self.client._sockpairW = None
        try:
            yield
        finally:
            self.client._sockpairW = wake
            self._batching = False
            with suppress(BlockingIOError):  # a wake-up already waits
                wake.send(b"0")

    def start(self) -> None:
        """Connect in the background; paho retries every RECONNECT_S until the broker is there."""
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self.failures.failed(f"refused by the broker: {reason}")
            return
        self.failures.connected()
        log.info("connected to broker %s:%d", self.cfg.host, self.cfg.port)
        self._session_up.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside its `except OSError` around the connect, and passes no exception.
        error = sys.exc_info()[1]
        self.failures.failed(describe(error) if error is not None else "connection failed")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        was_up = self._session_up.is_set()
        self._session_up.clear()
        if reason.is_failure and was_up:  # a refused CONNACK ends in here too: _on_connect said it
            log.warning("lost the broker %s:%d (%s); reconnecting", self.cfg.host, self.cfg.port, reason)

    def service(self) -> None:
        """Call often from the publishing thread: catches up after a (re)connect, hands paho what
        waits as the window allows, retires acknowledged alerts."""
        for message_id, info in list(self._inflight.items()):
            done = _published(info)
            if done is not False:
                del self._inflight[message_id]
                if done:
                    self.outbox.remove(message_id)
                # else it stays in the outbox, and goes again once the broker is back
        self._retire_window()
        if not self._session_up.is_set():
            self.connected.clear()
            return
        if not self.connected.is_set():
            self._send(self.topic("bridge/state"), ONLINE, qos=1, retain=True)
            self._send(self.topic("bridge/info"), to_json(self._info), qos=1, retain=True)
            # Last states after what waits: a topic whose newest state waits goes with the queue.
            waiting = {entry[0] for entry in self._telemetry}
            self._republish = itertools.chain(
                self._last_states(waiting),
                ((topic, to_json(payload)) for topic, payload in self._announcements()),
            )
            self._outbox_after = 0  # every alert in the outbox goes again, oldest first
            self.connected.set()
        while self._outbox_after is not None and len(self._inflight) < WINDOW:
            room = WINDOW - len(self._inflight)
            pending = self.outbox.pending(limit=room, after_id=self._outbox_after)
            for message in pending:
                if message.id not in self._inflight:  # one paho still holds is resent by paho itself
                    self._send_outbox(message)
            self._outbox_after = pending[-1].id if len(pending) == room else None
        queued = self._telemetry
        while queued and self._held() < WINDOW:
            self._send_windowed(*queued.popleft())
        while not queued and self._republish is not None and self._held() < WINDOW:
            item = next(self._republish, None)
            if item is None:
                self._republish = None
                break
            topic, payload = item
            self._unacked.append(self._send(topic, payload, 1, True))
        if not queued:  # said after what was kept of the queue
            self._report_losses()

    def _last_states(self, waiting: set[str]) -> Iterator[tuple[str, str]]:
        """The retained availability and state of each device kept at the reconnect, each with its
        newest payload when it goes, but those whose newest waits in the queue: a device's
        availability, then its state, as the daemon first publishes them."""
        for device in dict.fromkeys([*self._last_availability, *self._last_state]):
            for topic, payload in ((self.topic(f"{device}/availability"), self._last_availability.get(device)),
                                   (self.topic(device), self._last_state.get(device))):
                if payload is not None and topic not in waiting:
                    yield topic, payload

    def _retire_window(self) -> None:
        """Forget what the broker acknowledged (QoS 1, in order: MQTT 3.1.1, 4.6) or paho wrote
        (QoS 0); count the QoS 0 messages paho dropped with the connection."""
        unacked, unwritten = self._unacked, self._unwritten
        while unacked and _published(unacked[0]) is not False:
            unacked.popleft()
        while unwritten and (done := _published(unwritten[0])) is not False:
            unwritten.popleft()
            if done is None:
                self.telemetry_lost += 1
                self._lost_unreported += 1

    def _held(self) -> int:
        return len(self._unacked) + len(self._unwritten)

    def _report_losses(self) -> None:
        if self._dropped_unreported:
            self._send(self.topic("bridge/event"), to_json({
                "type": "telemetry_dropped", "count": self._dropped_unreported, "total": self.telemetry_dropped,
                "detail": f"queue of {self._telemetry_cap} full while the broker was away or behind"}))
            self._dropped_unreported = 0
        if self._lost_unreported:
            self._send(self.topic("bridge/event"), to_json({
                "type": "telemetry_lost", "count": self._lost_unreported, "total": self.telemetry_lost,
                "detail": "sent at QoS 0 as the connection to the broker went down"}))
            self._lost_unreported = 0

    def _send_outbox(self, message: OutboxMessage) -> None:
        self._inflight[message.id] = self._send(message.topic, message.payload, message.qos, message.retain)

    def _send(self, topic: str, payload: str | bytes, qos: int = 0, retain: bool = False) -> mqtt.MQTTMessageInfo:
        self._last_sent = info = self.client.publish(topic, payload, qos=qos, retain=retain)
        self._last_qos = qos
        return info

    def _send_windowed(self, topic: str, payload: str, qos: int, retain: bool) -> None:
        (self._unacked if qos else self._unwritten).append(self._send(topic, payload, qos, retain))

    def drain(self, timeout_s: float) -> bool:
        """Hand paho what waits and wait until the broker has acknowledged everything; False on
        timeout or while the broker is away. Call from the publishing thread.

        Waiting for the last message is enough: paho sends in the order of the publish calls, and a
        broker acknowledges QoS 1 messages in the order it received them (MQTT 3.1.1, 4.6), after
        what came before them on the connection. A last message at QoS 0 is never acknowledged:
        the bridge state goes once more at QoS 1 behind it, as a fence.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            self.service()
            backlog = (self._telemetry or self._republish is not None or self._dropped_unreported
                       or self._lost_unreported or self._outbox_after is not None)
            if not backlog and self._last_qos == 0 and self.connected.is_set():
                self._send(self.topic("bridge/state"), ONLINE, qos=1, retain=True)
            last = None if self._last_sent is None else _published(self._last_sent)
            if not backlog and (self._last_sent is None or last):
                return True
            # A last message paho refused (None) cannot be confirmed any more.
            if not self.connected.is_set() or time.monotonic() >= deadline or (not backlog and last is None):
                return False
            time.sleep(0.001)

    def _publish_or_queue(self, topic: str, payload: str, qos: int, retain: bool) -> None:
        # Straight to paho while the broker keeps up; behind what already waits otherwise, so that
        # order holds and paho (about 1.5 KB a message it holds) never buffers without bound.
        if (self.connected.is_set() and self._held() < WINDOW and not self._telemetry
                and self._republish is None):
            self._send_windowed(topic, payload, qos, retain)
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
        if self.connected.is_set() and self._outbox_after is None:
            if len(self._inflight) < WINDOW:
                self._send_outbox(message)
            else:  # after the ones in flight, in order: service() sends it
                self._outbox_after = message.id - 1
        return dropped

    @property
    def drops(self) -> tuple[int, int]:
        """(telemetry dropped since start, of which not yet reported): for the state database."""
        return self.telemetry_dropped, self._dropped_unreported

    def restore_drops(self, unreported: int) -> None:
        """Drops the last run counted and did not report before it died: reported with the next."""
        self.telemetry_dropped += unreported
        self._dropped_unreported += unreported

    def publish_alert_undurable(self, device: str, alert: dict[str, Any]) -> None:
        """An alert the outbox could not commit (a full disk): QoS 1 at once, kept in memory only."""
        self._publish_or_queue(self.topic(f"{device}/alert"), to_json(alert), 1, False)

    def publish_info(self, info: dict[str, Any]) -> None:
        """New info (a reloaded model); a reconnect publishes the latest info anyway."""
        self._info = info
        if self.connected.is_set():
            self._send(self.topic("bridge/info"), to_json(info), qos=1, retain=True)

    def set_device_qos(self, device_qos: dict[str, int]) -> None:
        """Telemetry QoS by device afresh (SIGHUP re-read the devices file), from the next reading on."""
        self._device_qos = dict(device_qos)

    def publish_state(self, device: str, payload: str) -> None:
        """A device's last reading (gateway.publish.telemetry.telemetry_payload), retained, at the
        device's telemetry QoS; a reconnect republishes the newest at QoS 1."""
        self._last_state[device] = payload
        self._publish_or_queue(self.topic(device), payload, self._device_qos.get(device, self._telemetry_qos), True)

    def publish_availability(self, device: str, online: bool) -> None:
        payload = self._last_availability[device] = "online" if online else "offline"
        self._publish_or_queue(self.topic(f"{device}/availability"), payload, 1, True)

    def publish_discovery(self, configs: list[tuple[str, dict[str, Any]]]) -> None:
        """Home Assistant discovery configs, retained. While the broker is away they are not
        queued: the (re)connect sends `announcements`, which holds them by then (queued as well,
        each went twice)."""
        if not self.connected.is_set():
            return
        for topic, payload in configs:
            self._publish_or_queue(topic, to_json(payload), 1, True)

    def publish_event(self, event: dict[str, Any]) -> None:
        self._publish_or_queue(self.topic("bridge/event"), to_json(event), 0, False)

    def stop(self, timeout_s: float = 3.0) -> None:
        """Send what waits (for half the time at most), say offline ourselves (the will only fires on
        an unclean loss), disconnect."""
        deadline = time.monotonic() + timeout_s
        self.drain(timeout_s / 2)
        if self.connected.is_set():
            offline = self._send(self.topic("bridge/state"), OFFLINE, qos=1, retain=True)
            while _published(offline) is False and time.monotonic() < deadline:
                time.sleep(0.001)
        self.client.disconnect()
        self.client.loop_stop()
