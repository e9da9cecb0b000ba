"""Alert state: per channel a raise / clear state machine, per device the transition a person sees.

A device's alert is raised while any of its channels is; each raise and each clear is one
`AlertTransition`, the MQTT alert payload.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from gateway.detect.channel import Device
from gateway.detect.settings import Tunables


@dataclass(frozen=True, slots=True)
class AlertTransition:
    """An alert raised or cleared: exactly the `<base>/<device>/alert` payload.

    `id` names the alert (device and raise time in ms): the clear carries the id of the newest
    alert it ends, so (id, state) is unique and stable across retries and restarts. A second
    anomaly while an alert is raised (another channel, or one that had cleared) gets a new id,
    raised while the first is still up; the device's clear ends both.
    """

    id: str
    device: str
    state: Literal["raised", "cleared"]
    time: float
    score: float
    threshold: float
    channels: dict[str, float]
    model: str

    def to_payload(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "device": self.device,
            "state": self.state,
            "time": self.time,
            "score": self.score,
            "threshold": self.threshold,
            "channels": dict(self.channels),
            "model": self.model,
        }


def alert_step(raised: bool, over: int, likelihood: float, seen: int, cfg: Tunables) -> tuple[bool, int]:
    """One channel's alert state after a new likelihood: (raised, consecutive readings over).

    Raise after `min_duration` consecutive readings at or above raise_threshold, never within
    the first `warmup` readings; clear below clear_threshold (hysteresis: no flapping between).
    """
    if raised:
        return (False, 0) if likelihood < cfg.clear_threshold else (True, over)
    if likelihood >= cfg.raise_threshold and seen >= cfg.warmup:
        return (over + 1 >= cfg.min_duration, over + 1)
    return False, 0


def device_transition(
    device: str, dev: Device, raised: bool, time: float, score: float, judged: dict[str, float], model: str
) -> AlertTransition:
    """The device's alert was raised or cleared at `time`: record it on `dev` and return the transition.

    A raise names the channels that are raised; a clear, those judged at this reading (`judged`).
    """
    dev.raised = raised
    if raised:
        dev.since = time
        over = {n: ch.likelihood for n, ch in dev.channels.items() if ch.raised}
        top = max(over, key=over.__getitem__)
        threshold = dev.channels[top].cfg.raise_threshold
    else:
        over = {n: ch.likelihood for n, ch in dev.channels.items() if n in judged}
        threshold = max((ch.cfg.clear_threshold for ch in dev.channels.values()), default=0.0)
    return AlertTransition(
        id=f"{device}-{round(dev.since * 1000)}",
        device=device,
        state="raised" if raised else "cleared",
        time=time,
        score=score,
        threshold=threshold,
        channels=over,
        model=model,
    )
