"""Reading history in the state database, and `lora-gateway report` drawing it to a PNG (a real process)."""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image
import pytest

from gateway.commands.report import channel_series, parse_span, with_gaps
from gateway.publish.telemetry import telemetry_payload
from gateway.records import Reading
from gateway.service import history as history_module
from gateway.service.history import History, HistoryEntry, HistoryRow, alert_spans

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


def entries(rows: list[HistoryRow]) -> list[HistoryEntry]:
    """What the daemon appends: each reading's published state payload."""
    return [
        (r.device, r.time, telemetry_payload(Reading(r.device, r.values, i, -80.0, 5.0, r.time), r.alert_state,
                                             r.score, r.channel_scores), r.score, r.alert_state)
        for i, r in enumerate(rows)
    ]


def test_append_query_and_batched_prune(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = 1_700_000_000.0
    h = History(tmp_path / "state.db", retention_s=3600)
    (row,) = [HistoryRow("cold-room", now, {"temperature_1": 3.5}, 0.2, "ok", {"temperature_1": 0.2})]
    h.append(entries([row]), now=now)
    h.append(entries(rows_for("pump-house", now - 7200, 120)), now=now)
    assert h.query("cold-room", now - 10) == [row]
    # The first append pruned while the database was still small; pruning again removes the expired hour.
    assert len(h.query("pump-house", 0)) == 120
    monkeypatch.setattr(history_module, "PRUNE_BATCH", 7)
    h.append([], now=now)  # not due: the first append pruned and set the next prune 60 s on
    assert len(h.query("pump-house", 0)) == 120
    h.append([], now=now + history_module.PRUNE_EVERY_S)
    assert len(h.query("pump-house", 0)) == 113
    # A full batch last time: prunes again at the next write, a second on.
    h.append([], now=now + history_module.PRUNE_EVERY_S + history_module.WRITE_EVERY_S)
    assert len(h.query("pump-house", 0)) == 106
    assert h.prune(now) == 106 - 60
    assert [r.time for r in h.query("pump-house", 0)] == [now - 7200 + i * 60 for i in range(60, 120)]
    assert h.devices() == ["cold-room", "pump-house"]
    h.close()


def test_rows_are_written_every_few_seconds_and_at_close(tmp_path: Path) -> None:
    w = history_module.WRITE_EVERY_S
    h = History(tmp_path / "state.db")
    other = History(tmp_path / "state.db")  # another process's view, as `lora-gateway report` has
    rows = rows_for("pump", 1000.0, 10)
    h.append(entries(rows[:4]), now=1000.0)  # the first append writes
    h.append(entries(rows[4:7]), now=1000.0 + w / 2)  # before the next write is due: kept
    assert [r.time for r in other.query("pump", 0)] == [r.time for r in rows[:4]]
    h.append(entries(rows[7:8]), now=1000.0 + w)  # due: everything kept goes
    assert [r.time for r in other.query("pump", 0)] == [r.time for r in rows[:8]]
    h.append(entries(rows[8:9]), now=1000.0 + w * 1.2)
    h.write_due(now=1000.0 + w * 1.5)  # the daemon's tick: not due yet
    assert len(other.query("pump", 0)) == 8
    h.write_due(now=1000.0 + w * 2)  # due with no reading since: a quiet spell does not keep rows back
    assert [r.time for r in other.query("pump", 0)] == [r.time for r in rows[:9]]
    h.append(entries(rows[9:]), now=1000.0 + w * 2.1)
    h.close()
    assert [r.time for r in other.query("pump", 0)] == [r.time for r in rows]
    other.close()


def test_one_row_a_device_per_interval_and_every_change_of_alert_state(tmp_path: Path) -> None:
    """The history's budget: a device heard every 5 s keeps a row a minute, and its alert spans exactly."""
    h = History(tmp_path / "state.db", interval_s=60.0)
    rows = rows_for("pump", 0.0, 120, step=5.0)  # raised at readings 40 to 54, and from 110 on
    h.append(entries(rows) + entries(rows_for("cold-room", 0.0, 120, step=5.0)), now=1.0)
    kept = h.query("pump", 0)
    assert [r.time for r in kept] == [0.0, 60.0, 120.0, 180.0, 200.0, 260.0, 275.0, 335.0, 395.0, 455.0, 515.0,
                                      550.0]
    assert alert_spans(kept) == alert_spans(rows) == [(200.0, 275.0), (550.0, None)]
    assert len(h.query("cold-room", 0)) == len(kept)  # per device, not for all together
    every = History(tmp_path / "every.db", interval_s=0.0)
    every.append(entries(rows), now=1.0)
    assert len(every.query("pump", 0)) == 120
    h.close()
    every.close()


def test_history_written_before_it_kept_payloads_still_reads(tmp_path: Path) -> None:
    """A state database from before: rows of {"v": values, "s": channel scores}, an index by device."""
    db = sqlite3.connect(tmp_path / "state.db")
    db.executescript(
        "CREATE TABLE history (device TEXT NOT NULL, time REAL NOT NULL, values_json TEXT NOT NULL, score REAL, "
        "alert_state TEXT NOT NULL); CREATE INDEX history_device_time ON history (device, time);"
        """INSERT INTO history VALUES ('pump', 10.0, '{"v":{"current_3":1.5},"s":{"current_3":0.25}}', 0.25, 'ok');"""
    )
    db.close()
    h = History(tmp_path / "state.db")
    h.append(entries([HistoryRow("pump", 20.0, {"current_3": 1.25}, 0.5, "raised", {"current_3": 0.5})]), now=30.0)
    assert h.query("pump", 0) == [HistoryRow("pump", 10.0, {"current_3": 1.5}, 0.25, "ok", {"current_3": 0.25}),
                                  HistoryRow("pump", 20.0, {"current_3": 1.25}, 0.5, "raised", {"current_3": 0.5})]
    h.close()
    indexes = sqlite3.connect(tmp_path / "state.db").execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'history'").fetchall()
    assert indexes == [("history_time",)]  # the by-device index is gone: it cost the hot path most


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
    code = f"import sys\n{prelude}\nfrom gateway.commands import main\nsys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, "report", *args], capture_output=True, text=True, timeout=120)


def test_report_writes_a_png(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    h = History(tmp_path / "state.db")
    now = time.time()
    h.append(entries(rows_for("pump-house", now - 130 * 60, 130)), now=now)
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


def test_gaps_stay_gaps_and_channels_no_longer_sent_are_left_out() -> None:
    rows = rows_for("pump-house", 0.0, 130)
    # An hour without readings in the middle; and battery_9 sent only until row 60.
    rows = [r for r in rows if not 70 <= r.time / 60 < 120]
    rows = [HistoryRow(r.device, r.time, {**r.values, **({"battery_9": 3.3} if r.time < 60 * 60 else {})},
                       r.score, r.alert_state) for r in rows]
    kept, dropped = channel_series(rows)
    assert set(kept) == {"temperature_1", "relative_humidity_2"} and dropped == {"battery_9": 59 * 60.0}
    gaps = [i for i, v in enumerate(kept["temperature_1"].values) if math.isnan(v)]
    assert len(gaps) == 1 and 69 * 60 < kept["temperature_1"].times[gaps[0]] < 120 * 60
    assert with_gaps([(0.0, 1.0), (60.0, 2.0), (120.0, 3.0)]).values == [1.0, 2.0, 3.0]  # no gap, no break


def test_report_names_the_channels_it_left_out(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    now = time.time()
    rows = [HistoryRow(r.device, r.time, {**r.values, **({"battery_9": 3.3} if i < 60 else {})}, r.score,
                       r.alert_state) for i, r in enumerate(rows_for("pump-house", now - 130 * 60, 130))]
    h = History(tmp_path / "state.db")
    h.append(entries(rows), now=now)
    h.close()
    done = run_report("--device", "pump-house", "--out", str(tmp_path / "r.png"), "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert "  left out battery_9: no longer sent (last at " in done.stdout
