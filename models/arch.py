"""Anomaly model architectures: each maps normalized windows [B, W] to scores [B].

The score is computed inside the network, so the exported ONNX graph returns scores
directly and the runtime needs no knowledge of the architecture.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from gateway.detect.scoring import Normalization

ARCHS = ("mlp_ae", "mlp_forecast", "conv_ae")


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model from its weights (written as config.json)."""

    arch: str = "mlp_ae"
    window: int = 32
    hidden: int = 256
    latent: int = 4
    horizon: int = 8  # mlp_forecast: values predicted at the end of the window
    channels: int = 8  # conv_ae: feature maps
    name: str = "default"
    version: str = "1.0.0"
    normalization: dict[str, Any] = field(default_factory=lambda: Normalization().to_manifest())
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(ARCHS)}, not {self.arch!r}")
        if self.window < 8 or (self.arch == "conv_ae" and self.window % 4):
            raise ValueError(f"window {self.window} too small (or not a multiple of 4 for conv_ae)")
        if self.arch == "mlp_forecast" and not 0 < self.horizon < self.window:
            raise ValueError(f"horizon {self.horizon} must be between 1 and window-1")

    @property
    def norm(self) -> Normalization:
        return Normalization.from_manifest(self.normalization)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
        return cls(**data)


def _sq_err(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).pow(2).mean(dim=1)


class MlpAutoencoder(nn.Module):
    """Dense bottleneck autoencoder; score = mean squared reconstruction error."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.clip = cfg.norm.clip
        self.enc1 = nn.Linear(cfg.window, cfg.hidden)
        self.enc2 = nn.Linear(cfg.hidden, cfg.latent)
        self.dec1 = nn.Linear(cfg.latent, cfg.hidden)
        self.dec2 = nn.Linear(cfg.hidden, cfg.window)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clamp(-self.clip, self.clip)
        h = torch.relu(self.enc1(x))
        h = torch.relu(self.dec1(self.enc2(h)))
        return _sq_err(self.dec2(h), x)


class MlpForecaster(nn.Module):
    """Predicts the last `horizon` values from the rest; score = mean squared forecast error."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.clip = cfg.norm.clip
        self.context = cfg.window - cfg.horizon
        self.fc1 = nn.Linear(self.context, cfg.hidden)
        self.fc2 = nn.Linear(cfg.hidden, cfg.hidden)
        self.out = nn.Linear(cfg.hidden, cfg.horizon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clamp(-self.clip, self.clip)
        h = torch.relu(self.fc1(x[:, : self.context]))
        h = torch.relu(self.fc2(h))
        return _sq_err(self.out(h), x[:, self.context :])


class ConvAutoencoder(nn.Module):
    """Strided Conv1d encoder, dense decoder; score = mean squared reconstruction error."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.clip = cfg.norm.clip
        c = cfg.channels
        self.conv1 = nn.Conv1d(1, c, kernel_size=5, stride=2, padding=2)
        self.conv2 = nn.Conv1d(c, c, kernel_size=5, stride=2, padding=2)
        self.enc = nn.Linear(c * cfg.window // 4, cfg.latent)
        self.dec1 = nn.Linear(cfg.latent, cfg.hidden)
        self.dec2 = nn.Linear(cfg.hidden, cfg.window)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clamp(-self.clip, self.clip)
        h = torch.relu(self.conv1(x.unsqueeze(1)))
        h = torch.relu(self.conv2(h)).flatten(1)
        h = torch.relu(self.dec1(self.enc(h)))
        return _sq_err(self.dec2(h), x)


def build_model(cfg: ModelConfig) -> nn.Module:
    cls = {"mlp_ae": MlpAutoencoder, "mlp_forecast": MlpForecaster, "conv_ae": ConvAutoencoder}[cfg.arch]
    return cls(cfg)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
