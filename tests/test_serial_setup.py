"""The set-up handshake through a real pty: lines that are not the reply it waits for."""

from __future__ import annotations

import pytest

from firmware_sim.modules import RylrEmulator
from firmware_sim.pty_link import PtyModule
from gateway.config import SerialConfig
from gateway.radio.dialects import DIALECTS
from gateway.radio.serial_link import ModuleError, SerialLink


class CutEventFirst(RylrEmulator):
    """Answers the first command after the tail of a receive event, as a module that was
    receiving when the gateway opened the port and flushed its input half way through a line."""

    def __init__(self) -> None:
        super().__init__()
        self.cut = True

    def _command(self, line: str) -> list[str]:
        replies = super()._command(line)
        if self.cut:
            self.cut = False
            return ["0C0D0E0F,-80,7", *replies]
        return replies


def link_to(module: PtyModule) -> SerialLink:
    return SerialLink(SerialConfig(port=module.port, dialect="rylr", reply_timeout_s=2), DIALECTS["rylr"]())


def test_a_cut_event_before_the_first_reply_does_not_fail_the_set_up() -> None:
    with PtyModule(CutEventFirst()) as module:
        link = link_to(module)
        link.open()
        try:
            assert module.emulator.cut is False
            module.send_frame(bytes.fromhex("40010203040000000001aabbccdd"), -80, 7)
            lines = next(link.lines())
            while not lines:
                lines = next(link.lines())
            assert lines[0].startswith(b"+RCV=")  # no set-up reply was left over to be read as data
        finally:
            link.close()


def test_a_wrong_reply_is_still_an_error_naming_command_and_reply() -> None:
    emulator = RylrEmulator()
    emulator.inject_error("+ERR=4")
    with PtyModule(emulator) as module, pytest.raises(ModuleError, match=r"'AT' answered '\+ERR=4', expected"):
        link_to(module).open()
