"""Publish: readings and alerts -> MQTT.

Alerts go through the SQLite outbox and stay there until the broker acknowledges them;
telemetry is queued in memory. Home Assistant discovery and device availability ride along.
"""
