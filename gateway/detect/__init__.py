"""Detect: `Reading` -> per-channel windows -> ONNX score (batched) -> anomaly likelihood -> alert state.

The model comes from a bundle in the model store; the detector's state lives in the state
database, so that a restart continues where it stopped.
"""
