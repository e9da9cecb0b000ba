"""The daemon: wires serial link, pipeline, detector and MQTT publisher together, and nothing else.

Over 400 lines: it wires every stage for both inputs (serial, ChirpStack), reload and the
storage-fault paths; the work itself lives in the stages.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from gateway import __version__
from gateway.config import ConfigError, GatewayConfig
from gateway.detect.alerts import AlertTransition
from gateway.detect.detector import Detector
from gateway.detect.model_store import active_bundle, default_model_root, packaged_default_bundle, verify_bundle
from gateway.detect.scoring import BundleError, OnnxScorer
from gateway.publish.availability import AvailabilityTracker
from gateway.publish.discovery import Discovery
from gateway.publish.mqtt import MqttPublisher
from gateway.publish.outbox import Outbox
from gateway.publish.telemetry import telemetry_payload
from gateway.radio.dialects import DIALECTS
from gateway.radio.serial_link import ModuleError, SerialLink, SerialLost
from gateway.records import Reading, Rejected
from gateway.service.health import BrokerHealth, DeviceTable, HealthReporter, HealthSnapshot, ModuleHealth, health_path
from gateway.service.history import History, HistoryEntry
from gateway.service.sd_notify import Notifier
from gateway.service.state import StateStore
from gateway.service.storage import WRITE_ERRORS, DropLedger, GuardedCounters, StorageFaults
from gateway.uplink.channel_limit import ChannelLimit, ChannelSets
from gateway.uplink.chirpstack import ChirpStackInput
from gateway.uplink.devices import load_devices, session_keys, telemetry_qos_overrides
from gateway.uplink.lorawan import UplinkDecoder
from gateway.uplink.pipeline import Pipeline
from gateway.uplink.rejections import RejectionCounter

if TYPE_CHECKING:
    from gateway.service.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass
class _Clock:
    """When an input loop last did its periodic work (monotonic seconds)."""

    last_tick: float = field(default_factory=time.monotonic)
    last_flush: float = field(default_factory=time.monotonic)

_HOUSEKEEPING_S = 0.5
# The detector's state a minute at a time, besides with every alert: each dirty channel's whole
# record, several KB, is the SD card's largest write after the frame counters.
_STATE_FLUSH_S = 60.0
_RECONNECT_MAX_S = 1.0  # a replugged module is heard again within about a second


class Daemon:
    def __init__(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg
        # ChirpStack holds the keys and checks the frames itself: no devices file then.
        devices = load_devices(cfg.devices_file) if cfg.input == "serial" else {}
        self.model_root = cfg.model_root or default_model_root()
        scorer, self._model_refused = self._start_scorer()
        self.store = StateStore(cfg.state_path)
        # A full disk is survived: writes that fail are reported (storage_failing) and retried.
        self.storage = StorageFaults(cfg.state_path, lambda event: self.publisher.publish_event(event))
        self.detector = Detector(scorer, cfg.detector, self.store)
        dialect = DIALECTS[cfg.serial.dialect]()
        self.link = SerialLink(cfg.serial, dialect)
        self.pipeline = Pipeline(
            dialect,
            UplinkDecoder(session_keys(devices), GuardedCounters(self.store, self.storage)),
            RejectionCounter(cfg.log.rejection_log_interval_s),
        )
        self.notifier = Notifier()
        self.info: dict[str, Any] = {
            "version": __version__,
            "gateway_id": cfg.gateway_id,
            "dialect": cfg.serial.dialect,
            "device_count": len(devices),
            "model": self._model_info(scorer),
        }
        self.discovery = Discovery(cfg.gateway_id, cfg.mqtt.base_topic, cfg.mqtt.discovery_prefix, __version__)
        self._channels: dict[str, frozenset[str]] = {}  # device -> channels announced to Home Assistant
        self.channel_sets = ChannelSets()
        self.channel_limit = ChannelLimit(cfg.max_channels_per_device, self.detector.known_channels(), self.channel_sets)
        self.publisher = MqttPublisher(
            cfg.mqtt, cfg.gateway_id, self.info, Outbox(cfg.state_path, cfg.mqtt.outbox_cap), cfg.mqtt.telemetry_queue,
            announcements=self._discovery_configs,
            device_qos=telemetry_qos_overrides(devices),
        )
        self.drop_ledger = DropLedger(self.store, self.storage)
        if unreported := self.drop_ledger.unreported():
            log.warning("the last run dropped %d telemetry message(s) it did not report: reporting them now",
                        unreported)
            self.publisher.restore_drops(unreported)
        self.availability = AvailabilityTracker({name: entry.period_s for name, entry in devices.items()})
        self.devices_seen = DeviceTable()
        self.history = History(cfg.state_path, cfg.history.retention_days * 86400, cfg.history.interval_s)
        self._started_at = time.time()
        self.health = HealthReporter(health_path(cfg.state_path, cfg.runtime_dir), self._health_snapshot)
        self.metrics: Metrics | None = None
        if cfg.metrics.port is not None:
            from gateway.service.metrics import Metrics  # prometheus-client is imported only when metrics are on

            self.metrics = Metrics(self._health_snapshot)
        self.chirpstack: ChirpStackInput | None = None
        if cfg.input == "chirpstack":
            c = cfg.chirpstack
            self.chirpstack = ChirpStackInput(c.host, c.port, topic=c.topic, client_id=c.client_id,
                                              username=c.username, password=c.password)
        self._stop = threading.Event()
        self._reload = threading.Event()

    def _start_scorer(self) -> tuple[OnnxScorer, str | None]:
        """The model to start with, and why the active bundle was refused if it was.

        An active bundle that fails its checks at start gives way to the packaged default model
        (the one that runs when nothing is active), so that alerts keep coming: an error line
        now, a bridge/event once the broker is there, and `check-config` says the same.
        """
        try:
            return self._load_scorer(), None
        except BundleError as e:
            default = packaged_default_bundle()
            log.error("active model refused: %s; running the packaged default model from %s instead", e, default)
            return self._load_scorer(default), str(e)

    def _load_scorer(self, bundle: Path | None = None) -> OnnxScorer:
        bundle = bundle or active_bundle(self.model_root) or packaged_default_bundle()
        scorer = OnnxScorer(bundle)
        log.info("model %s from %s", scorer.label, bundle)
        return scorer

    @staticmethod
    def _model_info(scorer: OnnxScorer) -> dict[str, str]:
        return {"name": scorer.name, "version": scorer.version, "sha256": scorer.sha256}

    def request_stop(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        self._stop.set()

    def request_reload(self, signum: int | None = None, frame: FrameType | None = None) -> None:
        self._reload.set()

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT. A module that fails its first set-up is an error (exit 1)."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_reload)
        if self.chirpstack is None:
            self.link.open()  # ModuleError propagates: wrong port, baud or dialect is for the user to fix
            log.info("%s ready", self.link.describe())
        else:
            self.chirpstack.start()
        self.publisher.start()  # the bridge's discovery goes with every connect (_discovery_configs)
        if self._model_refused is not None:  # logged at start; the event waits for the broker
            self.publisher.publish_event({"type": "model_refused", "detail": self._model_refused, "time": time.time(),
                                          "fallback": self.detector.model_label})
        self.health.start()
        if self.metrics is not None:
            self.metrics.serve(self.cfg.metrics.port or 0, self.cfg.metrics.address)
        # What exists now (modules, model, configuration, device keys) lives as long as the daemon:
        # frozen out of the cyclic collector's way, whose full passes over it stalled the loop
        # 30-50 ms at a time; about 2 ms after the freeze.
        gc.collect()
        gc.freeze()
        self.notifier.ready(self._status())  # ready without the broker: alerts wait in the outbox
        try:
            if self.chirpstack is not None:
                self._serve_chirpstack(self.chirpstack)
            while self.chirpstack is None and not self._stop.is_set():
                try:
                    self._serve_link()
                except SerialLost as e:
                    self._event({"type": "serial_lost", "detail": str(e), "time": time.time()})
                    self._reconnect()
        finally:
            self.notifier.stopping()
            self.link.close()
            if self.chirpstack is not None:
                self.chirpstack.stop()
            self.storage.attempt("detector state", self.detector.flush)
            self.publisher.stop()
            self.drop_ledger.save(self.publisher.drops)
            self.health.stop()
            if self.metrics is not None:
                self.metrics.stop()
            self.publisher.outbox.close()
            self.storage.attempt("history", self.history.close)
            self.store.close()
            log.info("stopped")
        return 0

    def _discovery_configs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Home Assistant discovery of the bridge and of every device heard, for each (re)connect."""
        yield from self.discovery.bridge()
        for device, channels in list(self._channels.items()):
            yield from self.discovery.device(device, channels)

    def _status(self) -> str:
        rejected = sum(self.pipeline.rejections.counts.values())
        broker = "connected" if self.publisher.connected.is_set() else "broker away"
        return (
            f"{self.pipeline.frames_accepted} frames, {rejected} rejected, {broker}, "
            f"outbox {len(self.publisher.outbox)}, model {self.detector.model_label}"
        )

    def _health_snapshot(self) -> HealthSnapshot:
        """Called from the health and metrics threads: reads counters, changes nothing."""
        return HealthSnapshot(
            pid=os.getpid(),
            started_at=self._started_at,
            written_at=time.time(),
            module=self._module_health(),
            broker=BrokerHealth(self.cfg.mqtt.host, self.cfg.mqtt.port, self.publisher.connected.is_set(),
                                self.publisher.failures.cause),
            model=self.detector.model_label,
            devices=self.devices_seen.rows(),
            rejected=dict(self.pipeline.rejections.counts),
            frames_accepted=self.pipeline.frames_accepted,
            outbox_depth=len(self.publisher.outbox),
            telemetry_dropped=self.publisher.telemetry_dropped,
            telemetry_lost=self.publisher.telemetry_lost,
        )

    def _module_health(self) -> ModuleHealth:
        if self.chirpstack is None:
            return ModuleHealth(self.cfg.serial.port, self.cfg.serial.dialect, self.link.is_open)
        c = self.cfg.chirpstack
        return ModuleHealth(f"mqtt://{c.host}:{c.port}/{c.topic}", "chirpstack", self.chirpstack.subscribed.is_set())

    def _serve_chirpstack(self, source: ChirpStackInput) -> None:
        """The serial loop's twin for ChirpStack uplinks: they arrive authenticated and decoded."""
        clock = _Clock()
        for batch in source.batches():
            if self._stop.is_set():
                return
            self.publisher.service()
            now = time.time()
            read_at = time.perf_counter()
            readings = [r for r in batch if isinstance(r, Reading)]
            for rejection in batch:
                if isinstance(rejection, Rejected):
                    event = self.pipeline.rejections.record(rejection, now, "chirpstack")
                    if event is not None:
                        self.publisher.publish_event(event)
            if readings:
                self.pipeline.frames_accepted += len(readings)
                with self.publisher.batch():
                    self._publish(readings, read_at)
            self._housekeeping(clock, now)

    def _serve_link(self) -> None:
        clock = _Clock()
        for batch in self.link.lines():
            if self._stop.is_set():
                return
            self.publisher.service()
            now = time.time()
            if batch:
                self.handle_lines(batch, now)
            if self._housekeeping(clock, now):
                for command in self.link.dialect.on_idle(now):
                    self.link.write(command)

    def handle_lines(self, batch: list[bytes | Rejected], now: float) -> None:
        """One batch of lines from the module, decoded, scored and published (bench/ times this)."""
        read_at = time.perf_counter()
        out = self.pipeline.process(batch, now)
        for command in out.commands:
            self.link.write(command)
        for event in out.events:
            self.publisher.publish_event(event)
        if out.readings:
            with self.publisher.batch():  # one wake-up of paho's thread for the batch
                self._publish(out.readings, read_at)

    def _housekeeping(self, clock: _Clock, now: float) -> bool:
        """Periodic work of either input loop; True when the half-second tick ran."""
        mono = time.monotonic()
        if mono - clock.last_flush > _STATE_FLUSH_S:
            clock.last_flush = mono
            self.storage.attempt("detector state", lambda: self.detector.flush(complete=False))
        if mono - clock.last_tick <= _HOUSEKEEPING_S:
            return False
        # The watchdog ping comes from the processing loop, so a hung pipeline stops it and systemd restarts us.
        clock.last_tick = mono
        self.storage.attempt("history", lambda: self.history.write_due(now))
        self.drop_ledger.save(self.publisher.drops)
        self.notifier.watchdog()
        self.notifier.status(self._status())
        for device in self.availability.gone_silent(now):
            self.publisher.publish_availability(device, False)
        if self._reload.is_set():
            self._reload.clear()
            self._reload_model()
            if self.chirpstack is None:
                self._reload_devices()
        return True

    def _publish(self, readings: list[Reading], read_at: float) -> None:
        readings, cut = self.channel_limit.apply_all(readings)
        for rejection, when in cut:
            if (event := self.pipeline.rejections.record(rejection, when, "channels")) is not None:
                self.publisher.publish_event(event)
        results = self.detector.observe(readings)
        transitions = [r.transition for r in results if r.transition is not None]
        self._commit_alerts(transitions)
        history: list[HistoryEntry] = []
        for reading, result in zip(readings, results, strict=True):
            known = self._channels.get(reading.device)
            if known is None:
                self._channels[reading.device] = self.channel_sets.get(reading.values)
                self.publisher.publish_discovery(self.discovery.device(reading.device, reading.values))
            elif not known.issuperset(reading.values):  # announce only the channels Home Assistant lacks
                new = frozenset(reading.values) - known
                self._channels[reading.device] = self.channel_sets.get(known | new)
                self.publisher.publish_discovery(self.discovery.channels(reading.device, new))
            if self.availability.seen(reading.device, reading.time):
                self.publisher.publish_availability(reading.device, True)
            warming = {name: int(100 * done) for name, done in self.detector.warming_up(reading.device).items()}
            payload = telemetry_payload(reading, result.alert_state, result.score, result.likelihood, warming)
            self.publisher.publish_state(reading.device, payload)
            history.append((reading.device, reading.time, payload, result.score, result.alert_state))
            self.devices_seen.saw(reading, result.alert_state, result.score, warming)
            if self.metrics is not None:
                self.metrics.latency.observe(time.perf_counter() - read_at)
                self.metrics.scores.observe(result.score)
        self.storage.attempt("history", lambda: self.history.append(history))

    def _commit_alerts(self, transitions: list[AlertTransition]) -> None:
        """Alerts into the outbox first (synchronous=FULL), then the alert state that made them
        (NORMAL): a kill -9 or a power cut in between can only deliver an alert twice, never lose it.
        The other order lost a raise for good: the state said raised, the outbox had nothing."""
        for transition in transitions:
            try:
                dropped = self.publisher.publish_alert(transition.device, transition.to_payload())
            except WRITE_ERRORS as e:
                self._publish_undurable(transition, e)
                continue
            if self.metrics is not None:
                self.metrics.alert(transition.state)
            log.warning("alert %s %s committed: %s %s", transition.id, transition.state, transition.device,
                        transition.channels)
            if dropped:
                self._event({"type": "alerts_dropped", "count": dropped, "time": time.time(),
                             "detail": f"outbox cap {self.publisher.outbox.cap} reached"})
        if transitions:
            self.storage.attempt("detector state", self.detector.flush)

    def _publish_undurable(self, transition: AlertTransition, error: BaseException) -> None:
        """The outbox cannot commit (a full disk): publish at once, QoS 1, and say it is not durable."""
        self.storage.failed("an alert", error)
        self.publisher.publish_alert_undurable(transition.device, transition.to_payload())
        log.error("alert %s %s published without the outbox (%s): %s %s", transition.id, transition.state, error,
                  transition.device, transition.channels)
        self.publisher.publish_event({"type": "alert_not_durable", "id": transition.id, "device": transition.device,
                                      "state": transition.state, "detail": f"outbox: {error}", "time": time.time()})

    def _reload_model(self) -> None:
        """SIGHUP: load the active bundle; a bundle that fails its checks never replaces the running one."""
        try:
            bundle = active_bundle(self.model_root) or packaged_default_bundle()
            # This gateway's parity floor, as at install: a bundle activated with a lower one stays out.
            verify_bundle(bundle, min_agreement=self.cfg.model.min_agreement)
            scorer = self._load_scorer(bundle)
            self.detector.replace_scorer(scorer)
        except (BundleError, ValueError) as e:
            self._event({"type": "model_reload_failed", "detail": str(e), "time": time.time()})
            return
        self.info["model"] = self._model_info(scorer)
        self.publisher.publish_info(self.info)
        self._event({"type": "model_reloaded", "detail": scorer.label, "time": time.time()}, logging.INFO)

    def _reload_devices(self) -> None:
        """SIGHUP: the devices file and the frame counters afresh (after `device add`, `reset-counter`,
        `set-counter`); a devices file that does not load leaves the running set as it is."""
        try:
            devices = load_devices(self.cfg.devices_file)
        except ConfigError as e:
            self._event({"type": "devices_reload_failed", "detail": str(e), "time": time.time()})
            return
        self.pipeline.decoder.reload(session_keys(devices))
        self.publisher.set_device_qos(telemetry_qos_overrides(devices))
        self.availability.configured = {name: entry.period_s for name, entry in devices.items()}
        self.info["device_count"] = len(devices)
        self.publisher.publish_info(self.info)
        self._event({"type": "devices_reloaded", "detail": f"{len(devices)} devices", "time": time.time()})

    def _reconnect(self) -> None:
        # Waiting for the port is not a hang: keep the watchdog fed between tries.
        longest = min(_RECONNECT_MAX_S, self.notifier.watchdog_interval_s or _RECONNECT_MAX_S)
        delay = 0.5
        while not self._stop.wait(delay):
            self.notifier.watchdog()
            self.publisher.service()
            try:
                self.link.open()
            except ModuleError as e:
                log.warning("serial still away: %s; retrying in %.1f s", e, delay)
                delay = min(delay * 2, longest)
                continue
            # Good news, at INFO: the WARNING was the loss.
            self._event({"type": "serial_back", "detail": self.link.describe(), "time": time.time()}, logging.INFO)
            return

    def _event(self, event: dict[str, Any], level: int = logging.WARNING) -> None:
        log.log(level, "%s: %s", event["type"], event.get("detail", ""))
        self.publisher.publish_event(event)
