"""`lora-gateway demo` as a user runs it: a real process, stopped with Ctrl-C (SIGINT to its process group,
as a terminal sends it); read as plain lines from a pipe, and as a redrawn view on a pseudo-terminal."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


SPEED = 1800
DEMO = [sys.executable, "-m", "gateway", "demo", "--speed", str(SPEED)]


class Output:
    """Reads a file descriptor without blocking the test forever."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.text = ""

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while (m := re.search(pattern, self.text)) is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {pattern!r} within {timeout} s; output:\n{self.text[-3000:]}")
            if select.select([self.fd], [], [], left)[0]:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # the pty's other end closed
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"output ended before {pattern!r}:\n{self.text[-3000:]}")
                self.text += chunk.decode(errors="replace")
        return m

    def rest(self) -> str:
        while select.select([self.fd], [], [], 5)[0]:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            self.text += chunk.decode(errors="replace")
        return self.text


def ctrl_c(proc: subprocess.Popen) -> int:
    os.killpg(proc.pid, signal.SIGINT)
    return proc.wait(timeout=120)


@contextmanager
def piped_demo(cwd: Path) -> Iterator[tuple[subprocess.Popen[bytes], Output]]:
    """The demo started in `cwd`, its output read from a pipe; killed with its group if a test leaves it running."""
    proc = subprocess.Popen(DEMO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd)
    try:
        yield proc, Output(proc.stdout.fileno())  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_demo_stops_cleanly_when_its_gateway_is_stopped_first(tmp_path: Path) -> None:
    # The race behind a Ctrl-C that ended the demo with "the gateway exited with 0" and status 1: the
    # gateway, in the demo's process group, had stopped on the signal before the demo handled its own.
    with piped_demo(tmp_path) as (proc, out):
        workdir = out.wait_for(r"files in (\S+)", 25)[1]
        out.wait_for(r"(?m)^pump-house +ok +score", 30)
        (gateway,) = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and
                      f"{workdir}/config.toml".encode() in _cmdline(p)]
        os.kill(gateway, signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    text = out.rest()
    assert text.rstrip().endswith("demo: stopped") and "the gateway exited" not in text
    assert processes_using(workdir) == [] and not Path(workdir).exists()


def _cmdline(entry: Path) -> bytes:
    try:
        return (entry / "cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""


def processes_using(workdir: str) -> list[str]:
    """Command lines of live processes that name the demo's working directory (its gateway, its broker)."""
    return [line.decode() for entry in Path("/proc").iterdir() if workdir.encode() in (line := _cmdline(entry))]


def test_demo_shows_devices_and_the_alert_then_stops_on_ctrl_c(tmp_path: Path) -> None:
    # Started where a `models/` package lies (a repository root, a copy of one): the gateway the demo
    # starts must still import the installed packages, not that folder.
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("")
    with piped_demo(tmp_path) as (proc, out):
        out.wait_for(r"broker mosquitto at 127\.0\.0\.1:\d+", 20)
        workdir = out.wait_for(r"files in (\S+)", 5)[1]
        for device in ("pump-house", "cold-room", "greenhouse"):
            out.wait_for(rf"(?m)^{device} +ok +score .* rssi +-\d+ dBm .*fcnt", 30)
        out.wait_for(r"INJECTED level_shift on cold-room temperature_1 starts", 60)
        out.wait_for(r"ALERT RAISED cold-room: score [\d.]+ \(threshold [\d.]+\) temperature_1.*"
                     r"\[injected: level_shift on temperature_1\]", 60)
        out.wait_for(r"ALERT CLEARED cold-room", 30)
        assert ctrl_c(proc) == 0
    text = out.rest()
    assert text.rstrip().endswith("demo: stopped") and "Traceback" not in text
    assert "the gateway exited" not in text
    assert processes_using(workdir) == [] and not Path(workdir).exists()


def test_demo_raises_no_alert_that_was_not_injected() -> None:
    """Past the fault and well beyond (14 simulated hours), every alert raised is one the demo injected."""
    proc = subprocess.Popen([*DEMO, "--duration", str(14 * 3600 / SPEED)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out = Output(proc.stdout.fileno())
        out.wait_for(r"demo: stopped", 14 * 3600 / SPEED + 120)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = out.text
    assert "INJECTED level_shift on cold-room temperature_1 ends" in text  # the run got past the fault
    raised = re.findall(r"ALERT RAISED .*", text)
    assert raised and all("[injected: " in line for line in raised), "\n".join(raised)


def test_demo_on_a_terminal_redraws_in_place_with_the_embedded_broker_and_stops_on_hangup() -> None:
    leader, follower = pty.openpty()
    proc = subprocess.Popen([*DEMO, "--embedded-broker"], stdin=follower, stdout=follower, stderr=follower,
                            start_new_session=True, env={**os.environ, "COLUMNS": "250"})  # a wide terminal
    os.close(follower)
    try:
        out = Output(leader)
        out.wait_for(r"broker embedded amqtt at 127\.0\.0\.1:\d+", 60)
        workdir = out.wait_for(r"files in (\S+)", 30)[1]
        out.wait_for(r"devices: 3", 90)
        out.wait_for(r"\x1b\[H[^\x1b]*lora-gateway demo", 30)  # cursor home, then the view again: a redraw
        for device in ("pump-house", "cold-room", "greenhouse"):
            out.wait_for(rf"{device} +ok +score", 30)
        # The terminal closes: SIGHUP. Gateway and broker go down with the demo, none is left behind.
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(timeout=120) == 0
        text = out.rest()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(leader)
    assert "\x1b[?25l" in text and "\x1b[?25h" in text  # the cursor hidden while drawing, shown again
    assert "demo: stopped" in text and "Traceback" not in text
    assert processes_using(workdir) == [] and not Path(workdir).exists()
