"""The AT command sets of the supported LoRa modules: set-up handshake and receive events.

Each dialect turns one text line from the module into radio frames and, where the module
needs it, commands to write back (the RN2483 must be asked for SNR/RSSI and re-armed after
every packet). No I/O here: the serial link does the reading and writing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from gateway.config import SerialConfig
from gateway.records import RadioFrame, Rejected

_INT = re.compile(r"-?\d+")


@dataclass(frozen=True, slots=True)
class SetupStep:
    command: str
    accept: Callable[[str], bool]
    expect: str  # what a good reply looks like, for error messages


@dataclass(slots=True)
class LineResult:
    # Tuples: most lines carry one frame or none, and an empty tuple costs no allocation.
    frames: tuple[RadioFrame, ...] = ()
    commands: tuple[str, ...] = ()
    # A malformed event that still needs its commands written (the RN2483's re-arm).
    rejected: Rejected | None = None


def hex_payload(text: str) -> bytes:
    if len(text) % 2:
        raise Rejected("bad_hex", f"odd number of hex digits ({len(text)})")
    if not text:
        raise Rejected("bad_hex", "empty payload")
    try:
        data = bytes.fromhex(text)
    except ValueError:
        data = b""
    # fromhex also skips whitespace between digit pairs: then the bytes come out short.
    if 2 * len(data) != len(text):
        raise Rejected("bad_hex", f"not hex: {text[:40]!r}")
    return data


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise Rejected("unrecognized_line", f"{what} is not a number: {text[:20]!r}") from None
    if not math.isfinite(value):
        raise Rejected("unrecognized_line", f"{what} is not finite: {text[:20]!r}")
    return value


class Dialect:
    name: str
    ok_replies: tuple[str, ...]

    def setup(self, cfg: SerialConfig) -> list[SetupStep]:
        raise NotImplementedError

    def on_line(self, line: str, now: float) -> LineResult:
        """Parse one line (without CR/LF); raise Rejected for a malformed event."""
        raise NotImplementedError

    def on_idle(self, now: float) -> list[str]:
        """Commands to write when nothing arrived for a while (recover a stuck exchange)."""
        return []

    def _ok(self, command: str) -> SetupStep:
        return SetupStep(command, lambda reply: reply in self.ok_replies, " or ".join(self.ok_replies))


class Rylr(Dialect):
    """REYAX RYLR896 / RYLR998."""

    name = "rylr"
    ok_replies = ("+OK",)
    _BW_CODE = {125: 7, 250: 8, 500: 9}

    def setup(self, cfg: SerialConfig) -> list[SetupStep]:
        return [
            self._ok("AT"),
            self._ok(f"AT+BAND={cfg.frequency_hz}"),
            self._ok(
                f"AT+PARAMETER={cfg.spreading_factor},{self._BW_CODE[cfg.bandwidth_khz]},"
                f"{cfg.coding_rate - 4},{cfg.preamble}"
            ),
            self._ok(f"AT+NETWORKID={cfg.network_id}"),
            self._ok(f"AT+ADDRESS={cfg.address}"),
        ]

    def on_line(self, line: str, now: float) -> LineResult:
        if not line.startswith("+RCV="):
            if line in self.ok_replies or line.startswith("+ERR=") or line.startswith("+READY"):
                return LineResult()
            raise Rejected("unrecognized_line", repr(line[:60]))
        # +RCV=<addr>,<len>,<data>,<rssi>,<snr>: data may hold commas, so cut it by <len>.
        head = line[5:].split(",", 2)
        if len(head) != 3:
            raise Rejected("unrecognized_line", f"+RCV with too few fields: {line[:60]!r}")
        addr, length_text, rest = head
        if not addr.isdigit() or not length_text.isdigit():
            raise Rejected("unrecognized_line", f"+RCV address or length not a number: {line[:60]!r}")
        length = int(length_text)
        data, tail = rest[:length], rest[length:]
        tail_fields = tail.split(",")
        if len(data) != length or len(tail_fields) != 3 or tail_fields[0] != "":
            raise Rejected("bad_length", f"+RCV says {length} characters, the line disagrees: {line[:60]!r}")
        rssi = _number(tail_fields[1], "RSSI")
        snr = _number(tail_fields[2], "SNR")
        return LineResult(frames=(RadioFrame(hex_payload(data), rssi, snr, now),))


class Rak3172(Dialect):
    """RAK3172 with RUI3 firmware in LoRa P2P mode."""

    name = "rak3172"
    ok_replies = ("OK",)

    def setup(self, cfg: SerialConfig) -> list[SetupStep]:
        return [
            self._ok("AT"),
            self._ok("AT+NWM=0"),
            # A module left in continuous receive refuses parameter changes: stop it first.
            self._ok("AT+PRECV=0"),
            self._ok(
                f"AT+P2P={cfg.frequency_hz}:{cfg.spreading_factor}:{cfg.bandwidth_khz}:"
                f"{cfg.coding_rate - 5}:{cfg.preamble}:14"
            ),
            self._ok("AT+PRECV=65534"),
        ]

    def on_line(self, line: str, now: float) -> LineResult:
        if not line.startswith("+EVT:RXP2P:"):
            if line in self.ok_replies or line.startswith("AT_") or line.startswith("+EVT:"):
                return LineResult()
            raise Rejected("unrecognized_line", repr(line[:60]))
        fields = line[11:].split(":")
        if len(fields) != 3:
            raise Rejected("unrecognized_line", f"+EVT:RXP2P wants rssi:snr:hex: {line[:60]!r}")
        rssi = _number(fields[0], "RSSI")
        snr = _number(fields[1], "SNR")
        return LineResult(frames=(RadioFrame(hex_payload(fields[2]), rssi, snr, now),))


class Rn2483(Dialect):
    """Microchip RN2483 / RN2903 in raw radio mode."""

    name = "rn2483"
    ok_replies = ("ok",)
    _REPLY_TIMEOUT_S = 1.0

    def __init__(self) -> None:
        # After radio_rx: "snr" while waiting for `radio get snr`, then "rssi"; None when armed.
        self._waiting_for: str | None = None
        self._pending = b""
        self._received_at = 0.0
        self._snr = math.nan
        self._asked_at = 0.0

    def setup(self, cfg: SerialConfig) -> list[SetupStep]:
        self._waiting_for = None
        return [
            SetupStep("sys get ver", lambda r: r.startswith(("RN2483", "RN2903")), "RN2483 or RN2903 version"),
            # mac pause answers the number of milliseconds it paused for; 0 means it could not.
            SetupStep("mac pause", lambda r: r.isdigit() and int(r) > 0, "a pause length in ms"),
            self._ok("radio set mod lora"),
            self._ok(f"radio set freq {cfg.frequency_hz}"),
            self._ok(f"radio set sf sf{cfg.spreading_factor}"),
            self._ok(f"radio set bw {cfg.bandwidth_khz}"),
            self._ok(f"radio set cr 4/{cfg.coding_rate}"),
            self._ok(f"radio set prlen {cfg.preamble}"),
            self._ok("radio set crc on"),
            self._ok("radio set sync 34"),
            self._ok("radio set wdt 0"),
            self._ok("radio rx 0"),
        ]

    def on_line(self, line: str, now: float) -> LineResult:
        if line.startswith("radio_rx"):
            try:
                self._pending = hex_payload(line[8:].strip())
            except Rejected as r:
                # The receiver stopped with this event, whatever it carried: re-arm it, or it stays deaf.
                self._waiting_for = None
                return LineResult(commands=("radio rx 0",), rejected=r)
            self._received_at = self._asked_at = now
            self._waiting_for = "snr"
            # radio_rx carries no signal figures: ask for them, then re-arm.
            return LineResult(commands=("radio get snr",))
        if self._waiting_for is not None and (_INT.fullmatch(line) or line == "invalid_param"):
            # Firmware before 1.0.5 has no `radio get rssi` and answers invalid_param.
            value = math.nan if line == "invalid_param" else float(line)
            if self._waiting_for == "snr":
                self._snr, self._asked_at, self._waiting_for = value, now, "rssi"
                return LineResult(commands=("radio get rssi",))
            self._waiting_for = None
            frame = RadioFrame(self._pending, value, self._snr, self._received_at)
            return LineResult(frames=(frame,), commands=("radio rx 0",))
        if line == "radio_err":
            # CRC error or watchdog: nothing usable arrived, but the receiver must be re-armed.
            self._waiting_for = None
            return LineResult(commands=("radio rx 0",))
        if line in self.ok_replies or line == "busy":
            return LineResult()
        raise Rejected("unrecognized_line", repr(line[:60]))

    def on_idle(self, now: float) -> list[str]:
        if self._waiting_for is not None and now - self._asked_at > self._REPLY_TIMEOUT_S:
            self._waiting_for = None
            return ["radio rx 0"]
        return []


DIALECTS: dict[str, type[Dialect]] = {"rylr": Rylr, "rak3172": Rak3172, "rn2483": Rn2483}
