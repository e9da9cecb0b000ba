"""Lines from the module to decoded readings: dialect -> LoRaWAN -> Cayenne LPP (FPort 0: MAC commands).

Every rejection is counted by reason; the ones due for a report come back as events.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from gateway.radio.dialects import Dialect
from gateway.records import RadioFrame, Reading, Rejected, Uplink
from gateway.uplink import lpp, mac
from gateway.uplink.lorawan import UplinkDecoder
from gateway.uplink.rejections import RejectionCounter


@dataclass(slots=True)
class PipelineOutput:
    readings: list[Reading] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)  # to write back to the module
    events: list[dict[str, Any]] = field(default_factory=list)


class Pipeline:
    def __init__(self, dialect: Dialect, decoder: UplinkDecoder, rejections: RejectionCounter) -> None:
        self.dialect = dialect
        self.decoder = decoder
        self.rejections = rejections
        self.frames_accepted = 0
        self.mac_commands: Counter[str] = Counter()

    def process(self, lines: list[bytes | Rejected], now: float) -> PipelineOutput:
        out = PipelineOutput()
        for raw in lines:
            frames = self._parse_line(raw, now, out)
            for frame in frames:
                reading = self._decode(frame, out)
                if reading is not None:
                    out.readings.append(reading)
        self.decoder.save_counters()
        return out

    def _reject(self, rejection: Rejected, now: float, stage: str, out: PipelineOutput) -> None:
        event = self.rejections.record(rejection, now, stage)
        if event is not None:
            out.events.append(event)

    def _parse_line(self, raw: bytes | Rejected, now: float, out: PipelineOutput) -> list[RadioFrame]:
        try:
            if isinstance(raw, Rejected):
                raise raw
            try:
                line = raw.decode("ascii")
            except UnicodeDecodeError as e:
                raise Rejected("not_text", f"byte 0x{raw[e.start]:02X} at offset {e.start}") from None
            result = self.dialect.on_line(line, now)
        except Rejected as r:
            self._reject(r, now, "serial", out)
            return []
        out.commands.extend(result.commands)
        if result.rejected is not None:
            self._reject(result.rejected, now, "serial", out)
        return result.frames

    def _decode(self, frame: RadioFrame, out: PipelineOutput) -> Reading | None:
        stage = "lorawan"
        try:
            uplink = self.decoder.decode(frame)
            if uplink.fport == 0:
                stage = "mac"
                self._mac_commands(uplink, out)
                return None
            stage = "lpp"
            values = lpp.decode(uplink.payload)
        except Rejected as r:
            self._reject(r, frame.received_at, stage, out)
            return None
        self.frames_accepted += 1
        return Reading(
            device=uplink.device,
            values=values,
            fcnt=uplink.fcnt,
            rssi=frame.rssi,
            snr=frame.snr,
            time=frame.received_at,
        )

    def _mac_commands(self, uplink: Uplink, out: PipelineOutput) -> None:
        """FPort 0 carries MAC commands, not readings: decoded, counted by command, reported."""
        commands = mac.decode(uplink.payload)
        self.frames_accepted += 1
        self.mac_commands.update(c["command"] for c in commands)
        out.events.append({"type": "mac_commands", "device": uplink.device, "fcnt": uplink.fcnt,
                           "commands": commands, "time": uplink.radio.received_at})
