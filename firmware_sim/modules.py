"""I/O-free emulators of the serial LoRa modules the gateway drives.

Each emulator takes the command lines the gateway writes (without CR/LF) and answers with
the lines the real module would send, and turns a LoRa packet it hears into the module's
receive event. State (settings, receive mode) follows the real modules, including their
refusals, so the gateway's set-up and recovery paths are exercised without hardware.
"""

from __future__ import annotations

import string
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar, Literal

_HEX_DIGITS = frozenset(string.hexdigits)


def _is_hex(text: str) -> bool:
    return bool(text) and set(text) <= _HEX_DIGITS


def _parse_int(text: str, low: int, high: int) -> int | None:
    """A decimal integer in [low, high], or None; no spaces, signs only as '-'."""
    digits = text[1:] if text.startswith("-") else text
    if not digits.isdigit() or not digits.isascii():
        return None
    value = int(text)
    return value if low <= value <= high else None


class ModuleEmulator(ABC):
    DIALECT: ClassVar[str]
    DEFAULT_BAUD: ClassVar[int]
    ERROR_REPLY: ClassVar[str]  # what inject_error() answers by default
    MAX_FRAME: ClassVar[int] = 255  # LoRa payload limit; modules may carry less

    def __init__(self, *, respond: bool = True) -> None:
        self.respond = respond  # False: a dead module that never answers nor reports
        self._injected: str | None = None

    def inject_error(self, reply: str | None = None) -> None:
        """Answer the next command with `reply` (default: the module's generic error),
        without carrying the command out."""
        self._injected = self.ERROR_REPLY if reply is None else reply

    def handle_line(self, line: str) -> list[str]:
        if not self.respond:
            return []
        if self._injected is not None:
            reply, self._injected = self._injected, None
            return [reply]
        return self._command(line)

    def receive_event(self, frame: bytes, rssi: int, snr: float) -> list[str]:
        """The lines the module emits on hearing `frame`; [] when it is not listening."""
        if not 1 <= len(frame) <= self.MAX_FRAME:
            raise ValueError(f"{self.DIALECT} cannot carry a {len(frame)}-byte frame (1..{self.MAX_FRAME})")
        if not self.respond:
            return []
        return self._receive(bytes(frame), int(rssi), round(snr))

    @abstractmethod
    def _command(self, line: str) -> list[str]: ...

    @abstractmethod
    def _receive(self, frame: bytes, rssi: int, snr: int) -> list[str]: ...


# --- REYAX RYLR896 / RYLR998 ------------------------------------------------------------

RylrModel = Literal["RYLR998", "RYLR896"]


class RylrEmulator(ModuleEmulator):
    """REYAX RYLR998 (default) or RYLR896: `AT+...` commands answered `+OK` / `+ERR=n`.

    Ranges from the REYAX AT command guides. RYLR998: SF 5..11, BW index 7..9, network id
    3..15 or 18, and a preamble other than 12 only while the network id is 18 (+ERR=18).
    RYLR896: SF 7..12, BW index 0..9, preamble 4..7, network id 0..16, and +ERR=3 for a
    setting without '='. Out-of-range values answer +ERR=4 (the guides give no code).
    """

    DIALECT = "rylr"
    DEFAULT_BAUD = 115200
    ERROR_REPLY = "+ERR=15"  # "unknown error"
    MAX_FRAME = 120  # AT+SEND carries at most 240 characters: 120 bytes as hex

    _BAUDS = (300, 1200, 4800, 9600, 19200, 28800, 38400, 57600, 115200)

    def __init__(self, model: RylrModel = "RYLR998", *, sender_address: int = 1, respond: bool = True) -> None:
        super().__init__(respond=respond)
        self.model = model
        self.sender_address = sender_address  # the node address reported in +RCV
        self._factory_reset()

    def _factory_reset(self) -> None:
        self.band = 915_000_000
        self.address = 0
        if self.model == "RYLR998":
            self.parameter = (9, 7, 1, 12)
            self.network_id = 18
            self.rf_power = 22
        else:
            self.parameter = (12, 7, 1, 4)
            self.network_id = 0
            self.rf_power = 15
        self.mode = "0"
        self.ipr = self.DEFAULT_BAUD

    def _command(self, line: str) -> list[str]:
        if not line.startswith("AT"):
            return ["+ERR=2"]
        body = line[2:]
        if body == "":
            return ["+OK"]
        if not body.startswith("+"):
            return ["+ERR=4"]
        name, eq, value = body[1:].partition("=")
        if not eq and name.endswith("?"):
            return self._query(name[:-1])
        if not eq:
            if name == "RESET":
                self.mode = "0"
                return ["+RESET", "+READY"]
            if name == "FACTORY":
                self._factory_reset()
                return ["+FACTORY"]
            return ["+ERR=3" if self.model == "RYLR896" and name in self._SETTERS else "+ERR=4"]
        setter = self._SETTERS.get(name)
        if setter is None:
            return ["+ERR=4"]
        return setter(self, value)

    def _query(self, name: str) -> list[str]:
        p = self.parameter
        values = {
            "BAND": str(self.band),
            "PARAMETER": f"{p[0]},{p[1]},{p[2]},{p[3]}",
            "NETWORKID": str(self.network_id),
            "ADDRESS": str(self.address),
            "CRFOP": str(self.rf_power),
            "MODE": self.mode,
            "IPR": str(self.ipr),
            "VER": "RYLR998_REYAX_V1.2.2" if self.model == "RYLR998" else "RYLR89C_V1.2.7",
            "UID": "000000000000000000000000",
        }
        if name not in values:
            return ["+ERR=4"]
        return [f"+{name}={values[name]}"]

    def _set_band(self, value: str) -> list[str]:
        freq_text, _, memory = value.partition(",")
        low, high = (820_000_000, 960_000_000) if self.model == "RYLR998" else (862_000_000, 1_020_000_000)
        freq = _parse_int(freq_text, low, high)
        # ",M" (store in flash) exists from RYLR998 firmware 1.2.0 only.
        if freq is None or (memory and (memory != "M" or self.model != "RYLR998")):
            return ["+ERR=4"]
        self.band = freq
        return ["+OK"]

    def _set_parameter(self, value: str) -> list[str]:
        fields = value.split(",")
        if len(fields) != 4:
            return ["+ERR=4"]
        if self.model == "RYLR998":
            sf = _parse_int(fields[0], 5, 11)
            bw = _parse_int(fields[1], 7, 9)
        else:
            sf = _parse_int(fields[0], 7, 12)
            bw = _parse_int(fields[1], 0, 9)
        cr = _parse_int(fields[2], 1, 4)
        pre_range = (4, 24) if self.model == "RYLR998" else (4, 7)
        preamble = _parse_int(fields[3], *pre_range)
        if sf is None or bw is None or cr is None:
            return ["+ERR=4"]
        if self.model == "RYLR998" and (preamble is None or (preamble != 12 and self.network_id != 18)):
            return ["+ERR=18"]
        if preamble is None:
            return ["+ERR=4"]
        self.parameter = (sf, bw, cr, preamble)
        return ["+OK"]

    def _set_network_id(self, value: str) -> list[str]:
        allowed = (*range(3, 16), 18) if self.model == "RYLR998" else range(17)
        nid = _parse_int(value, 0, 18)
        if nid is None or nid not in allowed:
            return ["+ERR=4"]
        self.network_id = nid
        return ["+OK"]

    def _set_address(self, value: str) -> list[str]:
        address = _parse_int(value, 0, 65535)
        if address is None:
            return ["+ERR=4"]
        self.address = address
        return ["+OK"]

    def _set_rf_power(self, value: str) -> list[str]:
        power = _parse_int(value, 0, 22 if self.model == "RYLR998" else 15)
        if power is None:
            return ["+ERR=4"]
        self.rf_power = power
        return ["+OK"]

    def _set_mode(self, value: str) -> list[str]:
        # RYLR998 mode 2 is "smart receiving": AT+MODE=2,<rx ms>,<sleep ms>, 30..60000 each.
        fields = value.split(",")
        if fields == ["0"] or fields == ["1"]:
            self.mode = fields[0]
            return ["+OK"]
        if (
            self.model == "RYLR998"
            and len(fields) in (1, 3)
            and fields[0] == "2"
            and all(_parse_int(f, 30, 60000) is not None for f in fields[1:])
        ):
            self.mode = "2"
            return ["+OK"]
        return ["+ERR=20" if self.model == "RYLR998" and fields[0] == "2" else "+ERR=4"]

    def _set_ipr(self, value: str) -> list[str]:
        baud = _parse_int(value, 300, 115200)
        if baud not in self._BAUDS:
            return ["+ERR=4"]
        self.ipr = baud
        return [f"+IPR={baud}"]

    def _send(self, value: str) -> list[str]:
        # AT+SEND=<address>,<length>,<data>: data may contain commas.
        fields = value.split(",", 2)
        if len(fields) != 3 or _parse_int(fields[0], 0, 65535) is None:
            return ["+ERR=4"]
        length = _parse_int(fields[1], 0, 10_000)
        if length is None:
            return ["+ERR=4"]
        if length > 240:
            return ["+ERR=13"]
        if length != len(fields[2]):
            return ["+ERR=5" if self.model == "RYLR998" else "+ERR=4"]
        return ["+OK"]

    _SETTERS: ClassVar[dict[str, Callable[[RylrEmulator, str], list[str]]]] = {
        "BAND": _set_band,
        "PARAMETER": _set_parameter,
        "NETWORKID": _set_network_id,
        "ADDRESS": _set_address,
        "CRFOP": _set_rf_power,
        "MODE": _set_mode,
        "IPR": _set_ipr,
        "SEND": _send,
    }

    def _receive(self, frame: bytes, rssi: int, snr: int) -> list[str]:
        if self.mode == "1":  # sleeping
            return []
        data = frame.hex().upper()  # the node sends the frame as ASCII hex
        return [f"+RCV={self.sender_address},{len(data)},{data},{rssi},{snr}"]


# --- RAK3172 with RUI3, LoRa P2P ---------------------------------------------------------


class Rak3172Emulator(ModuleEmulator):
    """RAK3172 (RUI3 firmware) in LoRa P2P: `OK`, `AT_ERROR`, `AT_PARAM_ERROR`,
    `AT_BUSY_ERROR` while receiving, `AT_MODE_NO_SUPPORT` for P2P commands in LoRaWAN mode.

    Ships in LoRaWAN mode (NWM=1) like a factory module: the gateway must send AT+NWM=0.
    """

    DIALECT = "rak3172"
    DEFAULT_BAUD = 115200
    ERROR_REPLY = "AT_ERROR"

    # RUI3 takes the bandwidth as an index 0..9 or in kHz; `AT+P2P=?` reports kHz.
    _BANDWIDTHS_KHZ = ("125", "250", "500", "7.8", "10.4", "15.63", "20.83", "31.25", "41.67", "62.5")
    _RX_STOP, _RX_CONTINUOUS = 0, 65534  # AT+PRECV; 65535 and 1..65533 ms receive one packet

    def __init__(self, *, network_mode: int = 1, respond: bool = True) -> None:
        super().__init__(respond=respond)
        self.network_mode = network_mode  # 0 P2P, 1 LoRaWAN, 2 FSK
        self.frequency = 868_000_000
        self.sf = 7
        self.bandwidth = "125"
        self.cr = 0  # 0..3 = 4/5..4/8
        self.preamble = 8
        self.tx_power = 14
        self.rx_window: int = self._RX_STOP

    @property
    def receiving(self) -> bool:
        return self.rx_window != self._RX_STOP

    def _p2p_value(self) -> str:
        return f"{self.frequency}:{self.sf}:{self.bandwidth}:{self.cr}:{self.preamble}:{self.tx_power}"

    def _command(self, line: str) -> list[str]:
        if line == "AT":
            return ["OK"]
        if not line.startswith("AT+"):
            return ["AT_ERROR"]
        name, eq, value = line[3:].partition("=")
        if not eq and name.endswith("?"):  # AT+XXX? prints the command's help
            name = name[:-1]
            if name not in self._HELP:
                return ["AT_ERROR"]
            return [f"AT+{name}: {self._HELP[name]}", "OK"]
        if name not in self._HELP:
            return ["AT_ERROR"]
        if not eq:  # none of the emulated commands runs without a value
            return ["AT_ERROR"]
        if name == "NWM":
            return self._nwm(value)
        if name == "VER":
            return ["AT+VER=RUI_4.0.6_RAK3172-E", "OK"] if value == "?" else ["AT_PARAM_ERROR"]
        if self.network_mode != 0:
            return ["AT_MODE_NO_SUPPORT"]
        if value == "?" and name != "PSEND":
            return [f"AT+{name}={self._current(name)}", "OK"]
        if name == "PRECV":
            return self._precv(value)
        if self.receiving:  # no sending and no parameter change while the receiver is on
            return ["AT_BUSY_ERROR"]
        if name == "PSEND":
            ok = _is_hex(value) and len(value) % 2 == 0 and len(value) <= 2 * self.MAX_FRAME
            return ["OK", "+EVT:TXP2P DONE"] if ok else ["AT_PARAM_ERROR"]
        if name == "P2P":
            fields = value.replace(",", ":").split(":")
            if len(fields) != 6:
                return ["AT_PARAM_ERROR"]
            parsed = [self._VALIDATORS[key](self, field) for key, field in zip(self._P2P_FIELDS, fields, strict=True)]
            if any(v is None for v in parsed):
                return ["AT_PARAM_ERROR"]
            for key, v in zip(self._P2P_FIELDS, parsed, strict=True):
                setattr(self, key, v)
            return ["OK"]
        key = self._SINGLE[name]
        parsed_one = self._VALIDATORS[key](self, value)
        if parsed_one is None:
            return ["AT_PARAM_ERROR"]
        setattr(self, key, parsed_one)
        return ["OK"]

    def _nwm(self, value: str) -> list[str]:
        if value == "?":
            return [f"AT+NWM={self.network_mode}", "OK"]
        mode = _parse_int(value, 0, 2)
        if mode is None:
            return ["AT_PARAM_ERROR"]
        if mode != self.network_mode:
            # The real module restarts into the new mode; a restart stops the receiver.
            self.network_mode = mode
            self.rx_window = self._RX_STOP
        return ["OK"]

    def _precv(self, value: str) -> list[str]:
        window = _parse_int(value, 0, 65535)
        if window is None:
            return ["AT_PARAM_ERROR"]
        if window != self._RX_STOP and self.receiving:
            return ["AT_BUSY_ERROR"]
        self.rx_window = window
        return ["OK"]

    def _current(self, name: str) -> str:
        if name == "P2P":
            return self._p2p_value()
        if name == "PRECV":
            return str(self.rx_window)
        return str(getattr(self, self._SINGLE[name]))

    def _bandwidth(self, text: str) -> str | None:
        index = _parse_int(text, 0, 9)
        if index is not None:
            return self._BANDWIDTHS_KHZ[index]
        return text if text in self._BANDWIDTHS_KHZ else None

    _VALIDATORS: ClassVar[dict[str, Callable[[Rak3172Emulator, str], object]]] = {
        "frequency": lambda self, t: _parse_int(t, 150_000_000, 960_000_000),
        "sf": lambda self, t: _parse_int(t, 5, 12),
        "bandwidth": _bandwidth,
        "cr": lambda self, t: _parse_int(t, 0, 3),
        "preamble": lambda self, t: _parse_int(t, 5, 65535),
        "tx_power": lambda self, t: _parse_int(t, 5, 22),
    }
    _P2P_FIELDS = ("frequency", "sf", "bandwidth", "cr", "preamble", "tx_power")
    _SINGLE = {"PFREQ": "frequency", "PSF": "sf", "PBW": "bandwidth", "PCR": "cr", "PPL": "preamble", "PTP": "tx_power"}
    _HELP = {
        "NWM": "get or set the network working mode (0 = P2P_LORA, 1 = LoRaWAN, 2 = P2P_FSK)",
        "P2P": "get or set all P2P parameters",
        "PFREQ": "get or set the P2P frequency",
        "PSF": "get or set the P2P spreading factor (5-12)",
        "PBW": "get or set the P2P bandwidth",
        "PCR": "get or set the P2P code rate (0=4/5, 1=4/6, 2=4/7, 3=4/8)",
        "PPL": "get or set the P2P preamble length (5-65535)",
        "PTP": "get or set the P2P TX power (5-22)",
        "PRECV": "enter P2P RX mode for a period of time (ms)",
        "PSEND": "send data in P2P mode",
        "VER": "get the version of the firmware",
    }

    def _receive(self, frame: bytes, rssi: int, snr: int) -> list[str]:
        if self.network_mode != 0 or not self.receiving:
            return []
        if self.rx_window != self._RX_CONTINUOUS:  # a single-packet window closes on reception
            self.rx_window = self._RX_STOP
        return [f"+EVT:RXP2P:{rssi}:{snr}:{frame.hex().upper()}"]


# --- Microchip RN2483 / RN2903 -----------------------------------------------------------

RnModel = Literal["RN2483", "RN2903"]


class Rn2483Emulator(ModuleEmulator):
    """Microchip RN2483 (default) or RN2903, firmware 1.0.5, in raw radio mode.

    `radio rx 0` arms one reception (`busy` until `mac pause`); the packet comes as
    `radio_rx  <HEX>` and disarms, so the gateway re-arms after every packet. The event
    has no signal figures: `radio get snr` / `radio get rssi` give the last packet's.
    """

    DIALECT = "rn2483"
    DEFAULT_BAUD = 57600
    ERROR_REPLY = "invalid_param"

    MAC_PAUSE_MS = "4294967245"  # what `mac pause` answers while the LoRaWAN stack is idle
    _FREQ_RANGES = {
        "RN2483": ((433_050_000, 434_790_000), (863_000_000, 870_000_000)),
        "RN2903": ((902_000_000, 928_000_000),),
    }
    _PWR_RANGES = {"RN2483": (-3, 15), "RN2903": (2, 20)}

    def __init__(self, model: RnModel = "RN2483", *, respond: bool = True) -> None:
        super().__init__(respond=respond)
        self.model = model
        self._reset()

    def _reset(self) -> None:
        self.mac_paused = False
        self.armed = False
        self.settings: dict[str, str] = {
            "mod": "lora",
            "freq": "868100000" if self.model == "RN2483" else "923300000",
            "pwr": "1" if self.model == "RN2483" else "2",
            "sf": "sf12",
            "bw": "125",
            "cr": "4/5",
            "prlen": "8",
            "crc": "on",
            "iqi": "off",
            "sync": "34",
            "wdt": "15000",
        }
        self.last_snr = -128
        self.last_rssi = -128

    @property
    def version(self) -> str:
        return f"{self.model} 1.0.5 Oct 31 2018 15:06:52"

    def _command(self, line: str) -> list[str]:
        words = line.split(" ")
        match words:
            case ["sys", "get", "ver"]:
                return [self.version]
            case ["sys", "reset"]:
                self._reset()
                return [self.version]
            case ["sys", "get", "hweui"]:
                return ["0004A30B001A2B3C"]
            case ["sys", "get", "vdd"]:
                return ["3300"]
            case ["mac", "pause"]:
                self.mac_paused = True
                return [self.MAC_PAUSE_MS]
            case ["mac", "resume"]:
                self.mac_paused = self.armed = False
                return ["ok"]
            case ["radio", "set", param, value]:
                return self._radio_set(param, value)
            case ["radio", "get", "snr"]:
                return [str(self.last_snr)]
            case ["radio", "get", "rssi"]:
                return [str(self.last_rssi)]
            case ["radio", "get", param] if param in self.settings:
                return [self.settings[param]]
            case ["radio", "rx", window]:
                if _parse_int(window, 0, 65535) is None:
                    return ["invalid_param"]
                if not self.mac_paused or self.armed:
                    return ["busy"]
                self.armed = True
                return ["ok"]
            case ["radio", "rxstop"]:
                self.armed = False
                return ["ok"]
            case ["radio", "tx", data]:
                if not _is_hex(data) or len(data) % 2 or len(data) > 2 * self.MAX_FRAME:
                    return ["invalid_param"]
                if not self.mac_paused or self.armed:
                    return ["busy"]
                return ["ok", "radio_tx_ok"]
        return ["invalid_param"]

    def _radio_set(self, param: str, value: str) -> list[str]:
        valid: bool
        match param:
            case "mod":
                valid = value in ("lora", "fsk")
            case "freq":
                freq = _parse_int(value, 0, 1_000_000_000)
                valid = freq is not None and any(lo <= freq <= hi for lo, hi in self._FREQ_RANGES[self.model])
            case "pwr":
                valid = _parse_int(value, *self._PWR_RANGES[self.model]) is not None
            case "sf":
                valid = value in {f"sf{n}" for n in range(7, 13)}
            case "bw":
                valid = value in ("125", "250", "500")
            case "cr":
                valid = value in ("4/5", "4/6", "4/7", "4/8")
            case "prlen":
                valid = _parse_int(value, 0, 65535) is not None
            case "crc" | "iqi":
                valid = value in ("on", "off")
            case "sync":
                # LoRa takes a one-byte sync word; FSK up to eight bytes.
                valid = _is_hex(value) and len(value) <= (2 if self.settings["mod"] == "lora" else 16)
            case "wdt":
                valid = _parse_int(value, 0, 4_294_967_295) is not None
            case _:
                valid = False
        if not valid:
            return ["invalid_param"]
        self.settings[param] = value
        return ["ok"]

    def _receive(self, frame: bytes, rssi: int, snr: int) -> list[str]:
        if not self.armed or self.settings["mod"] != "lora":
            return []
        self.armed = False
        self.last_rssi = rssi
        self.last_snr = max(-128, min(127, snr))
        return [f"radio_rx  {frame.hex().upper()}"]


EMULATORS: dict[str, type[ModuleEmulator]] = {
    cls.DIALECT: cls for cls in (RylrEmulator, Rak3172Emulator, Rn2483Emulator)
}
