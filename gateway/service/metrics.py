"""Optional Prometheus `/metrics` endpoint (off by default; `[metrics] port = 9108`).

Counts the daemon already keeps (frames, rejections by reason, outbox depth, devices) are
read from its health snapshot at scrape time, so the hot path pays nothing for them. Only
what exists nowhere else is recorded as it happens: alerts raised and cleared, pipeline
latency and anomaly scores. Each `Metrics` has its own registry, so several can coexist
(tests, or two gateways in one process).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.service.health import HealthSnapshot

DEFAULT_PORT = 9108
# Line read -> publish call: tens of microseconds normally, milliseconds when the model runs.
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# Anomaly likelihood is in [0, 1]; alert thresholds sit in the upper half.
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


class _SnapshotCollector(Collector):
    """Turns the daemon's health snapshot into metrics on every scrape."""

    def __init__(self, snapshot: Callable[[], HealthSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self._snapshot()
        yield CounterMetricFamily("lora_gateway_frames_accepted", "Uplinks that passed MIC, replay and LPP checks.",
                                  value=s.frames_accepted)
        rejected = CounterMetricFamily("lora_gateway_frames_rejected", "Input rejected, by reason.", labels=["reason"])
        for reason, count in sorted(s.rejected.items()):
            rejected.add_metric([reason], count)
        yield rejected
        yield CounterMetricFamily("lora_gateway_telemetry_dropped",
                                  "Telemetry messages dropped while the broker was away (queue full).",
                                  value=s.telemetry_dropped)
        yield CounterMetricFamily("lora_gateway_telemetry_lost",
                                  "Telemetry sent at QoS 0 that the connection took with it as it went down.",
                                  value=s.telemetry_lost)
        yield GaugeMetricFamily("lora_gateway_outbox_depth", "Alerts on disk waiting for the broker's PUBACK.",
                                value=s.outbox_depth)
        yield GaugeMetricFamily("lora_gateway_devices", "Devices heard since start.", value=len(s.devices))
        yield GaugeMetricFamily("lora_gateway_broker_connected", "1 while connected to the MQTT broker.",
                                value=int(s.broker.connected))
        yield GaugeMetricFamily("lora_gateway_module_connected", "1 while the LoRa module is open and configured.",
                                value=int(s.module.connected))
        last_seen = GaugeMetricFamily("lora_gateway_device_last_seen_timestamp_seconds",
                                      "Unix time of each device's last accepted uplink.", labels=["device"])
        rssi = GaugeMetricFamily("lora_gateway_device_rssi_dbm", "RSSI of each device's last uplink.",
                                 labels=["device"])
        for d in s.devices:
            last_seen.add_metric([d.name], d.last_seen)
            if d.last_rssi is not None:
                rssi.add_metric([d.name], d.last_rssi)
        yield last_seen
        yield rssi


class Metrics:
    """The gateway's metrics; `snapshot` supplies the counts the daemon already keeps."""

    def __init__(self, snapshot: Callable[[], HealthSnapshot]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_SnapshotCollector(snapshot))
        self.alerts = Counter("lora_gateway_alerts", "Alert transitions, by new state.", ["state"],
                              registry=self.registry)
        for state in ("raised", "cleared"):
            self.alerts.labels(state)  # present at 0 from the start, so rate() works on the first alert
        self.latency = Histogram("lora_gateway_pipeline_latency_seconds",
                                 "From the serial line read to the MQTT publish call.",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.scores = Histogram("lora_gateway_anomaly_score", "Anomaly likelihood of each scored reading (0..1).",
                                buckets=SCORE_BUCKETS, registry=self.registry)
        self._server: WSGIServer | None = None

    def alert(self, state: str) -> None:
        self.alerts.labels(state).inc()

    def serve(self, port: int = DEFAULT_PORT, addr: str = "0.0.0.0") -> int:
        """Serve /metrics from a background thread; returns the bound port (useful with port 0)."""
        self._server, _ = start_http_server(port, addr, registry=self.registry)
        return int(self._server.server_port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
