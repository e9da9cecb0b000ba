"""At most so many channels per device: one authenticated node must not flood the gateway.

Each channel costs detector state (about 12 KB), a Home Assistant entity and its discovery
message, so a node that sends new channel names frame after frame would grow the process and
crowd out every other device's telemetry. Past the cap, a reading keeps the channels its
device already has and loses the new ones, counted as `too_many_channels`. The channels a device
has are given at start from the detector's saved state, so that a restart does not open the cap
again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

from gateway.records import Reading, Rejected


_NONE: frozenset[str] = frozenset()


class ChannelSets:
    """One frozenset per distinct set of channel names, shared by every device that has it: a
    fleet's nodes mostly report the same channels, and a set of its own costs a device about 220
    bytes, twice (the cap's and the daemon's table of channels announced to Home Assistant)."""

    def __init__(self) -> None:
        self._sets: dict[frozenset[str], frozenset[str]] = {}

    def get(self, names: Iterable[str]) -> frozenset[str]:
        names = frozenset(names)
        return self._sets.setdefault(names, names)


class ChannelLimit:
    def __init__(self, cap: int, known: Mapping[str, Iterable[str]] | None = None,
                 sets: ChannelSets | None = None) -> None:
        """`known`: the channels each device already has (those past the cap are not dropped)."""
        self.cap = cap
        self.sets = sets or ChannelSets()
        self._known: dict[str, frozenset[str]] = {device: self.sets.get(names) for device, names in (known or {}).items()}

    def apply(self, reading: Reading) -> tuple[Reading | None, Rejected | None]:
        """The reading as far as the cap allows (None if nothing of it is left), and the rejection if it was cut."""
        known = self._known.get(reading.device, _NONE)
        new = [name for name in reading.values if name not in known]
        if not new:
            return reading, None
        admitted = new[: max(self.cap - len(known), 0)]
        if admitted:
            known = self._known[reading.device] = self.sets.get(known.union(admitted))
        if len(admitted) == len(new):
            return reading, None
        left_out = len(new) - len(admitted)
        rejection = Rejected(
            "too_many_channels",
            f"{reading.device}: {left_out} new channel(s) left out, the device has the most allowed "
            f"(max_channels_per_device = {self.cap})",
        )
        values = {name: v for name, v in reading.values.items() if name in known}
        return (replace(reading, values=values) if values else None), rejection

    def apply_all(self, readings: list[Reading]) -> tuple[list[Reading], list[tuple[Rejected, float]]]:
        """`apply` to each: what is left of the readings, and each cut with its reading's time."""
        kept: list[Reading] = []
        cut: list[tuple[Rejected, float]] = []
        for reading in readings:
            limited, rejection = self.apply(reading)
            if rejection is not None:
                cut.append((rejection, reading.time))
            if limited is not None:
                kept.append(limited)
        return kept, cut
