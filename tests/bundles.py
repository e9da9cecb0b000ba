"""Bundles that a test needs and no shipped file provides (they need torch to build)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from models.export import BuildOptions, QuantSpec, build_bundle
from models.weights import load_weights

REPO = Path(__file__).resolve().parents[1]
SMALL_BUILD: dict[str, Any] = dict(calib_windows=600, held_normal=1500, held_per_anomaly=150, bundle_windows=256)


def low_parity_bundle(out_dir: Path, version: str = "0.9.0") -> dict[str, Any]:
    """The shipped default weights built with --min-agreement 0.5 into a bundle whose "int8"
    model holds 4-bit weights and activations, so that its alerts really differ from float's
    (about 98% agreement). Returns the manifest."""
    lw = load_weights(REPO / "models" / "default" / "weights.safetensors")
    cfg = replace(lw.config, name="lowparity", version=version)
    opts = BuildOptions(
        name="lowparity",
        version=version,
        quant=QuantSpec(weight="QUInt4", activation="QUInt4"),
        min_agreement=0.5,
        **SMALL_BUILD,
    )
    return build_bundle(lw.model, cfg, out_dir, opts)
