"""Why the broker is unreachable, in words, once per change of cause."""

from __future__ import annotations

import logging
import socket

import pytest

from gateway.commands.demo import free_port
from gateway.publish.broker_errors import BrokerFailures, describe


def _error(action) -> OSError:
    with pytest.raises(OSError) as e:
        action()
    return e.value


def test_causes_from_real_sockets() -> None:
    port = free_port()  # nobody listens there
    refused = _error(lambda: socket.create_connection(("127.0.0.1", port), timeout=10))
    assert describe(refused).startswith("connection refused")
    unknown = _error(lambda: socket.getaddrinfo("broker.invalid", 1883))  # .invalid never resolves (RFC 2606)
    assert describe(unknown).startswith("DNS: cannot resolve the host name")


def test_logged_at_the_first_failure_and_on_each_change_of_cause(caplog: pytest.LogCaptureFixture) -> None:
    failures = BrokerFailures("broker.example", 8883, interval_s=0.0)
    with caplog.at_level(logging.INFO, logger="gateway.publish.mqtt"):
        for cause in ["connection refused", "connection refused", "TLS: x", "TLS: x", "TLS: x"]:
            failures.failed(cause)
        assert failures.cause == "TLS: x"
        failures.connected()
        failures.failed("connection refused")
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines == [
        ("ERROR", "broker broker.example:8883 unreachable: connection refused; retrying every second"),
        ("ERROR", "broker broker.example:8883 unreachable: TLS: x; retrying every second"),
        ("INFO", "broker broker.example:8883 reachable again"),
        ("ERROR", "broker broker.example:8883 unreachable: connection refused; retrying every second"),
    ]


def test_a_cause_that_flips_at_every_retry_is_logged_at_a_limited_rate(caplog: pytest.LogCaptureFixture) -> None:
    failures = BrokerFailures("b", 1883, interval_s=3600.0)
    with caplog.at_level(logging.INFO, logger="gateway.publish.mqtt"):
        for i in range(100):
            failures.failed("A" if i % 2 else "B")
    assert len(caplog.records) == 1 and failures.cause == "A"
