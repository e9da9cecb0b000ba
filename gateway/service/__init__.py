"""Service: what keeps the daemon running and observable, beside the data flow.

The state database, the history of readings, the health snapshot, Prometheus metrics and
systemd's notifications.
"""
