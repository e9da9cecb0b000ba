"""`lora-gateway detect --csv`: the daemon's detector over a recorded series, row by row."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from gateway.commands import main
from gateway.detect.detector import Detector
from gateway.detect.model_store import packaged_default_bundle
from gateway.detect.scoring import OnnxScorer
from gateway.detect.settings import DetectorSettings
from gateway.records import Reading


def write_nab_csv(path: Path, values: np.ndarray) -> list[str]:
    stamps = [f"2014-04-{1 + i // 288:02d} {(i % 288) // 12:02d}:{(i % 12) * 5:02d}:00" for i in range(len(values))]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "value"])
        w.writerows(zip(stamps, values.tolist()))
    return stamps


def series(n: int = 1500) -> np.ndarray:
    rng = np.random.default_rng(11)
    x = 20 + 2 * np.sin(2 * np.pi * np.arange(n) / 288) + rng.normal(0, 0.3, n)
    x[1200] += 15  # a spike after the warm-up
    return np.round(x, 3)


def read_out(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_detect_csv_equals_feeding_the_detector(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = series()
    src, out = tmp_path / "nab.csv", tmp_path / "scores.csv"
    stamps = write_nab_csv(src, x)
    assert main(["detect", "--csv", str(src), "--out", str(out)]) == 0
    assert "1500 rows scored with default@1.0.0, 1 alert(s) raised" in capsys.readouterr().err

    rows = read_out(out)
    assert list(rows[0]) == ["timestamp", "value", "score", "alert"]
    assert [r["timestamp"] for r in rows] == stamps

    det = Detector(OnnxScorer(packaged_default_bundle()), DetectorSettings())
    from gateway.commands.detect import parse_time

    for r, v, stamp in zip(rows, x, stamps):
        (o,) = det.observe([Reading("nab", {"value": float(v)}, 0, 0.0, 0.0, parse_time(stamp))])
        assert float(r["value"]) == v
        assert float(r["score"]) == o.score  # written with repr: exact
        assert int(r["alert"]) == (o.alert_state == "raised")
    alerts = [int(r["alert"]) for r in rows]
    # raised once the spike has held min_duration readings (it stays anomalous while in the window)
    first = 1200 + DetectorSettings().min_duration - 1
    assert alerts[first] == 1 and sum(alerts[:first]) == 0 and alerts[-1] == 0
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)


def test_columns_unix_times_and_config(tmp_path: Path) -> None:
    x = series()
    src = tmp_path / "pump.csv"
    with src.open("w") as f:
        f.write("t,current,other\n")
        for i, v in enumerate(x):
            f.write(f"{1_700_000_000 + 60 * i},{'nan' if i == 700 else v},x\n")  # a sensor error value
    cfg = tmp_path / "config.toml"
    cfg.write_text('[detector.channels.current]\nwarmup = 5000\n')
    out = tmp_path / "out.csv"
    rc = main(["detect", "--csv", str(src), "--column", "current", "--time-column", "t", "--out", str(out), "--config", str(cfg)])
    assert rc == 0
    rows = read_out(out)
    assert rows[0]["timestamp"] == "1700000000" and len(rows) == 1500
    assert rows[700]["value"] == "nan" and rows[700]["score"] == "0"  # skipped, not learned from
    assert not any(int(r["alert"]) for r in rows)  # the configured warm-up outlasts the file
    assert max(float(r["score"]) for r in rows) > 0.5  # the spike still scores


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("timestamp,value\n2014-04-01 00:00:00,1\n2014-04-01 00:05:00,abc\n", "line 3, column 'value': not a number: 'abc'"),
        ("timestamp,value\n2014-04-01 00:00:00,1\nyesterday,2\n", "line 3, column 'timestamp': not a time: 'yesterday'"),
        ("time,value\n2014-04-01 00:00:00,1\n", "line 1: no column 'timestamp' (columns: time, value)"),
        ("timestamp,value\n2014-04-01 00:00:00\n", "line 2: 1 fields, expected 2"),
        ("", "empty file"),
    ],
)
def test_bad_input_names_file_line_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    src = tmp_path / "bad.csv"
    src.write_text(text)
    assert main(["detect", "--csv", str(src), "--out", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err
    assert f"{src}: " in err and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]  # no half-written output


def test_missing_file_and_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["detect", "--csv", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o.csv")]) == 2
    assert "nope.csv: cannot read" in capsys.readouterr().err
    src = tmp_path / "ok.csv"
    write_nab_csv(src, np.arange(10.0))
    cfg = tmp_path / "config.toml"
    cfg.write_text("[detector]\nraise_threshold = 0.2\nclear_threshold = 0.5\n")
    assert main(["detect", "--csv", str(src), "--out", str(tmp_path / "o.csv"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert str(cfg) in err and "clear_threshold" in err
