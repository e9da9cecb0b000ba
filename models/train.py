"""Train the anomaly model on normal windows, and fine-tune LoRA adapters for one site."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gateway.detect.held import read_csv_series
from models.arch import ModelConfig, build_model
from models.data import normal_windows, synthetic_corpus
from models.lora import LoraLinear, wrap_lora

Progress = Callable[[int, int, float], None]  # (step, total, loss)


@dataclass
class TrainOptions:
    steps: int = 4000
    batch: int = 256
    lr: float = 2e-3
    seed: int = 0
    pool: int = 60000  # normalized windows drawn once, then batched
    synthetic_series: int = 180
    csv: list[Path] = field(default_factory=list)


def training_windows(cfg: ModelConfig, opts: TrainOptions) -> np.ndarray:
    series = synthetic_corpus(opts.seed, opts.synthetic_series) if opts.synthetic_series else []
    series += [read_csv_series(p) for p in opts.csv]
    return normal_windows(series, opts.pool, cfg.window, cfg.norm, opts.seed + 1)


def _fit(
    model: nn.Module, params: list[torch.Tensor], windows: np.ndarray, opts: TrainOptions, progress: Progress | None
) -> float:
    """Minimise the mean score of normal windows; returns the last smoothed loss."""
    gen = torch.Generator().manual_seed(opts.seed)
    data = torch.from_numpy(windows)
    optim = torch.optim.Adam(params, lr=opts.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, opts.steps)
    smooth = float("nan")
    model.train()
    for step in range(1, opts.steps + 1):
        idx = torch.randint(len(data), (min(opts.batch, len(data)),), generator=gen)
        # Random sign: a sensor can fail upwards or downwards alike.
        sign = torch.randint(0, 2, (len(idx), 1), generator=gen).float() * 2 - 1
        loss = model(data[idx] * sign).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        sched.step()
        smooth = loss.item() if step == 1 else 0.98 * smooth + 0.02 * loss.item()
        if progress and (step % 50 == 0 or step == opts.steps):
            progress(step, opts.steps, smooth)
    model.eval()
    return smooth


def train(cfg: ModelConfig, opts: TrainOptions, progress: Progress | None = None) -> nn.Module:
    """A freshly trained model; same seed, data and torch version give the same weights."""
    torch.manual_seed(opts.seed)
    # One thread: float sums in a fixed order, so training is reproducible bit for bit.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = build_model(cfg)
        cfg.training = {
            "seed": opts.seed,
            "steps": opts.steps,
            "batch": opts.batch,
            "lr": opts.lr,
            "pool": opts.pool,
            "synthetic_series": opts.synthetic_series,
            "csv": [p.name for p in opts.csv],
            "loss": _fit(model, list(model.parameters()), training_windows(cfg, opts), opts, progress),
        }
    finally:
        torch.set_num_threads(threads)
    return model


def adapt(
    model: nn.Module,
    cfg: ModelConfig,
    opts: TrainOptions,
    r: int,
    lora_alpha: float,
    targets: list[str],
    progress: Progress | None = None,
) -> dict[str, LoraLinear]:
    """Wrap `targets` of `model` with fresh LoRA layers and train only those on opts' data."""
    torch.manual_seed(opts.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = wrap_lora(model, targets, r, lora_alpha / r)
    params = [p for layer in wrapped.values() for p in (layer.lora_A.weight, layer.lora_B.weight)]
    _fit(model, params, training_windows(cfg, opts), opts, progress)
    return wrapped
