"""The systemd unit: notify type, watchdog, dedicated user, hardening, and its exposure score."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).parent.parent / "systemd" / "lora-gateway.service"


def directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_unit_runs_supervised_and_confined() -> None:
    d = directives()
    expected = {
        "Type": "notify", "Restart": "on-failure", "User": "lora-gateway", "SupplementaryGroups": "dialout",
        "StateDirectory": "lora-gateway", "ProtectSystem": "strict", "NoNewPrivileges": "yes",
        "PrivateTmp": "yes", "ProtectHome": "yes",
        "RuntimeDirectory": "lora-gateway", "RuntimeDirectoryPreserve": "yes",
    }
    for key, value in expected.items():
        assert d.get(key) == [value], key
    assert d["WatchdogSec"] and d["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert d["CapabilityBoundingSet"] == [""]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not on this machine")
def test_exposure_score_is_low() -> None:
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNIT)], capture_output=True, text=True, check=True
    ).stdout
    score = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))
    assert score <= 2.0, out[-2000:]
