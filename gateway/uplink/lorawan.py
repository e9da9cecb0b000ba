"""LoRaWAN 1.0.x ABP data uplinks: MIC check, 32-bit counter rebuild, replay rejection, decryption.

Check order (DESIGN.md): length, MHDR, known DevAddr, MIC, counter, then decrypt, so nothing
unauthenticated goes further. Frame building lives here too, so the simulator's nodes and the
gateway share one implementation of the crypto; published test vectors keep it honest.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

from gateway.records import RadioFrame, Rejected, Uplink

MHDR_UNCONFIRMED_UP = 0x40
MHDR_CONFIRMED_UP = 0x80
_MIN_LENGTH = 12  # MHDR + DevAddr + FCtrl + FCnt + MIC
MAX_LENGTH = 255  # a LoRa PHY payload; B0 holds the message length in one byte
_UPLINK = 0
# B0 and A_i: a 10-byte head (tag, 4 zero bytes, direction, DevAddr), FCnt32, 0x00, and the
# message length (B0) or the block index (A_i).
_BLOCK = struct.Struct("<10sIxB")
# Devices whose cipher objects are kept (about 1.8 KB each, outside Python's heap): made for every
# configured device they were 17 MB at the start of a 10,000-device fleet. Beyond this many devices
# heard in turn, a frame pays for making them again (about 6 us).
CRYPTO_CACHE = 256


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """A device's ABP identity. Keys never leave this object except into the crypto."""

    name: str
    dev_addr: int
    nwk_skey: bytes
    app_skey: bytes

    def __repr__(self) -> str:  # keys must never reach logs
        return f"SessionKeys(name={self.name!r}, dev_addr={self.dev_addr:08X})"


class CounterStore(Protocol):
    def frame_counters(self) -> dict[int, int]: ...
    def set_frame_counters(self, counters: dict[int, int]) -> None: ...


class _DeviceCrypto:
    """Per-device cipher objects made once: building them per frame costs more than the AES."""

    def __init__(self, keys: SessionKeys) -> None:
        self.keys = keys
        self._cmac = CMAC(algorithms.AES(keys.nwk_skey))
        # ECB encryptors are stateless between blocks, so one context serves every frame.
        self._app_ecb = Cipher(algorithms.AES(keys.app_skey), modes.ECB()).encryptor()
        self._nwk_ecb: CipherContext | None = None  # FPort 0 (MAC commands) only: made at first use, 1 KB
        addr = keys.dev_addr.to_bytes(4, "little")
        # B0 and A_i differ per frame only in FCnt, length and block index.
        self._b0_head = bytes([0x49, 0, 0, 0, 0, _UPLINK]) + addr
        self._ai_head = bytes([0x01, 0, 0, 0, 0, _UPLINK]) + addr

    def mic(self, msg: bytes, fcnt: int) -> bytes:
        cmac = self._cmac.copy()
        cmac.update(_BLOCK.pack(self._b0_head, fcnt, len(msg)) + msg)
        return cmac.finalize()[:4]

    def crypt(self, payload: bytes, fcnt: int, fport: int) -> bytes:
        """Encrypt or decrypt FRMPayload (the same XOR with the A_i keystream)."""
        n = len(payload)
        if not n:
            return b""
        ecb = self._app_ecb
        if fport == 0:
            ecb = self._nwk_ecb or Cipher(algorithms.AES(self.keys.nwk_skey), modes.ECB()).encryptor()
            self._nwk_ecb = ecb
        if n <= 16:  # sensor payloads: one block, A_1
            stream = ecb.update(_BLOCK.pack(self._ai_head, fcnt, 1))
        else:
            stream = ecb.update(b"".join([_BLOCK.pack(self._ai_head, fcnt, i) for i in range(1, (n + 15) // 16 + 1)]))
        return (int.from_bytes(payload, "little") ^ int.from_bytes(stream[:n], "little")).to_bytes(n, "little")


def build_uplink(
    keys: SessionKeys,
    fcnt: int,
    fport: int,
    payload: bytes,
    *,
    confirmed: bool = False,
    adr: bool = False,
    fopts: bytes = b"",
) -> bytes:
    """Encode a data uplink the way a node's LoRaWAN stack does (used by the simulator)."""
    if len(fopts) > 15:
        raise ValueError(f"FOpts holds at most 15 bytes, got {len(fopts)}")
    if not 0 <= fport <= 255:
        raise ValueError(f"FPort must be 0..255, got {fport}")
    crypto = _DeviceCrypto(keys)
    mhdr = MHDR_CONFIRMED_UP if confirmed else MHDR_UNCONFIRMED_UP
    msg = (
        struct.pack("<BIBH", mhdr, keys.dev_addr, (0x80 if adr else 0) | len(fopts), fcnt & 0xFFFF)
        + fopts
        + bytes([fport])
        + crypto.crypt(payload, fcnt, fport)
    )
    return msg + crypto.mic(msg, fcnt)


class UplinkDecoder:
    """Authenticates and decrypts uplinks of known devices; frame counters go to a CounterStore."""

    def __init__(self, devices: list[SessionKeys], counters: CounterStore) -> None:
        self._counters = counters
        self._use_keys(devices)
        self._last = counters.frame_counters()
        self._unsaved: dict[int, int] = {}

    def _use_keys(self, devices: list[SessionKeys]) -> None:
        by_addr = self._by_addr = {d.dev_addr: d for d in devices}
        self._crypto = lru_cache(maxsize=CRYPTO_CACHE)(lambda dev_addr: _DeviceCrypto(by_addr[dev_addr]))

    def reload(self, devices: list[SessionKeys]) -> None:
        """New keys, and the counters as the store has them now (an operator's reset or set)."""
        self.save_counters()
        self._use_keys(devices)
        self._last = self._counters.frame_counters()

    def decode(self, frame: RadioFrame) -> Uplink:
        data = frame.payload
        if len(data) < _MIN_LENGTH:
            raise Rejected("frame_too_short", f"{len(data)} bytes, a data uplink has at least {_MIN_LENGTH}")
        if len(data) > MAX_LENGTH:
            raise Rejected("frame_too_long", f"{len(data)} bytes, a LoRa frame has at most {MAX_LENGTH}")
        mhdr = data[0]
        if mhdr not in (MHDR_UNCONFIRMED_UP, MHDR_CONFIRMED_UP):
            raise Rejected("unsupported_mhdr", f"MHDR 0x{mhdr:02X}")
        dev_addr, fctrl, fcnt16 = struct.unpack_from("<IBH", data, 1)
        if dev_addr not in self._by_addr:
            raise Rejected("unknown_device", f"DevAddr {dev_addr:08X}")
        crypto = self._crypto(dev_addr)
        fopts_len = fctrl & 0x0F
        body_end = len(data) - 4
        if 8 + fopts_len > body_end:
            raise Rejected("frame_too_short", f"FOpts length {fopts_len} runs past the MIC")
        msg, mic = data[:body_end], data[body_end:]
        fcnt = self._authenticate(crypto, msg, mic, fcnt16)
        if 8 + fopts_len < body_end:
            fport: int | None = data[8 + fopts_len]
            encrypted = data[9 + fopts_len : body_end]
        else:
            fport, encrypted = None, b""
        if fport == 0 and fopts_len:
            raise Rejected("invalid_frame", "FPort 0 with FOpts present")
        self._last[dev_addr] = fcnt
        self._unsaved[dev_addr] = fcnt
        payload = crypto.crypt(encrypted, fcnt, fport) if fport is not None else b""
        return Uplink(
            device=crypto.keys.name,
            dev_addr=dev_addr,
            fcnt=fcnt,
            fport=fport if fport is not None else -1,
            payload=payload,
            confirmed=mhdr == MHDR_CONFIRMED_UP,
            radio=frame,
        )

    def _authenticate(self, crypto: _DeviceCrypto, msg: bytes, mic: bytes, fcnt16: int) -> int:
        """Return the 32-bit counter whose MIC verifies, or reject as bad MIC or replay."""
        last = self._last.get(crypto.keys.dev_addr)
        if last is None:
            if crypto.mic(msg, fcnt16) != mic:
                # Only the low 16 bits travel: a first frame past 65535 cannot be told from a forgery.
                raise Rejected(
                    "bad_mic",
                    f"DevAddr {crypto.keys.dev_addr:08X} ({crypto.keys.name}), heard for the first time: if its "
                    f"counter is past 65535 (a late install, a lost state database), run: lora-gateway device "
                    f"set-counter {crypto.keys.name} N, N being the counter it shows, then reload the gateway",
                )
            return fcnt16
        same_epoch = (last & 0xFFFF0000) | fcnt16
        if same_epoch > last:
            if crypto.mic(msg, same_epoch) == mic:
                return same_epoch
            raise Rejected("bad_mic", f"DevAddr {crypto.keys.dev_addr:08X}")
        # Not above the last counter: either a replay (MIC valid in this epoch)
        # or the 16-bit counter rolled over (MIC valid in the next epoch).
        if crypto.mic(msg, same_epoch) == mic:
            raise Rejected(
                "replay", f"DevAddr {crypto.keys.dev_addr:08X} FCnt {same_epoch} <= last {last}"
            )
        rolled = same_epoch + 0x10000
        if rolled <= 0xFFFFFFFF and crypto.mic(msg, rolled) == mic:
            return rolled
        raise Rejected("bad_mic", f"DevAddr {crypto.keys.dev_addr:08X}")

    def save_counters(self) -> None:
        """Persist the counters accepted since the last save; called once per batch of lines, and
        always before the batch's readings are published, so a published frame is never replayable."""
        if self._unsaved:
            self._counters.set_frame_counters(self._unsaved)
            self._unsaved = {}

    def forget_counter(self, dev_addr: int) -> None:
        """After an operator reset: the next frame sets the counter afresh."""
        self._last.pop(dev_addr, None)
