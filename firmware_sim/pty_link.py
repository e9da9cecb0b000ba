"""A module emulator behind a pseudo-terminal, so the gateway opens it like a USB serial port."""

from __future__ import annotations

import errno
import os
import re
import select
import threading
import time
import tty
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from firmware_sim.modules import ModuleEmulator

_LINE_END = re.compile(rb"\r\n|\r|\n")
_MAX_LINE = 1024  # a real module's command buffer is small; drop runaway input rather than grow
_POLL_MS = 50
_NO_READER_SLEEP_S = 0.05
_FINISH_LINE_S = 1.0  # a reader stalled longer than this is gone


class PtyModule:
    """Serve `emulator` on a pty: `.port` is the path the gateway opens (any baud works).

    Replies and receive events end in CR LF. Events sent while nobody has the port open
    are lost, as a real module's output is. `close()` is the module being unplugged.
    """

    def __init__(self, emulator: ModuleEmulator, link: Path | None = None) -> None:
        self.emulator = emulator
        self._master, slave = os.openpty()
        # Raw and without echo from the first open, whatever the opener configures.
        tty.setraw(slave)
        self.port = os.ttyname(slave)
        # Keep no slave fd: the master then sees EIO/HUP whenever the gateway has the port
        # closed, which is how send_frame knows nobody listens.
        os.close(slave)
        os.set_blocking(self._master, False)
        self.link = link
        if link is not None:
            try:
                self._make_link(link)
            except OSError:
                os.close(self._master)
                raise
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=f"pty-{emulator.DIALECT}", daemon=True)
        self._thread.start()

    def _make_link(self, link: Path) -> None:
        if link.exists() and not link.is_symlink():
            raise FileExistsError(f"{link} exists and is not a symlink")
        # Replace a stale link from an earlier run atomically.
        tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(self.port)
        os.replace(tmp, link)

    def _peer_open(self) -> bool:
        poller = select.poll()
        poller.register(self._master, select.POLLIN)
        return not any(event & select.POLLHUP for _, event in poller.poll(0))

    def _write_lines(self, lines: list[str]) -> bool:
        """Write under self._lock. A full buffer (gateway not reading) drops whole lines, like a
        module whose UART has no flow control; a line once begun is finished, never cut."""
        for line in lines:
            data = line.encode("ascii") + b"\r\n"
            try:
                written = os.write(self._master, data)
            except OSError:  # EAGAIN on a full buffer, EIO if the gateway just closed the port
                return False
            if written < len(data) and not self._finish(data[written:]):
                return False
        return True

    def _finish(self, rest: bytes) -> bool:
        poller = select.poll()
        poller.register(self._master, select.POLLOUT)
        deadline = time.monotonic() + _FINISH_LINE_S
        while rest and time.monotonic() < deadline:
            if not poller.poll(_POLL_MS):
                continue
            try:
                rest = rest[os.write(self._master, rest):]
            except BlockingIOError:
                continue
            except OSError:
                return False
        return not rest

    def send_frame(self, frame: bytes, rssi: int, snr: float, garble: Callable[[str], str] | None = None) -> bool:
        """The module hears `frame`; True if it emitted an event and someone had the port open.
        `garble` changes each event line on its way over the wire (noise on the UART)."""
        with self._lock:
            if self._closed:
                return False
            # The module hears the packet (and an RN2483 disarms) even if nobody reads the port.
            lines = self.emulator.receive_event(frame, rssi, snr)
            if garble is not None:
                lines = [garble(line) for line in lines]
            return bool(lines) and self._peer_open() and self._write_lines(lines)

    def _serve(self) -> None:
        poller = select.poll()
        poller.register(self._master, select.POLLIN)
        pending = b""
        while not self._stop.is_set():
            if not poller.poll(_POLL_MS):
                continue
            try:
                chunk = os.read(self._master, 4096)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise
                # Nobody has the slave open (before the gateway opens it, or after it closed):
                # drop any half line and wait rather than spin on the hang-up.
                pending = b""
                self._stop.wait(_NO_READER_SLEEP_S)
                continue
            *lines, pending = _LINE_END.split(pending + chunk)
            if len(pending) > _MAX_LINE:
                pending = b""
            for raw in lines:
                if raw:  # CR LF pairs split across reads leave empty pieces
                    self._handle(raw.decode("ascii", errors="replace"))

    def _handle(self, line: str) -> None:
        with self._lock:
            replies = self.emulator.handle_line(line)
            if replies:
                self._write_lines(replies)

    def close(self) -> None:
        """Unplug: the gateway's reads on the port fail from now on. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        self._thread.join()
        os.close(self._master)
        if self.link is not None and self.link.is_symlink() and os.readlink(self.link) == self.port:
            self.link.unlink()

    def __enter__(self) -> PtyModule:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
