"""Many devices at once: `device add --count N --prefix P`, and `device import FILE.csv`."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.commands import main
from gateway.uplink.devices import load_devices, session_keys


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "device", *args], capture_output=True, text=True,
                          timeout=300)


def test_add_ten_thousand_devices_in_one_call(tmp_path: Path) -> None:
    path = tmp_path / "devices.toml"
    done = cli("add", "--count", "10000", "--prefix", "pump-", "--devices", str(path))
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    devices = load_devices(path)
    assert len(rows) == len(devices) == 10_000
    assert rows[0]["name"] == "pump-00001" and rows[-1]["name"] == "pump-10000"
    assert {r["name"]: r["nwk_skey"] for r in rows} == {n: e.nwk_skey for n, e in devices.items()}
    assert len({e.dev_addr for e in devices.values()}) == 10_000
    assert len(session_keys(devices)) == 10_000  # the gateway can load them
    again = cli("add", "--count", "2", "--prefix", "pump-", "--devices", str(path))  # pump-1, pump-2: new names
    assert again.returncode == 0 and len(load_devices(path)) == 10_002


def test_import_from_csv_round_trips_what_bulk_add_prints(tmp_path: Path) -> None:
    made = cli("add", "--count", "3", "--prefix", "t", "--devices", str(tmp_path / "a.toml"))
    source = tmp_path / "devices.csv"
    source.write_text(made.stdout)
    done = cli("import", str(source), "--devices", str(tmp_path / "b.toml"))
    assert done.returncode == 0, done.stderr
    assert load_devices(tmp_path / "b.toml") == load_devices(tmp_path / "a.toml")
    assert (tmp_path / "b.toml").stat().st_mode & 0o777 == 0o600
    clash = cli("import", str(source), "--devices", str(tmp_path / "b.toml"))
    assert clash.returncode == 2 and "already exists" in clash.stderr


KEY = "B2489D5A0C14E8F37A6B1D290E4C7F55"


@pytest.mark.parametrize(("rows", "message"), [
    (f"pump,26011BDA,{KEY},{KEY[:-1]}\n", "line 2: app_skey: must be 32 hex digits (got 31 characters)"),
    (f"pump,{KEY},{KEY},{KEY}\n", "line 2: dev_addr: must be 8 hex digits (got 32 characters, not shown)"),
    (f"pump,26011BDA,{KEY},{KEY}\npump,26011BDB,{KEY},{KEY}\n", "line 3: device 'pump' is twice in the file"),
    (f"p/1,26011BDA,{KEY},{KEY}\n", "device name 'p/1': use 1-64 letters"),
])
def test_a_bad_row_names_its_line_and_column_never_a_key(tmp_path: Path, rows: str, message: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "devices.csv"
    source.write_text("name,dev_addr,nwk_skey,app_skey\n" + rows)
    assert main(["device", "import", str(source), "--devices", str(tmp_path / "d.toml")]) == 2
    err = capsys.readouterr().err
    assert message in err and KEY not in err and KEY[:-1] not in err
    assert not (tmp_path / "d.toml").exists()  # nothing half-imported
