"""The simulated LoRa modules: replies to good and bad commands, receive events, and the
same conversations through a real pseudo-terminal opened with pyserial."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from firmware_sim.modules import (
    EMULATORS,
    ModuleEmulator,
    Rak3172Emulator,
    Rn2483Emulator,
    RylrEmulator,
)
from firmware_sim.pty_link import PtyModule

# The LoRaWAN test vector frame of DESIGN.md.
FRAME = bytes.fromhex("40 04030201 80 0100 01 a6946426 15 d6c3b582")


def talk(module: ModuleEmulator, *lines: str) -> list[list[str]]:
    return [module.handle_line(line) for line in lines]


# --- RYLR ---------------------------------------------------------------------------------


def test_rylr_gateway_setup_is_accepted_and_readable_back() -> None:
    m = RylrEmulator()
    assert talk(m, "AT", "AT+BAND=868500000", "AT+PARAMETER=9,7,1,12", "AT+NETWORKID=18", "AT+ADDRESS=2") == [
        ["+OK"]
    ] * 5
    assert talk(m, "AT+BAND?", "AT+PARAMETER?", "AT+NETWORKID?", "AT+ADDRESS?") == [
        ["+BAND=868500000"],
        ["+PARAMETER=9,7,1,12"],
        ["+NETWORKID=18"],
        ["+ADDRESS=2"],
    ]


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        ("XYZ", "+ERR=2"),  # head is not AT
        ("at", "+ERR=2"),
        ("AT+FOO=1", "+ERR=4"),  # unknown command
        ("AT+FOO?", "+ERR=4"),
        ("AT+BAND=100", "+ERR=4"),
        ("AT+BAND=abc", "+ERR=4"),
        ("AT+PARAMETER=12,7,1,12", "+ERR=4"),  # RYLR998 stops at SF11
        ("AT+PARAMETER=9,3,1,12", "+ERR=4"),  # RYLR998 bandwidth index 7..9
        ("AT+PARAMETER=9,7,5,12", "+ERR=4"),
        ("AT+PARAMETER=9,7,1", "+ERR=4"),
        ("AT+PARAMETER=9,7,1,25", "+ERR=18"),  # preamble outside 4..24
        ("AT+NETWORKID=16", "+ERR=4"),  # 3..15 or 18
        ("AT+ADDRESS=65536", "+ERR=4"),
        ("AT+ADDRESS=-1", "+ERR=4"),
        ("AT+SEND=1,5,HELLO!", "+ERR=5"),  # length mismatch
        ("AT+SEND=1,241," + "A" * 241, "+ERR=13"),
    ],
)
def test_rylr998_refuses_bad_commands_and_values(line: str, reply: str) -> None:
    m = RylrEmulator()
    assert m.handle_line(line) == [reply]
    assert m.handle_line("AT+PARAMETER?") == ["+PARAMETER=9,7,1,12"]  # nothing changed


def test_rylr998_preamble_other_than_12_only_on_network_18() -> None:
    m = RylrEmulator()
    assert m.handle_line("AT+PARAMETER=7,7,1,8") == ["+OK"]  # network id is 18 by default
    assert m.handle_line("AT+NETWORKID=5") == ["+OK"]
    assert m.handle_line("AT+PARAMETER=7,7,1,8") == ["+ERR=18"]
    assert m.handle_line("AT+PARAMETER=7,7,1,12") == ["+OK"]


def test_rylr896_ranges_and_missing_equals() -> None:
    m = RylrEmulator("RYLR896")
    assert m.handle_line("AT+PARAMETER=12,0,4,7") == ["+OK"]  # SF12 and 7.8 kHz exist on the 896
    assert m.handle_line("AT+PARAMETER=6,7,1,4") == ["+ERR=4"]
    assert m.handle_line("AT+PARAMETER=9,7,1,12") == ["+ERR=4"]  # preamble 4..7
    assert m.handle_line("AT+NETWORKID=0") == ["+OK"]
    assert m.handle_line("AT+ADDRESS") == ["+ERR=3"]  # no '=' symbol


def test_rylr_other_commands() -> None:
    m = RylrEmulator()
    assert m.handle_line("AT+IPR=57600") == ["+IPR=57600"]
    assert m.handle_line("AT+IPR=12345") == ["+ERR=4"]
    assert m.handle_line("AT+SEND=1,5,HE,LO") == ["+OK"]  # data may hold commas
    assert m.handle_line("AT+RESET") == ["+RESET", "+READY"]
    m.handle_line("AT+ADDRESS=9")
    assert m.handle_line("AT+FACTORY") == ["+FACTORY"]
    assert m.handle_line("AT+ADDRESS?") == ["+ADDRESS=0"]


def test_rylr_receive_event_carries_the_frame_as_ascii_hex() -> None:
    m = RylrEmulator(sender_address=7)
    data = FRAME.hex().upper()
    assert m.receive_event(FRAME, -87, 9.2) == [f"+RCV=7,{2 * len(FRAME)},{data},-87,9"]
    assert m.handle_line("AT+MODE=1") == ["+OK"]  # asleep: hears nothing
    assert m.receive_event(FRAME, -87, 9.2) == []
    with pytest.raises(ValueError):
        m.receive_event(bytes(121), -87, 9.2)  # more than AT+SEND's 240 characters


# --- RAK3172 --------------------------------------------------------------------------------


def p2p_ready() -> Rak3172Emulator:
    m = Rak3172Emulator()
    assert talk(m, "AT", "AT+NWM=0", "AT+P2P=868000000:7:125:0:8:14") == [["OK"]] * 3
    return m


def test_rak_gateway_setup_and_query() -> None:
    m = p2p_ready()
    assert m.handle_line("AT+P2P=?") == ["AT+P2P=868000000:7:125:0:8:14", "OK"]
    assert m.handle_line("AT+P2P=869525000:12:1:3:16:22") == ["OK"]  # bandwidth as index 1
    assert m.handle_line("AT+P2P=?") == ["AT+P2P=869525000:12:250:3:16:22", "OK"]
    assert m.handle_line("AT+PSF=9") == ["OK"]
    assert m.handle_line("AT+PSF=?") == ["AT+PSF=9", "OK"]
    assert m.handle_line("AT+PRECV=65534") == ["OK"]


@pytest.mark.parametrize(
    "p2p",
    [
        "100000000:7:125:0:8:14",  # frequency
        "868000000:4:125:0:8:14",  # sf 5..12
        "868000000:13:125:0:8:14",
        "868000000:7:300:0:8:14",  # bandwidth
        "868000000:7:125:4:8:14",  # cr 0..3
        "868000000:7:125:0:4:14",  # preamble 5..65535
        "868000000:7:125:0:8:23",  # power 5..22
        "868000000:7:125:0:8",
        "868000000:7:125:0:8:14:1:1",
        "x:7:125:0:8:14",
    ],
)
def test_rak_refuses_bad_p2p_parameters(p2p: str) -> None:
    m = p2p_ready()
    assert m.handle_line(f"AT+P2P={p2p}") == ["AT_PARAM_ERROR"]
    assert m.handle_line("AT+P2P=?") == ["AT+P2P=868000000:7:125:0:8:14", "OK"]


def test_rak_unknown_commands_and_lorawan_mode() -> None:
    m = Rak3172Emulator()
    assert m.handle_line("AT+FOO=1") == ["AT_ERROR"]
    assert m.handle_line("HELLO") == ["AT_ERROR"]
    assert m.handle_line("AT+NWM=3") == ["AT_PARAM_ERROR"]
    # A factory module is in LoRaWAN mode: P2P commands are not available until AT+NWM=0.
    assert m.handle_line("AT+NWM=?") == ["AT+NWM=1", "OK"]
    assert m.handle_line("AT+P2P=868000000:7:125:0:8:14") == ["AT_MODE_NO_SUPPORT"]
    assert m.handle_line("AT+PRECV=65534") == ["AT_MODE_NO_SUPPORT"]
    assert m.receive_event(FRAME, -50, 5) == []


def test_rak_refuses_changes_while_in_continuous_receive() -> None:
    m = p2p_ready()
    assert m.handle_line("AT+PRECV=65534") == ["OK"]
    assert m.handle_line("AT+P2P=868100000:7:125:0:8:14") == ["AT_BUSY_ERROR"]
    assert m.handle_line("AT+PSF=8") == ["AT_BUSY_ERROR"]
    assert m.handle_line("AT+PSEND=AABB") == ["AT_BUSY_ERROR"]
    assert m.handle_line("AT+PRECV=65534") == ["AT_BUSY_ERROR"]
    assert m.handle_line("AT+P2P=?") == ["AT+P2P=868000000:7:125:0:8:14", "OK"]  # reading is fine
    assert m.handle_line("AT+PRECV=0") == ["OK"]
    assert m.handle_line("AT+P2P=868100000:7:125:0:8:14") == ["OK"]


def test_rak_receive_events() -> None:
    m = p2p_ready()
    assert m.receive_event(FRAME, -45, 7.0) == []  # not receiving yet
    m.handle_line("AT+PRECV=65534")
    event = [f"+EVT:RXP2P:-45:7:{FRAME.hex().upper()}"]
    assert m.receive_event(FRAME, -45, 7.0) == event
    assert m.receive_event(FRAME, -45, 7.0) == event  # continuous: stays on
    m.handle_line("AT+PRECV=0")
    assert m.receive_event(FRAME, -45, 7.0) == []
    m.handle_line("AT+PRECV=65535")  # until one packet
    assert m.receive_event(FRAME, -45, 7.0) == event
    assert m.receive_event(FRAME, -45, 7.0) == []


# --- RN2483 ---------------------------------------------------------------------------------

RN_SETUP = (
    "mac pause",
    "radio set mod lora",
    "radio set freq 868100000",
    "radio set sf sf7",
    "radio set bw 125",
    "radio set cr 4/5",
    "radio set prlen 8",
    "radio set crc on",
    "radio set sync 34",
    "radio set wdt 0",
)


def rn_ready() -> Rn2483Emulator:
    m = Rn2483Emulator()
    assert m.handle_line("sys get ver") == ["RN2483 1.0.5 Oct 31 2018 15:06:52"]
    assert talk(m, *RN_SETUP) == [["4294967245"]] + [["ok"]] * (len(RN_SETUP) - 1)
    return m


def test_rn2483_setup_and_get() -> None:
    m = rn_ready()
    assert talk(m, "radio get sf", "radio get freq", "radio get cr", "radio get wdt") == [
        ["sf7"],
        ["868100000"],
        ["4/5"],
        ["0"],
    ]


@pytest.mark.parametrize(
    "line",
    [
        "radio set sf sf6",
        "radio set sf 7",
        "radio set bw 200",
        "radio set cr 4/9",
        "radio set freq 915000000",  # not an RN2483 band
        "radio set pwr 16",
        "radio set prlen 65536",
        "radio set crc yes",
        "radio set sync 1234",
        "radio set wdt -1",
        "radio set mod ook",
        "radio set nope 1",
        "radio rx",
        "radio rx x",
        "radio  rx 0",
        "hello",
        "",
    ],
)
def test_rn2483_invalid_param(line: str) -> None:
    assert rn_ready().handle_line(line) == ["invalid_param"]


def test_rn2483_rx_needs_mac_pause() -> None:
    m = Rn2483Emulator()
    assert m.handle_line("radio rx 0") == ["busy"]
    assert m.receive_event(FRAME, -60, 8) == []


def test_rn2483_must_be_rearmed_after_every_packet() -> None:
    m = rn_ready()
    assert m.receive_event(FRAME, -60, 8) == []  # not armed: not delivered
    assert m.handle_line("radio rx 0") == ["ok"]
    assert m.handle_line("radio rx 0") == ["busy"]  # already receiving
    assert m.receive_event(FRAME, -61, -7.6) == [f"radio_rx  {FRAME.hex().upper()}"]
    assert m.receive_event(FRAME, -62, 3) == []  # disarmed by the first packet
    assert m.handle_line("radio get snr") == ["-8"]
    assert m.handle_line("radio get rssi") == ["-61"]
    assert m.handle_line("radio rx 0") == ["ok"]
    assert m.receive_event(FRAME, -63, 4) == [f"radio_rx  {FRAME.hex().upper()}"]
    assert m.handle_line("radio rx 0") == ["ok"]
    assert m.handle_line("radio rxstop") == ["ok"]
    assert m.receive_event(FRAME, -63, 4) == []


def test_rn2483_snr_is_clamped_to_a_signed_byte() -> None:
    m = rn_ready()
    m.handle_line("radio rx 0")
    m.receive_event(FRAME, -40, 300)
    assert m.handle_line("radio get snr") == ["127"]


# --- knobs shared by all dialects -----------------------------------------------------------

GOOD_COMMAND = {"rylr": "AT", "rak3172": "AT", "rn2483": "sys get ver"}


@pytest.mark.parametrize("dialect", sorted(EMULATORS))
def test_dead_module_never_answers(dialect: str) -> None:
    m = EMULATORS[dialect](respond=False)
    assert m.handle_line(GOOD_COMMAND[dialect]) == []
    assert m.receive_event(FRAME, -50, 5) == []


@pytest.mark.parametrize("dialect", sorted(EMULATORS))
def test_injected_error_answers_the_next_command_only(dialect: str) -> None:
    m = EMULATORS[dialect]()
    good = m.handle_line(GOOD_COMMAND[dialect])
    m.inject_error()
    assert m.handle_line(GOOD_COMMAND[dialect]) == [m.ERROR_REPLY]
    assert m.handle_line(GOOD_COMMAND[dialect]) == good
    m.inject_error("+ERR=10")
    assert m.handle_line(GOOD_COMMAND[dialect]) == ["+ERR=10"]


def test_injected_error_does_not_carry_out_the_command() -> None:
    m = RylrEmulator()
    m.inject_error()
    assert m.handle_line("AT+ADDRESS=5") == ["+ERR=15"]
    assert m.handle_line("AT+ADDRESS?") == ["+ADDRESS=0"]


def test_dialect_names_and_default_bauds() -> None:
    assert {name: cls.DEFAULT_BAUD for name, cls in EMULATORS.items()} == {
        "rylr": 115200,
        "rak3172": 115200,
        "rn2483": 57600,
    }


# --- through a real pseudo-terminal ---------------------------------------------------------

TIMEOUT_S = 5.0  # only so a broken test fails instead of hanging


@pytest.fixture
def link_path(tmp_path: Path) -> Path:
    return tmp_path / "ttyLORA"


def open_port(module: PtyModule) -> serial.Serial:
    return serial.Serial(str(module.link or module.port), module.emulator.DEFAULT_BAUD, timeout=TIMEOUT_S)


def command(port: serial.Serial, line: str) -> str:
    port.write(line.encode("ascii") + b"\r\n")
    return readline(port)


def readline(port: serial.Serial) -> str:
    raw = port.read_until(b"\r\n")
    assert raw.endswith(b"\r\n"), f"no complete line within {TIMEOUT_S} s: {raw!r}"
    return raw[:-2].decode("ascii")


@pytest.fixture
def rylr(link_path: Path) -> Iterator[PtyModule]:
    with PtyModule(RylrEmulator(sender_address=3), link=link_path) as module:
        yield module


def test_pty_rylr_setup_and_receive(rylr: PtyModule, link_path: Path) -> None:
    assert link_path.is_symlink() and str(link_path.resolve()) == rylr.port
    with open_port(rylr) as port:
        assert command(port, "AT+BAND=868500000") == "+OK"
        assert command(port, "AT+PARAMETER=9,7,1,12") == "+OK"
        assert rylr.send_frame(FRAME, -91, 6.0)
        line = readline(port)
    assert line == f"+RCV=3,{2 * len(FRAME)},{FRAME.hex().upper()},-91,6"
    head, length, rest = line[5:].split(",", 2)
    assert bytes.fromhex(rest[: int(length)]) == FRAME


def test_pty_rak3172_setup_and_receive() -> None:
    with PtyModule(Rak3172Emulator()) as module, open_port(module) as port:
        assert command(port, "AT+NWM=0") == "OK"
        assert command(port, "AT+P2P=868000000:7:125:0:8:14") == "OK"
        assert command(port, "AT+PRECV=65534") == "OK"
        assert command(port, "AT+P2P=868100000:7:125:0:8:14") == "AT_BUSY_ERROR"
        assert module.send_frame(FRAME, -45, -3.0)
        _, _, rssi, snr, data = readline(port).split(":")
    assert (int(rssi), int(snr), bytes.fromhex(data)) == (-45, -3, FRAME)


def test_pty_rn2483_setup_receive_and_rearm() -> None:
    with PtyModule(Rn2483Emulator()) as module, open_port(module) as port:
        assert command(port, "mac pause") == "4294967245"
        assert command(port, "radio set sf sf9") == "ok"
        assert command(port, "radio set sf sf13") == "invalid_param"
        assert command(port, "radio rx 0") == "ok"
        assert module.send_frame(FRAME, -70, 4.0)
        assert readline(port) == f"radio_rx  {FRAME.hex().upper()}"
        assert not module.send_frame(FRAME, -70, 4.0)  # not re-armed: nothing emitted
        assert command(port, "radio get snr") == "4"
        assert command(port, "radio get rssi") == "-70"
        assert command(port, "radio rx 0") == "ok"


def test_pty_accepts_commands_split_across_writes_and_bare_line_ends() -> None:
    with PtyModule(RylrEmulator()) as module, open_port(module) as port:
        port.write(b"AT+ADD")
        port.flush()
        port.write(b"RESS=4\r")
        assert readline(port) == "+OK"
        port.write(b"\nAT+ADDRESS?\n")
        assert readline(port) == "+ADDRESS=4"


def test_pty_events_are_lost_while_nobody_has_the_port_open() -> None:
    with PtyModule(Rak3172Emulator(network_mode=0)) as module:
        module.emulator.handle_line("AT+PRECV=65534")
        assert not module.send_frame(FRAME, -45, 1.0)  # the module sends, nobody listens
        with open_port(module) as port:
            assert command(port, "AT") == "OK"  # the first line read is the reply, no stale event
        # Closed again, then reopened: the module still answers (reader thread survived EIO).
        with open_port(module) as port:
            assert command(port, "AT") == "OK"


def test_pty_dead_module_is_silent() -> None:
    with PtyModule(RylrEmulator(respond=False)) as module:
        with serial.Serial(module.port, 115200, timeout=0.2) as port:
            port.write(b"AT\r\n")
            assert port.read(10) == b""
        assert not module.send_frame(FRAME, -45, 1.0)


def test_pty_close_looks_like_an_unplugged_module(link_path: Path) -> None:
    module = PtyModule(Rn2483Emulator(), link=link_path)
    with open_port(module) as port:
        assert command(port, "sys get ver").startswith("RN2483")
        module.close()
        assert not link_path.exists() and not link_path.is_symlink()
        with pytest.raises(serial.SerialException):
            port.read(1)
    assert not module.send_frame(FRAME, -45, 1.0)
    module.close()  # idempotent


def test_pty_replaces_a_stale_link(link_path: Path) -> None:
    link_path.symlink_to("/dev/pts/does-not-exist")
    with PtyModule(RylrEmulator(), link=link_path) as module:
        assert str(link_path.resolve()) == module.port
