"""The resolution floor of the normalization, with the shipped model: a quantised sensor (a reading
as Cayenne LPP carries it) changing by one step is its noise, not an anomaly; a real change of it
still is."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.bench_faults import farm
from gateway.detect.detector import Detector
from gateway.detect.model_store import packaged_default_bundle
from gateway.detect.scoring import OnnxScorer
from gateway.detect.settings import DetectorSettings
from gateway.records import Reading
from gateway.uplink import lpp


def lpp_rounded(values: np.ndarray) -> list[float]:
    """Each value as it arrives over the air: through Cayenne LPP's voltage resolution, 0.01 V."""
    out = []
    for v in values:
        (decoded,) = lpp.decode(lpp.encode([(3, "voltage", float(v))])).values()
        out.append(decoded)
    return out


SCORER = OnnxScorer(packaged_default_bundle())


def alerts(values: list[float]) -> list[int]:
    det = Detector(SCORER, DetectorSettings())
    raised = []
    for i, v in enumerate(values):
        (out,) = det.observe([Reading("node", {"voltage_3": v}, i, -50.0, 9.0, 60.0 * i)])
        if out.transition is not None and out.transition.state == "raised":
            raised.append(i)
    return raised


def battery(n: int, seed: int) -> np.ndarray:
    """A battery between two of the wire's 10 mV steps, its ADC noise below one step."""
    rng = np.random.default_rng(seed)
    return 3.305 + rng.normal(0, 0.003, n)


def test_quantised_farm_sensors_raise_far_fewer_false_alerts(tmp_path: Path) -> None:
    # bench_faults' farm without faults: pump current, vibration, cold-room temperature, humidity
    # and battery, each rounded to its LPP resolution, 3 days of a reading a minute.
    def raised(resolution_steps: float) -> int:
        folder = tmp_path / str(resolution_steps)
        folder.mkdir()
        _, readings = farm(100, 3, folder, with_faults=False)
        det = Detector(SCORER, DetectorSettings(resolution_steps=resolution_steps))
        return sum(1 for r in readings for o in det.observe([r]) if o.transition and o.transition.state == "raised")

    unfloored, floored = raised(0.0), raised(1.0)
    assert unfloored >= 20  # a step of 0.01 V or 0.1 degC read as a jump: these are false alerts
    assert floored * 5 <= unfloored


def test_a_real_drop_of_a_quantised_sensor_still_raises() -> None:
    v = battery(4000, seed=9)
    v[3000:] -= 0.3  # the cell's voltage collapses
    raised = alerts(lpp_rounded(v))
    assert raised and 3000 <= raised[0] < 3020
