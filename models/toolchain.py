"""The operations behind `lora-gateway model train | adapt | install WEIGHTS`, as plain functions."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from models.arch import ModelConfig
from models.export import BuildOptions, build_bundle
from models.lora import Adapter, check_base, linear_modules, merge_adapter, provenance, read_adapter, write_adapter
from models.train import Progress, TrainOptions, adapt, train
from models.weights import WeightsError, load_weights, save_weights


@dataclass
class SourceWeights:
    """Weights with adapters merged in, and the provenance the manifest records."""

    model: torch.nn.Module
    config: ModelConfig
    adapters: list[Adapter]
    source: dict[str, Any]


def load_source(weights: Path, config: Path | None, adapters: list[Path], expected_sha256: str | None) -> SourceWeights:
    """Load and check weights, then merge each adapter in order (W += scaling * B @ A)."""
    lw = load_weights(weights, config, expected_sha256)
    loaded = []
    for directory in adapters:
        adapter = read_adapter(directory, lw.model)
        check_base(adapter, weights, lw.weights_sha256, lw.config.name, lw.config.version)
        merge_adapter(lw.model, adapter)
        loaded.append(adapter)
    source = {
        "weights": {"file": weights.name, "sha256": lw.weights_sha256},
        "config": {"file": lw.config_path.name, "sha256": lw.config_sha256},
        "adapters": [provenance(a) for a in loaded],
    }
    return SourceWeights(lw.model, lw.config, loaded, source)


def default_version(src: SourceWeights) -> str:
    """The config's version; with adapters, suffixed by a digest of them so that versions differ."""
    if not src.adapters:
        return src.config.version
    digest = hashlib.sha256("".join(a.files[k] for a in src.adapters for k in sorted(a.files)).encode()).hexdigest()
    return f"{src.config.version}-lora{digest[:8]}"


def bundle_from_weights(
    src: SourceWeights, out_dir: Path, opts: BuildOptions, log: Callable[[str], None]
) -> dict[str, Any]:
    return build_bundle(src.model, src.config, out_dir, replace(opts, source=src.source), log)


def train_weights(
    cfg: ModelConfig, opts: TrainOptions, out: Path, progress: Progress | None
) -> tuple[torch.nn.Module, Path]:
    """Train and write weights plus config.json; returns the model and the config path."""
    if out.suffix != ".safetensors":
        raise WeightsError(out, "weights are written as .safetensors")
    model = train(cfg, opts, progress)
    return model, save_weights(model, cfg, out)


def adapt_weights(
    base: Path,
    config: Path | None,
    opts: TrainOptions,
    out_dir: Path,
    r: int,
    lora_alpha: float,
    targets: list[str] | None,
    progress: Progress | None,
) -> Path:
    """Fine-tune a LoRA adapter of `base` on opts.csv (a site's normal data); write it in PEFT layout."""
    lw = load_weights(base, config)
    names = targets or sorted(linear_modules(lw.model))
    if missing := sorted(set(names) - set(linear_modules(lw.model))):
        raise WeightsError(base, f"the model has no linear module {missing}; it has {sorted(linear_modules(lw.model))}")
    wrapped = adapt(lw.model, lw.config, opts, r, lora_alpha, names, progress)
    # PEFT's fields for the base: its path as given, and (in `revision`) its sha256, checked at install
    write_adapter(out_dir, wrapped, r, lora_alpha, base_model=str(base), revision=lw.weights_sha256)
    return out_dir
