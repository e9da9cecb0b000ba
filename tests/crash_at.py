"""`python tests/crash_at.py POINT run --config FILE`: the gateway, dying as a kill -9 would
(os._exit, nothing flushed) at one instant of committing an alert. For the crash-window tests.

POINT `publish_alert`: on entering the first MqttPublisher.publish_alert.
POINT `flush_after_alert`: on entering the first Detector.flush after an alert was committed.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from gateway.commands import main
from gateway.detect.detector import Detector
from gateway.publish.mqtt import MqttPublisher


def _crash() -> None:
    sys.stderr.write("crash_at: dying now\n")
    sys.stderr.flush()
    os._exit(137)


def install(point: str) -> None:
    publish_alert, flush = MqttPublisher.publish_alert, Detector.flush
    alerted = False

    def publish_alert_then_maybe_die(self: MqttPublisher, *args: Any, **kwargs: Any) -> int:
        nonlocal alerted
        if point == "publish_alert":
            _crash()
        alerted = True
        return publish_alert(self, *args, **kwargs)

    def flush_or_die(self: Detector, complete: bool = True) -> int:
        if point == "flush_after_alert" and alerted:
            _crash()
        return flush(self, complete)

    MqttPublisher.publish_alert = publish_alert_then_maybe_die  # type: ignore[method-assign]
    Detector.flush = flush_or_die  # type: ignore[method-assign]


if __name__ == "__main__":
    install(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
