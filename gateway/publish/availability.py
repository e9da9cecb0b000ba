"""Device availability: online when heard, offline after a silence of several expected periods.

The expected period is the devices file's `period_s`, or, where it is not set, learned from the
intervals between a device's uplinks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MISSED_PERIODS = 3  # one or two lost packets are normal on LoRa; three in a row are not
_LEARN_WEIGHT = 0.2


@dataclass(slots=True)  # one a device heard: 56 bytes with slots, 96 with its values kept apart
class _Device:
    last_seen: float
    online: bool = True
    interval: float | None = None  # learned, exponentially weighted


@dataclass
class AvailabilityTracker:
    configured: dict[str, float | None] = field(default_factory=dict)
    _devices: dict[str, _Device] = field(default_factory=dict)

    def seen(self, device: str, t: float) -> bool:
        """Record an uplink; True when the device comes online (first time or back from offline)."""
        state = self._devices.get(device)
        if state is None:
            self._devices[device] = _Device(t)
            return True
        gap = t - state.last_seen
        if gap > 0 and state.online:
            # Gaps while offline would teach the tracker the outage as the period.
            state.interval = gap if state.interval is None else (
                (1 - _LEARN_WEIGHT) * state.interval + _LEARN_WEIGHT * gap)
        state.last_seen = t
        came_back = not state.online
        state.online = True
        return came_back

    def expected_period(self, device: str) -> float | None:
        state = self._devices.get(device)
        return self.configured.get(device) or (state.interval if state else None)

    def gone_silent(self, now: float) -> list[str]:
        """Devices that just went offline; each is reported once until it is heard again."""
        silent = []
        for name, state in self._devices.items():
            period = self.expected_period(name)
            if state.online and period is not None and now - state.last_seen > MISSED_PERIODS * period:
                state.online = False
                silent.append(name)
        return silent
