"""Why the broker cannot be reached, said once per change of cause, naming host and port.

paho retries a failed connection by itself and says nothing: a wrong CA, a host name that does
not match the certificate, a refused password or an unknown host looked like a broker that is
merely away. Each failure is described here in a user's words; it is logged at error level at
the first failure and whenever the cause changes (at most once per `interval_s`, so a cause
that flips at every retry cannot flood the journal), and kept for `lora-gateway status`.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time

log = logging.getLogger("gateway.publish.mqtt")


def describe(error: BaseException) -> str:
    """An exception from connecting, as its cause."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS: the broker's certificate was refused: {error.verify_message}"
    if isinstance(error, ssl.SSLError):
        return f"TLS: {error.reason or error}"
    if isinstance(error, socket.gaierror):
        return f"DNS: cannot resolve the host name ({error.strerror})"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused (is the broker running, and listening on that port?)"
    if isinstance(error, TimeoutError | socket.timeout):
        return "no answer (timed out)"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


class BrokerFailures:
    def __init__(self, host: str, port: int, interval_s: float = 10.0) -> None:
        self.host, self.port, self.interval_s = host, port, interval_s
        self.cause: str | None = None  # of the last failure; None while connected or before the first try
        self._logged: str | None = None
        self._logged_at = -float("inf")

    def failed(self, cause: str) -> None:
        self.cause = cause
        now = time.monotonic()
        if cause != self._logged and now - self._logged_at >= self.interval_s:
            self._logged, self._logged_at = cause, now
            log.error("broker %s:%d unreachable: %s; retrying every second", self.host, self.port, cause)

    def connected(self) -> None:
        if self._logged is not None:
            log.info("broker %s:%d reachable again", self.host, self.port)
        self.cause = self._logged = None
        self._logged_at = -float("inf")
