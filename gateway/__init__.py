"""lora-gateway: LoRa serial modules to authenticated, anomaly-scored MQTT telemetry."""

__version__ = "0.1.0"
