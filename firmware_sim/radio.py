"""The radio channel between the nodes and the gateway's module.

Log-distance path loss gives each packet its RSSI; SNR is RSSI over the receiver's thermal
noise floor; a packet below its spreading factor's demodulation floor is lost, and a packet
close to it arrives with bit errors that the module's CRC mostly drops and the LoRaWAN MIC
catches the rest of. Overlapping packets on the same frequency and spreading factor collide
(the capture effect lets one at least `capture_db` stronger through).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace

from pydantic import BaseModel, ConfigDict, Field

# SX1276 datasheet, table 13: the SNR down to which each spreading factor still demodulates.
DEMOD_SNR_DB = {7: -7.5, 8: -10.0, 9: -12.5, 10: -15.0, 11: -17.5, 12: -20.0}
# The three default EU868 LoRaWAN channels: every node may use them, all in sub-band h1.5 (1%).
EU868_DEFAULT_CHANNELS_HZ = (868_100_000, 868_300_000, 868_500_000)
# Modules print the SX127x packet SNR in whole dB; its estimate saturates for strong signals, so
# a node next to the gateway reports about +13 dB, not its real margin.
_SNR_REPORTED = (-32, 13)
# Bytes the MIC covers and nothing before it checks: errors in MHDR, DevAddr or FCtrl would be
# rejected earlier under their own reasons, so corruption stays here and is always a bad MIC.
_CORRUPTIBLE_FROM = 6


class RadioConfig(BaseModel):
    """Channel parameters. Path loss after Petajajarvi et al. 2015 (868 MHz, Oulu: exponent 2.32,
    128.95 dB at 1 km, 7.8 dB spread, here split into a fixed per-node and a per-packet part)."""

    model_config = ConfigDict(extra="forbid")

    tx_power_dbm: float = Field(14.0, description="Node transmit power (EU868 limit: 14 dBm ERP).")
    reference_loss_db: float = Field(128.95, description="Path loss at the reference distance.")
    reference_distance_m: float = Field(1000.0, gt=0)
    path_loss_exponent: float = Field(2.32, gt=0)
    shadowing_db: float = Field(4.0, ge=0, description="Per-node fixed shadowing (std. dev.), drawn once.")
    fading_db: float = Field(2.0, ge=0, description="Per-packet fading (std. dev.).")
    noise_figure_db: float = Field(6.0, description="Receiver noise figure.")
    bandwidth_hz: int = Field(125_000, gt=0)
    duty_cycle: bool = Field(True, description="Nodes keep to the EU868 per-sub-band duty cycle.")
    collisions: bool = True
    losses: bool = Field(True, description="Weak packets are lost and marginal ones corrupted; off: all arrive intact.")
    capture_db: float | None = Field(6.0, description="A packet this much stronger survives a collision; none: both lost.")
    error_scale_db: float = Field(
        1.5, gt=0, description="Bit errors: a packet at the demodulation floor is corrupt with probability 1/2, "
        "falling by e for every error_scale_db of margin."
    )
    crc_escape: float = Field(
        0.02, ge=0, le=1, description="Share of corrupt packets the module's CRC lets through. A CRC-16 misses "
        "about 1 in 65,536; the default is far higher so that a run exercises the gateway's MIC check."
    )
    duplicate_probability: float = Field(0.0, ge=0, le=1, description="A packet heard twice (repeater, multipath).")
    single_channel: bool = Field(
        False, description="The module hears only the frequency and spreading factor the gateway set it to, as "
        "these single-channel transceivers do; off: every channel, like a concentrator."
    )

    @classmethod
    def ideal(cls) -> RadioConfig:
        """Every packet arrives once and intact, with RSSI and SNR still from distance."""
        return cls(shadowing_db=0, fading_db=0, duty_cycle=False, collisions=False, losses=False,
                   duplicate_probability=0)

    @property
    def noise_floor_dbm(self) -> float:
        return -174.0 + 10 * math.log10(self.bandwidth_hz) + self.noise_figure_db

    def mean_rssi(self, distance_m: float) -> float:
        d = max(distance_m, 1.0)
        loss = self.reference_loss_db + 10 * self.path_loss_exponent * math.log10(d / self.reference_distance_m)
        return self.tx_power_dbm - loss


@dataclass(slots=True)
class Transmission:
    """One packet on air. `rssi` is the signal power at the gateway, in dBm."""

    node: str
    frame: bytes
    freq_hz: int
    sf: int
    start: float
    end: float
    rssi: float
    fcnt: int = 0
    readings: list[tuple[int, str, float]] = field(default_factory=list)
    interferers: list[float] = field(default_factory=list)  # RSSI of each overlapping packet

    def survives_collisions(self, capture_db: float | None) -> bool:
        if not self.interferers:
            return True
        if capture_db is None:
            return False
        return all(self.rssi - other >= capture_db for other in self.interferers)


@dataclass(frozen=True, slots=True)
class Delivery:
    """A packet the module hears: what it reports, and what the simulation knows about it."""

    node: str
    frame: bytes
    rssi: int
    snr: int
    t: float  # simulated seconds
    fcnt: int
    readings: list[tuple[int, str, float]]
    freq_hz: int
    sf: int
    corrupted: bool = False
    duplicate: bool = False


class Channel:
    """Decides each transmission's fate once it has ended, after all overlaps are known."""

    def __init__(self, config: RadioConfig, rng: random.Random) -> None:
        self.config = config
        self.rng = rng
        self._active: dict[tuple[int, int], list[Transmission]] = {}

    def begin(self, tx: Transmission) -> None:
        """`tx` goes on air; it and every packet still on air on its frequency and SF overlap."""
        on_air = self._active.setdefault((tx.freq_hz, tx.sf), [])
        if self.config.collisions:
            for other in on_air:
                other.interferers.append(tx.rssi)
                tx.interferers.append(other.rssi)
        on_air.append(tx)

    def end(self, tx: Transmission) -> tuple[str, list[Delivery]]:
        """Take `tx` off air; its outcome and what the module hears of it."""
        self._active[(tx.freq_hz, tx.sf)].remove(tx)
        cfg = self.config
        if not tx.survives_collisions(cfg.capture_db):
            return "collided", []
        snr = tx.rssi - cfg.noise_floor_dbm
        margin = snr - DEMOD_SNR_DB[tx.sf]
        if cfg.losses and margin < 0:
            return "too_weak", []
        frame, outcome, corrupted = tx.frame, "delivered", False
        if cfg.losses and self.rng.random() < 0.5 * math.exp(-margin / cfg.error_scale_db):
            if self.rng.random() >= cfg.crc_escape:
                return "crc_error", []
            frame, outcome, corrupted = self._flip_bits(frame), "corrupted", True
        reported = min(_SNR_REPORTED[1], max(_SNR_REPORTED[0], round(snr)))
        heard = Delivery(tx.node, frame, round(tx.rssi), reported, tx.end, tx.fcnt, tx.readings, tx.freq_hz, tx.sf,
                         corrupted)
        if self.rng.random() < cfg.duplicate_probability:
            return outcome, [heard, replace(heard, duplicate=True)]
        return outcome, [heard]

    def _flip_bits(self, frame: bytes) -> bytes:
        out = bytearray(frame)
        for _ in range(self.rng.randint(1, 3)):
            bit = self.rng.randrange(_CORRUPTIBLE_FROM * 8, len(out) * 8)
            out[bit // 8] ^= 1 << (bit % 8)
        if out == frame:  # an even number of flips on one bit undid itself
            out[-1] ^= 1
        return bytes(out)
