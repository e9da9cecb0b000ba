"""SKAB evaluation: `detect` over SKAB experiments, each file's 8 sensors one device.

SKAB's outlier protocol (Katser and Kozitsin, waico/SKAB): the first 400 rows of each file may be
learned from and are not scored; every later row is flagged or not (here: flagged while the
device's alert is raised after it); F1, false alarm rate (FAR, % of normal rows flagged) and
missing alarm rate (MAR, % of anomalous rows missed), pooled over the files. Beside them, NAB's
scores with each anomalous segment as a window and the raises as detections (SKAB's own NAB-like
table), and the false alerts over `anomaly-free/` (normal operation only).

The detector runs as the daemon runs it: default settings (or --settings), one row at a time,
no look-ahead, a fresh device per file.

Run: `nice python -m bench.skab [--groups valve1 anomaly-free] [--settings JSON] [--bundle DIR]`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from bench.nab import PROFILES, LabelledFile, normalized_score, prepare_file, score_file

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "skab"
TRAIN_ROWS = 400
SEP = ";"
TIME_COLUMN = "datetime"
SENSORS = ["Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature", "Thermocouple",
           "Voltage", "Volume Flow RateRMS"]

# The data README's leaderboard (outlier detection, all 34 files): F1, FAR %, MAR %.
LEADERBOARD: dict[str, tuple[float, float, float]] = {
    "Conv-AE": (0.78, 13.55, 28.02),
    "MSET": (0.78, 39.73, 14.13),
    "T-squared + Q (PCA)": (0.76, 26.62, 24.92),
    "LSTM-AE": (0.74, 29.96, 25.92),
    "T-squared": (0.66, 19.21, 42.60),
    "LSTM-VAE": (0.56, 9.13, 55.03),
    "Vanilla AE": (0.39, 2.59, 75.15),
    "Isolation forest": (0.29, 2.56, 82.89),
}


@dataclass(frozen=True)
class SkabFile:
    name: str  # group/file.csv
    path: Path
    anomaly: np.ndarray  # bool per row
    labelled: LabelledFile  # NAB-style: anomalous segments as windows, the first 400 rows probation


def load_group(data_dir: Path, group: str) -> list[SkabFile]:
    files = []
    paths = sorted((data_dir / group).glob("*.csv"), key=lambda p: (len(p.stem), p.stem))
    for path in paths:
        with path.open(newline="") as f:
            anomaly = np.array([float(r.get("anomaly") or 0) > 0 for r in csv.DictReader(f, delimiter=SEP)])
        # Row times stand in for the timestamps: the windows are index spans.
        stamps = [datetime(2020, 1, 1) + timedelta(seconds=i) for i in range(len(anomaly))]
        edges = np.flatnonzero(np.diff(np.concatenate([[0], anomaly.astype(int), [0]])))
        windows = [(stamps[a], stamps[b - 1]) for a, b in zip(edges[::2], edges[1::2])]
        labelled = dataclasses.replace(prepare_file(path.name, stamps, windows), probation=TRAIN_ROWS)
        files.append(SkabFile(f"{group}/{path.name}", path, anomaly, labelled))
    return files


def pooled(files: list[SkabFile], flagged: list[np.ndarray], raises: list[np.ndarray]) -> dict[str, Any]:
    """F1/FAR/MAR pooled over the scored rows, NAB-style scores of the raises, false raises."""
    tp = fp = fn = tn = 0
    for f, up in zip(files, flagged, strict=True):
        a, b = f.anomaly[TRAIN_ROWS:], np.asarray(up, dtype=bool)[TRAIN_ROWS:]
        tp += int((a & b).sum())
        fp += int((~a & b).sum())
        fn += int((a & ~b).sum())
        tn += int((~a & ~b).sum())
    out: dict[str, Any] = {
        "F1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan"),
        "FAR": 100 * fp / (fp + tn) if fp + tn else float("nan"),
        "MAR": 100 * fn / (fn + tp) if fn + tp else float("nan"),
    }
    labelled = [f.labelled for f in files]
    for name, prof in PROFILES.items():
        out[name] = normalized_score(labelled, raises, prof)
    parts = [score_file(lf, r, 0.5, PROFILES["standard"]) for lf, r in zip(labelled, raises)]
    out["windows_found"], out["windows_missed"] = sum(p[1] for p in parts), sum(p[2] for p in parts)
    out["false_raises"] = sum(p[3] for p in parts)
    return out


def run_file(f: SkabFile, scorer: Any, settings: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """`detect --csv FILE --sep ';' --time-column datetime --columns <the 8 sensors>`, in process."""
    from gateway.commands.detect import detect_series, read_table
    from gateway.detect.detector import Detector
    from gateway.detect.settings import DetectorSettings

    detector = Detector(scorer, DetectorSettings.model_validate(settings))
    table = read_table(f.path, SENSORS, TIME_COLUMN, SEP)
    res = detect_series(detector, table.rows, io.StringIO(), device=f.path.stem, channels=table.columns)
    return np.array(res.alerts, dtype=bool), np.array(res.raises, dtype=float)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA_DIR, help="SKAB folder (holds valve1/, anomaly-free/)")
    parser.add_argument("--groups", nargs="+", default=["valve1", "anomaly-free"])
    parser.add_argument("--bundle", type=Path, help="model bundle (default: the packaged default model)")
    parser.add_argument("--settings", default="{}", help="detector settings as JSON (default: the detector's defaults)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    from gateway.detect.model_store import packaged_default_bundle
    from gateway.detect.scoring import OnnxScorer

    scorer = OnnxScorer(args.bundle or packaged_default_bundle())
    settings = json.loads(args.settings)
    results = {}
    for group in args.groups:
        files = load_group(args.data, group)
        runs = [run_file(f, scorer, settings) for f in files]
        results[group] = r = pooled(files, [x[0] for x in runs], [x[1] for x in runs])
        rows = sum(len(f.anomaly) - TRAIN_ROWS for f in files)
        print(f"SKAB {group}: {len(files)} files, {rows} scored rows, model {scorer.label}, settings {args.settings}")
        if np.isfinite(r["F1"]) and r["windows_found"] + r["windows_missed"]:
            print(f"  F1 {r['F1']:.2f}  FAR {r['FAR']:.1f}%  MAR {r['MAR']:.1f}%   NAB-style standard "
                  f"{r['standard']:.1f}, low FP {r['reward_low_FP_rate']:.1f}, low FN {r['reward_low_FN_rate']:.1f} "
                  f"(segments found {r['windows_found']}, missed {r['windows_missed']}, false raises {r['false_raises']})")
        else:
            print(f"  normal rows flagged (FAR) {r['FAR']:.1f}%, alerts raised {r['false_raises']} (all false)")
    print("\nSKAB leaderboard (outlier detection, all 34 files; offline, fitted per file):")
    print(f"{'detector':<22}{'F1':>6}{'FAR %':>8}{'MAR %':>8}")
    for name, (f1, far, mar) in LEADERBOARD.items():
        print(f"{name:<22}{f1:>6.2f}{far:>8.2f}{mar:>8.2f}")
    if args.json:
        args.json.write_text(json.dumps({"settings": settings, "model": scorer.label, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
