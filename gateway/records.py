"""Plain data passed between pipeline stages, and the one rejection type they raise.

The records are not frozen: a frozen dataclass takes four times as long to build (each field
goes through object.__setattr__), and three are built per frame on the daemon's hot path.
No stage changes a record it is handed.
"""

from __future__ import annotations

from dataclasses import dataclass


class Rejected(Exception):
    """Input a stage refuses. `reason` is a short stable key used for counters and events."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class RadioFrame:
    """One packet as the LoRa module heard it."""

    payload: bytes
    rssi: float
    snr: float
    received_at: float  # unix time, seconds


@dataclass(slots=True)
class Uplink:
    """An authenticated, decrypted LoRaWAN data uplink."""

    device: str
    dev_addr: int
    fcnt: int  # full 32-bit counter
    fport: int
    payload: bytes  # decrypted FRMPayload
    confirmed: bool
    radio: RadioFrame


@dataclass(slots=True)
class Reading:
    """Decoded sensor values of one uplink, named `<type>_<channel>`."""

    device: str
    values: dict[str, float]
    fcnt: int
    rssi: float
    snr: float
    time: float
