"""The Prometheus endpoint: scraped over real HTTP and parsed with the Prometheus text parser."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from firmware_sim.simulation import Simulation
from gateway.service.health import BrokerHealth, DeviceHealth, HealthSnapshot, ModuleHealth
from gateway.service.metrics import Metrics

from .conftest import free_port, write_config


def snapshot() -> HealthSnapshot:
    return HealthSnapshot(
        pid=1, started_at=1000.0, written_at=1010.0,
        module=ModuleHealth("/dev/ttyUSB0", "rylr", True), broker=BrokerHealth("127.0.0.1", 1883, False),
        model="default@1", devices=[DeviceHealth("pump-house", 1009.0, -71.0), DeviceHealth("cold-room", 1008.0, None)],
        rejected={"bad_mic": 3, "replay": 2}, frames_accepted=42, outbox_depth=5, telemetry_dropped=7,
    )


def scrape(port: int) -> dict[str, list]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(samples: list, name: str, **labels: str) -> float:
    (v,) = [s.value for s in samples if s.name == name and s.labels == labels]
    return v


def test_metrics_scrape_and_parse() -> None:
    state = {"snapshot": snapshot()}
    first, second = Metrics(lambda: state["snapshot"]), Metrics(snapshot)  # separate registries coexist
    port = first.serve(0, "127.0.0.1")
    other = second.serve(0, "127.0.0.1")
    try:
        first.alert("raised")
        first.alert("raised")
        first.alert("cleared")
        for seconds in (0.0002, 0.0004, 0.003):
            first.latency.observe(seconds)
        for score in (0.05, 0.5, 0.97):
            first.scores.observe(score)

        m = scrape(port)
        assert value(m["lora_gateway_frames_accepted"], "lora_gateway_frames_accepted_total") == 42
        rejected = m["lora_gateway_frames_rejected"]
        assert value(rejected, "lora_gateway_frames_rejected_total", reason="bad_mic") == 3
        assert value(rejected, "lora_gateway_frames_rejected_total", reason="replay") == 2
        assert value(m["lora_gateway_telemetry_dropped"], "lora_gateway_telemetry_dropped_total") == 7
        assert value(m["lora_gateway_alerts"], "lora_gateway_alerts_total", state="raised") == 2
        assert value(m["lora_gateway_alerts"], "lora_gateway_alerts_total", state="cleared") == 1
        assert value(m["lora_gateway_outbox_depth"], "lora_gateway_outbox_depth") == 5
        assert value(m["lora_gateway_devices"], "lora_gateway_devices") == 2
        assert value(m["lora_gateway_broker_connected"], "lora_gateway_broker_connected") == 0
        assert value(m["lora_gateway_module_connected"], "lora_gateway_module_connected") == 1
        assert value(m["lora_gateway_device_rssi_dbm"], "lora_gateway_device_rssi_dbm", device="pump-house") == -71
        assert len(m["lora_gateway_device_rssi_dbm"]) == 1  # no RSSI known for cold-room: no sample
        latency = m["lora_gateway_pipeline_latency_seconds"]
        assert value(latency, "lora_gateway_pipeline_latency_seconds_count") == 3
        assert value(latency, "lora_gateway_pipeline_latency_seconds_bucket", le="0.0005") == 2
        assert value(latency, "lora_gateway_pipeline_latency_seconds_sum") == pytest.approx(0.0036)
        scores = m["lora_gateway_anomaly_score"]
        assert value(scores, "lora_gateway_anomaly_score_bucket", le="0.1") == 1
        assert value(scores, "lora_gateway_anomaly_score_bucket", le="0.9") == 2
        assert value(scores, "lora_gateway_anomaly_score_bucket", le="+Inf") == 3

        # Counts come from the snapshot at scrape time.
        state["snapshot"].frames_accepted = 50
        assert value(scrape(port)["lora_gateway_frames_accepted"], "lora_gateway_frames_accepted_total") == 50
        # The other instance has its own registry: no alerts there.
        assert value(scrape(other)["lora_gateway_alerts"], "lora_gateway_alerts_total", state="raised") == 0
    finally:
        first.stop()
        second.stop()


def test_a_running_gateway_serves_metrics(tmp_path: Path, broker, gateways, devices_file: Path) -> None:
    """`[metrics] port` on a real `lora-gateway run`: frames, devices and latency appear."""
    port = free_port()
    with Simulation("rylr", devices_file, period_s=0.3, seed=4) as sim:
        config = write_config(tmp_path / "config.toml", port=sim.port, dialect="rylr", mqtt_port=broker.port,
                              devices_file=devices_file, state_path=tmp_path / "state.db",
                              extra=f"[metrics]\nport = {port}\naddress = \"127.0.0.1\"")
        gateway = gateways(config).start()
        deadline = time.monotonic() + 120
        while True:
            try:
                m = scrape(port)
                if value(m["lora_gateway_devices"], "lora_gateway_devices") == 2:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, gateway.output()
            time.sleep(0.3)
        assert gateway.stop() == 0, gateway.output()
    assert value(m["lora_gateway_frames_accepted"], "lora_gateway_frames_accepted_total") >= 2
    assert value(m["lora_gateway_broker_connected"], "lora_gateway_broker_connected") == 1
    assert value(m["lora_gateway_pipeline_latency_seconds"], "lora_gateway_pipeline_latency_seconds_count") >= 2
    assert value(m["lora_gateway_anomaly_score"], "lora_gateway_anomaly_score_count") >= 2
