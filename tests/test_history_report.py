"""Reading history in the state database, and `lora-gateway report` drawing it to a PNG (a real process)."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image
import pytest

from gateway import history as history_module
from gateway.history import History, HistoryRow, alert_spans
from gateway.records import Reading
from gateway.report import parse_span

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def rows_for(device: str, start: float, n: int, step: float = 60.0) -> list[HistoryRow]:
    out = []
    for i in range(n):
        raised = 40 <= i < 55 or i >= 110  # one alert raised and cleared, one still raised at the end
        out.append(HistoryRow(
            device, start + i * step,
            {"temperature_1": 4.0 + math.sin(i / 10) + (6.0 if raised else 0.0), "relative_humidity_2": 80.0 - i / 10},
            score=0.9 if raised else 0.1, alert_state="raised" if raised else "ok",
        ))
    return out


def test_append_query_and_batched_prune(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = 1_700_000_000.0
    h = History(tmp_path / "state.db", retention_s=3600)
    reading = Reading("cold-room", {"temperature_1": 3.5}, fcnt=1, rssi=-80, snr=4, time=now)
    h.append([HistoryRow.of(reading, "ok", 0.2, {"temperature_1": 0.2})], now=now)
    h.append(rows_for("pump-house", now - 7200, 120), now=now)
    (row,) = h.query("cold-room", now - 10)
    assert row == HistoryRow("cold-room", now, {"temperature_1": 3.5}, 0.2, "ok", {"temperature_1": 0.2})
    # The first append pruned while the database was still small; pruning again removes the expired hour.
    assert len(h.query("pump-house", 0)) == 120
    monkeypatch.setattr(history_module, "PRUNE_BATCH", 7)
    h.append([], now=now)  # not due: the first append pruned and set the next prune 60 s on
    assert len(h.query("pump-house", 0)) == 120
    h.append([], now=now + history_module.PRUNE_EVERY_S)
    assert len(h.query("pump-house", 0)) == 113
    h.append([], now=now + history_module.PRUNE_EVERY_S)  # a full batch last time: prunes again at once
    assert len(h.query("pump-house", 0)) == 106
    assert h.prune(now) == 106 - 60
    assert [r.time for r in h.query("pump-house", 0)] == [now - 7200 + i * 60 for i in range(60, 120)]
    assert h.devices() == ["cold-room", "pump-house"]
    h.close()


def test_alert_spans() -> None:
    rows = rows_for("d", 0.0, 120, step=1.0)
    assert alert_spans(rows) == [(40.0, 55.0), (110.0, None)]


def test_parse_span() -> None:
    assert [parse_span(s) for s in ("24h", "30m", "7d", "90s", "90", "1.5h", "1w")] == [
        86400, 1800, 604800, 90, 90, 5400, 604800]


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "config.toml"
    config.write_text('state_path = "state.db"\n')
    return config


def run_report(*args: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    code = f"import sys\n{prelude}\nfrom gateway.cli import main\nsys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, "report", *args], capture_output=True, text=True, timeout=120)


def test_report_writes_a_png(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    h = History(tmp_path / "state.db")
    now = time.time()
    h.append(rows_for("pump-house", now - 130 * 60, 130), now=now)
    h.close()
    out = tmp_path / "report.png"
    done = run_report("--device", "pump-house", "--since", "24h", "--out", str(out), "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert "130 readings of pump-house, 2 alert(s)" in done.stdout
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 20_000
    image = matplotlib.image.imread(out)
    assert image.shape[0] > 400 and image.shape[1] > 800

    # Too short a window: nothing to plot, and the message says which devices have history.
    done = run_report("--device", "cold-room", "--since", "1h", "--out", str(tmp_path / "none.png"),
                      "--config", str(config))
    assert done.returncode == 1 and "devices with history: pump-house" in done.stderr
    assert not (tmp_path / "none.png").exists()


def test_report_without_matplotlib_says_how_to_get_it(tmp_path: Path) -> None:
    done = run_report("--device", "x", "--config", str(write_config(tmp_path)),
                      prelude="sys.modules['matplotlib'] = None")
    assert done.returncode == 1
    assert "pip install 'lora-gateway[report]'" in done.stderr
