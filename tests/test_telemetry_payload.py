"""The state payload's text: compact JSON whose numbers read back exactly, whatever encoder writes it."""

from __future__ import annotations

import json
import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from gateway.publish.telemetry import telemetry_payload, to_json
from gateway.records import Reading


def test_the_state_payload_is_compact_json_with_its_keys_in_order() -> None:
    reading = Reading("pump-1", {"temperature_1": 21.4, "analog_in_3": -0.01}, 1234, -87.0, 7.25, 1733540000.5)
    payload = telemetry_payload(reading, "raised", np.float32(0.75), {"temperature_1": np.float64(0.9)},
                                {"analog_in_3": 40})
    assert payload == (
        '{"device":"pump-1","values":{"temperature_1":21.4,"analog_in_3":-0.01},"rssi":-87.0,"snr":7.25,'
        '"fcnt":1234,"time":1733540000.5,"anomaly_score":0.75,"anomaly":{"temperature_1":0.9},'
        '"alert_state":"raised","warming_up":{"analog_in_3":40}}')


def test_unknown_signal_figures_and_a_missing_score_are_null() -> None:
    reading = Reading("pump-1", {"temperature_1": 1.0}, 1, math.nan, math.inf, 2.0)
    decoded = json.loads(telemetry_payload(reading))
    assert (decoded["rssi"], decoded["snr"], decoded["anomaly_score"]) == (None, None, None)
    assert (decoded["anomaly"], decoded["warming_up"], decoded["alert_state"]) == ({}, {}, "ok")


@given(st.floats(allow_nan=False, allow_infinity=False), st.integers(0, 2**32 - 1))
def test_every_finite_value_and_counter_reads_back_exactly(value: float, fcnt: int) -> None:
    reading = Reading("node-é", {"analog_in_1": value}, fcnt, -80.0, 5.0, 1.0)
    decoded = json.loads(telemetry_payload(reading, anomaly_score=value))
    assert decoded["values"]["analog_in_1"] == value and decoded["anomaly_score"] == value
    assert math.copysign(1.0, decoded["values"]["analog_in_1"]) == math.copysign(1.0, value)
    assert (decoded["device"], decoded["fcnt"]) == ("node-é", fcnt)


def test_a_value_no_json_number_can_hold_is_null_not_an_invalid_token() -> None:
    assert to_json({"a": math.nan, "b": [math.inf]}) == '{"a":null,"b":[null]}'


def test_keys_that_are_not_strings_are_written_as_the_standard_library_writes_them() -> None:
    payload = {"counts": {1: 2, 2.5: "b", None: 0}, "channels": ("a", "b")}
    assert to_json(payload) == json.dumps(payload, separators=(",", ":"))
