"""The serial link to the LoRa module: open the port, run the set-up handshake, read lines."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator

import serial

from gateway.config import SerialConfig
from gateway.radio.dialects import Dialect
from gateway.records import Rejected

MAX_LINE = 1024  # a 255-byte frame hex-encoded with its envelope fits well inside
# A read returns as soon as a byte arrives; the timeout only paces an idle loop (the daemon's
# half-second housekeeping tick, its stop flag). 0.1 woke a quiet gateway ten times a second.
READ_TIMEOUT_S = 0.5
# Receive events can arrive while set-up replies are awaited (a module left receiving).
_EVENT_PREFIXES = ("+RCV=", "+EVT:", "radio_rx", "radio_err")


class ModuleError(Exception):
    """The module cannot be opened or did not answer its set-up as expected."""


class SerialLost(Exception):
    """The port went away (USB unplugged, pty closed)."""


class SerialLink:
    def __init__(self, cfg: SerialConfig, dialect: Dialect) -> None:
        self.cfg = cfg
        self.dialect = dialect
        self._port: serial.Serial | None = None
        self._buffer = bytearray()
        self._unread: deque[str] = deque()  # set-up lines read but not yet consumed
        self._discarding = False  # inside an overlong line, until its end

    @property
    def is_open(self) -> bool:
        return self._port is not None

    def describe(self) -> str:
        return f"{self.cfg.dialect} module on {self.cfg.port} at {self.cfg.effective_baud} baud"

    def _open_port(self) -> serial.Serial:
        if not os.path.exists(self.cfg.port):
            raise ModuleError(f"{self.describe()}: no such port (is the module plugged in? ls /dev/serial/by-id/)")
        try:
            return serial.Serial(self.cfg.port, self.cfg.effective_baud, timeout=READ_TIMEOUT_S, write_timeout=2)
        except (serial.SerialException, OSError) as e:
            raise ModuleError(f"{self.describe()}: cannot open port: {e}") from None

    def probe(self) -> None:
        """Open and close the port without a word to the module (check-config); ModuleError if it cannot."""
        self._open_port().close()

    def open(self) -> None:
        """Open the port and configure the module; ModuleError says what went wrong and where."""
        self._port = self._open_port()
        self._buffer.clear()
        self._unread.clear()
        self._discarding = False
        try:
            self._port.reset_input_buffer()
            for first, step in enumerate(self.dialect.setup(self.cfg)):
                self.write(step.command)
                reply = self._await_reply(self.cfg.reply_timeout_s)
                if first == 0 and reply is not None and not step.accept(reply):
                    # The flush above can cut a receive event in half; its tail, with no event
                    # prefix, is then the first line read. The real reply follows it.
                    reply = self._await_reply(self.cfg.reply_timeout_s) or reply
                if reply is None:
                    raise ModuleError(
                        f"{self.describe()}: no answer to {step.command!r} within "
                        f"{self.cfg.reply_timeout_s:g} s (is it the right port, baud and dialect?)"
                    )
                if not step.accept(reply):
                    raise ModuleError(
                        f"{self.describe()}: {step.command!r} answered {reply!r}, expected {step.expect}"
                    )
        except (serial.SerialException, OSError) as e:
            self.close()
            raise ModuleError(f"{self.describe()}: lost during set-up: {e}") from None
        except ModuleError:
            self.close()
            raise

    def _await_reply(self, timeout: float) -> str | None:
        """The next line that is not a receive event; lines read past it wait for the next call."""
        deadline = time.monotonic() + timeout
        while True:
            while self._unread:
                line = self._unread.popleft()
                if not line.startswith(_EVENT_PREFIXES):
                    return line
            if time.monotonic() >= deadline:
                return None
            for raw in self._read_lines():
                if isinstance(raw, bytes) and (text := raw.decode("ascii", "replace").strip()):
                    self._unread.append(text)

    def write(self, command: str) -> None:
        assert self._port is not None
        self._port.write(command.encode("ascii") + b"\r\n")

    def _read_lines(self) -> list[bytes | Rejected]:
        """One read from the port, split into complete lines; overlong lines become rejections."""
        assert self._port is not None
        chunk = self._port.read(max(1, self._port.in_waiting))
        if not chunk:
            return []
        self._buffer += chunk
        out: list[bytes | Rejected] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE:
                    if not self._discarding:
                        out.append(Rejected("line_too_long", f"over {MAX_LINE} bytes without a line end"))
                    self._discarding = True
                    self._buffer.clear()
                return out
            line = bytes(self._buffer[:end]).rstrip(b"\r")
            del self._buffer[: end + 1]
            if self._discarding:
                self._discarding = False
                continue
            if len(line) > MAX_LINE:
                out.append(Rejected("line_too_long", f"{len(line)} bytes"))
            elif line.strip():
                out.append(line)

    def lines(self) -> Iterator[list[bytes | Rejected]]:
        """Batches of lines as they arrive (an empty batch on a quiet read); SerialLost when the port goes."""
        while True:
            try:
                yield self._read_lines()
            except (serial.SerialException, OSError) as e:
                self.close()
                raise SerialLost(f"{self.describe()}: {e}") from None

    def close(self) -> None:
        if self._port is not None:
            try:
                self._port.close()
            except (serial.SerialException, OSError):
                pass
            self._port = None
