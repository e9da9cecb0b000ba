"""LoRaWAN 1.0.x data-up decoding: published vector first, then every rejection."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.records import RadioFrame, Rejected
from gateway.service.state import StateStore
from gateway.uplink.lorawan import CRYPTO_CACHE, SessionKeys, UplinkDecoder, _DeviceCrypto, build_uplink

# LoRaWAN 1.0 data uplink test vector from brocaar/lorawan's tests (quoted in DESIGN.md):
# NwkSKey 02 x16, AppSKey 01 x16, DevAddr 01020304, FCnt 1, FPort 1, FCtrl ADR.
VECTOR_KEYS = SessionKeys("vector", 0x01020304, bytes([2]) * 16, bytes([1]) * 16)
VECTOR_FRAME = bytes.fromhex("40 04030201 80 0100 01 a6946426 15 d6c3b582".replace(" ", ""))
VECTOR_MIC = bytes.fromhex("d6c3b582")

OTHER = SessionKeys("other", 0x26011BDA, bytes(range(16)), bytes(range(16, 32)))


def frame(data: bytes) -> RadioFrame:
    return RadioFrame(data, -80.0, 7.5, 1000.0)


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state.db")


def test_published_vector_decrypts_to_hello(store: StateStore) -> None:
    uplink = UplinkDecoder([VECTOR_KEYS], store).decode(frame(VECTOR_FRAME))
    assert uplink.payload == b"hello"
    assert (uplink.device, uplink.dev_addr, uplink.fcnt, uplink.fport) == ("vector", 0x01020304, 1, 1)
    assert not uplink.confirmed


def test_encoder_reproduces_published_vector_byte_for_byte() -> None:
    built = build_uplink(VECTOR_KEYS, 1, 1, b"hello", adr=True)
    assert built == VECTOR_FRAME
    assert built[-4:] == VECTOR_MIC


@pytest.mark.parametrize("fcnt", [0, 1, 65535, 65536, 0x12345678])
@pytest.mark.parametrize("payload", [b"", b"x", bytes(range(16)), bytes(range(40))])
def test_round_trip(store: StateStore, fcnt: int, payload: bytes) -> None:
    if fcnt:
        store.set_frame_counters({OTHER.dev_addr: fcnt - 1})
    decoder = UplinkDecoder([OTHER], store)
    uplink = decoder.decode(frame(build_uplink(OTHER, fcnt, 2, payload, confirmed=True)))
    assert (uplink.payload, uplink.fcnt, uplink.confirmed) == (payload, fcnt, True)


def test_fport_0_payload_is_encrypted_with_the_nwkskey(store: StateStore) -> None:
    """MAC commands in FRMPayload (FPort 0): the keystream comes from the NwkSKey (LoRaWAN 1.0.x
    section 4.3.3), here computed apart from the gateway's code: AES-ECB of A_1 by the key."""
    commands = bytes.fromhex("0203")  # LinkCheckReq, DutyCycleAns
    a1 = bytes([1, 0, 0, 0, 0, 0]) + OTHER.dev_addr.to_bytes(4, "little") + (9).to_bytes(4, "little") + b"\x00\x01"
    stream = Cipher(algorithms.AES(OTHER.nwk_skey), modes.ECB()).encryptor().update(a1)
    header = bytes([0x40]) + OTHER.dev_addr.to_bytes(4, "little") + b"\x00" + (9).to_bytes(2, "little") + b"\x00"
    msg = header + bytes(a ^ b for a, b in zip(commands, stream))
    uplink = UplinkDecoder([OTHER], store).decode(frame(msg + _DeviceCrypto(OTHER).mic(msg, 9)))
    assert (uplink.fport, uplink.payload) == (0, commands)
    assert build_uplink(OTHER, 9, 0, commands) == msg + _DeviceCrypto(OTHER).mic(msg, 9)


def test_frame_without_fport_is_authenticated_but_empty(store: StateStore) -> None:
    header = build_uplink(OTHER, 5, 1, b"")[:-5]  # drop FPort and MIC, then sign again
    data = header + _DeviceCrypto(OTHER).mic(header, 5)
    uplink = UplinkDecoder([OTHER], store).decode(frame(data))
    assert (uplink.fport, uplink.payload) == (-1, b"")


def test_forged_mic_rejected(store: StateStore) -> None:
    forged = VECTOR_FRAME[:-1] + bytes([VECTOR_FRAME[-1] ^ 1])
    with pytest.raises(Rejected) as e:
        UplinkDecoder([VECTOR_KEYS], store).decode(frame(forged))
    assert e.value.reason == "bad_mic"
    assert store.frame_counters() == {}


def test_tampered_payload_rejected(store: StateStore) -> None:
    tampered = bytearray(VECTOR_FRAME)
    tampered[10] ^= 0x40
    with pytest.raises(Rejected) as e:
        UplinkDecoder([VECTOR_KEYS], store).decode(frame(bytes(tampered)))
    assert e.value.reason == "bad_mic"


def test_wrong_key_rejected(store: StateStore) -> None:
    impostor = SessionKeys("vector", 0x01020304, bytes([3]) * 16, bytes([1]) * 16)
    with pytest.raises(Rejected) as e:
        UplinkDecoder([impostor], store).decode(frame(VECTOR_FRAME))
    assert e.value.reason == "bad_mic"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "frame_too_short"),
        (VECTOR_FRAME[:11], "frame_too_short"),
        (bytes([0x00]) + VECTOR_FRAME[1:], "unsupported_mhdr"),  # join request
        (bytes([0x60]) + VECTOR_FRAME[1:], "unsupported_mhdr"),  # unconfirmed down
        (bytes([0xE0]) + VECTOR_FRAME[1:], "unsupported_mhdr"),  # proprietary
        (VECTOR_FRAME[:1] + bytes([9, 9, 9, 9]) + VECTOR_FRAME[5:], "unknown_device"),
        (VECTOR_FRAME[:5] + bytes([0x8F]) + VECTOR_FRAME[6:13], "frame_too_short"),  # FOpts past MIC
    ],
)
def test_rejections(store: StateStore, data: bytes, reason: str) -> None:
    with pytest.raises(Rejected) as e:
        UplinkDecoder([VECTOR_KEYS], store).decode(frame(data))
    assert e.value.reason == reason


def test_replay_rejected_and_counter_persists_across_restart(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = StateStore(path)
    decoder = UplinkDecoder([OTHER], store)
    first = build_uplink(OTHER, 7, 1, b"a")
    decoder.decode(frame(first))
    decoder.save_counters()
    with pytest.raises(Rejected) as e:
        decoder.decode(frame(first))
    assert e.value.reason == "replay"
    with pytest.raises(Rejected) as e:
        decoder.decode(frame(build_uplink(OTHER, 6, 1, b"older")))
    assert e.value.reason == "replay"
    store.close()

    restarted = UplinkDecoder([OTHER], StateStore(path))
    with pytest.raises(Rejected) as e:
        restarted.decode(frame(first))
    assert e.value.reason == "replay"
    assert restarted.decode(frame(build_uplink(OTHER, 8, 1, b"b"))).fcnt == 8


def test_sixteen_bit_counter_rollover(store: StateStore) -> None:
    store.set_frame_counters({OTHER.dev_addr: 0x1FFFE})
    decoder = UplinkDecoder([OTHER], store)
    assert decoder.decode(frame(build_uplink(OTHER, 0x1FFFF, 1, b"a"))).fcnt == 0x1FFFF
    # On air the counter reads 0 again; the 32-bit value is 0x20000.
    assert decoder.decode(frame(build_uplink(OTHER, 0x20000, 1, b"b"))).fcnt == 0x20000
    decoder.save_counters()
    assert store.frame_counters()[OTHER.dev_addr] == 0x20000


def test_forget_counter_lets_a_reset_device_back_in(store: StateStore) -> None:
    decoder = UplinkDecoder([OTHER], store)
    decoder.decode(frame(build_uplink(OTHER, 500, 1, b"a")))
    reset = frame(build_uplink(OTHER, 0, 1, b"after reset"))
    with pytest.raises(Rejected):
        decoder.decode(reset)
    store.reset_frame_counter(OTHER.dev_addr)
    decoder.forget_counter(OTHER.dev_addr)
    assert decoder.decode(reset).payload == b"after reset"


REASONS = {"frame_too_short", "frame_too_long", "unsupported_mhdr", "unknown_device", "bad_mic", "replay", "invalid_frame"}


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_only_documented_rejections(data: bytes) -> None:
    decoder = UplinkDecoder([VECTOR_KEYS, OTHER], StateStore(":memory:"))
    try:
        decoder.decode(frame(data))
    except Rejected as e:
        assert e.reason in REASONS


@settings(max_examples=400, deadline=None)
@given(st.integers(0, len(VECTOR_FRAME) - 1), st.integers(1, 255), st.integers(0, len(VECTOR_FRAME)))
def test_mutated_vector_never_accepted_never_crashes(pos: int, xor: int, cut: int) -> None:
    mutated = bytearray(VECTOR_FRAME)
    mutated[pos] ^= xor
    data = bytes(mutated[: max(cut, 0)] if cut < len(VECTOR_FRAME) else mutated)
    decoder = UplinkDecoder([VECTOR_KEYS], StateStore(":memory:"))
    with pytest.raises(Rejected) as e:
        decoder.decode(frame(data))
    assert e.value.reason in REASONS


def test_more_devices_than_the_cipher_cache_all_decode_and_the_cache_stays_bounded(store: StateStore) -> None:
    """Cipher objects are kept for CRYPTO_CACHE devices: a fleet heard in turn past that makes
    them again for each frame, and each frame still authenticates and decrypts."""
    fleet = [SessionKeys(f"node-{i}", 0x26000000 + i, bytes([i % 256]) * 16, bytes([(i * 7) % 256]) * 16)
             for i in range(CRYPTO_CACHE + 20)]
    decoder = UplinkDecoder(fleet, store)
    for fcnt in (1, 2):
        for keys in fleet:
            uplink = decoder.decode(frame(build_uplink(keys, fcnt, 1, keys.name.encode())))
            assert (uplink.device, uplink.fcnt, uplink.payload) == (keys.name, fcnt, keys.name.encode())
    assert decoder._crypto.cache_info().currsize == CRYPTO_CACHE
    # An evicted device's replay is still a replay: the counters do not live in the cache.
    with pytest.raises(Rejected) as rejected:
        decoder.decode(frame(build_uplink(fleet[0], 2, 1, b"again")))
    assert rejected.value.reason == "replay"


def test_reloaded_keys_replace_the_kept_cipher_objects(store: StateStore) -> None:
    decoder = UplinkDecoder([OTHER], store)
    decoder.decode(frame(build_uplink(OTHER, 1, 1, b"old key")))
    rekeyed = SessionKeys(OTHER.name, OTHER.dev_addr, bytes([9]) * 16, bytes([8]) * 16)
    decoder.reload([rekeyed])
    assert decoder.decode(frame(build_uplink(rekeyed, 2, 1, b"new key"))).payload == b"new key"
    with pytest.raises(Rejected) as rejected:
        decoder.decode(frame(build_uplink(OTHER, 3, 1, b"old key")))
    assert rejected.value.reason == "bad_mic"
