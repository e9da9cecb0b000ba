"""LoRA adapters in PEFT's on-disk layout: read, check, apply unmerged, merge, write.

Layout: a directory with adapter_config.json (peft_type "LORA", r, lora_alpha,
target_modules, base_model_name_or_path) and adapter_model.safetensors holding
`base_model.model.<module>.lora_A.weight` [r, in] and `...lora_B.weight` [out, r].
Merging adds (lora_alpha / r) * B @ A to the module's weight.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from gateway.detect.scoring import sha256_file
from models.weights import WeightsError, read_tensors

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.default)?\.weight$")


@dataclass
class LoraPair:
    a: torch.Tensor  # [r, in]
    b: torch.Tensor  # [out, r]


@dataclass
class Adapter:
    directory: Path
    r: int
    lora_alpha: float
    scaling: float
    target_modules: list[str]
    base_model: str | None
    pairs: dict[str, LoraPair]  # module name -> tensors
    files: dict[str, str]  # file name -> sha256


def linear_modules(model: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def _matches(name: str, targets: list[str] | str) -> bool:
    """PEFT's rule: a list matches a module name exactly or as a dotted suffix; a string is a regex."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def read_adapter(directory: Path, model: nn.Module) -> Adapter:
    """Read and check an adapter against `model`; any mismatch is a WeightsError naming the file."""
    cfg_path, w_path = directory / ADAPTER_CONFIG, directory / ADAPTER_WEIGHTS
    try:
        cfg: dict[str, Any] = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise WeightsError(
            cfg_path, "adapter config missing (PEFT layout: adapter_config.json + adapter_model.safetensors)"
        ) from None
    except (OSError, ValueError) as e:
        raise WeightsError(cfg_path, f"unreadable adapter config ({e})") from None
    if cfg.get("peft_type") != "LORA":
        raise WeightsError(cfg_path, f"peft_type is {cfg.get('peft_type')!r}, only 'LORA' is supported")
    for unsupported in ("use_dora", "modules_to_save", "layers_to_transform", "rank_pattern", "alpha_pattern"):
        if cfg.get(unsupported):
            raise WeightsError(cfg_path, f"{unsupported} is not supported")
    if cfg.get("bias", "none") != "none":
        raise WeightsError(cfg_path, f"bias {cfg.get('bias')!r} is not supported (only 'none')")
    r, alpha, targets = cfg.get("r"), cfg.get("lora_alpha"), cfg.get("target_modules")
    if not isinstance(r, int) or r <= 0 or not isinstance(alpha, (int, float)):
        raise WeightsError(
            cfg_path, f"r must be a positive integer and lora_alpha a number (r={r!r}, lora_alpha={alpha!r})"
        )
    if not targets or not isinstance(targets, (list, str)):
        raise WeightsError(cfg_path, "target_modules missing")

    linears = linear_modules(model)
    matched = {name for name in linears if _matches(name, targets)}
    if isinstance(targets, list):
        for t in targets:
            if not any(name == t or name.endswith("." + t) for name in linears):
                raise WeightsError(
                    cfg_path, f"target module {t!r} is not in the model (its linear modules: {sorted(linears)})"
                )
    elif not matched:
        raise WeightsError(cfg_path, f"target_modules regex {targets!r} matches no module of the model")

    tensors = read_tensors(w_path)
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        m = _KEY.match(key)
        if not m:
            raise WeightsError(w_path, f"unexpected tensor {key!r} (want base_model.model.<module>.lora_A/B.weight)")
        halves.setdefault(m["module"], {})[m["ab"]] = value.float()
    for module, ab in halves.items():
        if module not in linears:
            raise WeightsError(w_path, f"tensors target module {module!r} that the model lacks")
        if module not in matched:
            raise WeightsError(w_path, f"tensors for {module!r}, which target_modules does not name")
        if set(ab) != {"A", "B"}:
            raise WeightsError(w_path, f"module {module!r} lacks lora_{'B' if 'A' in ab else 'A'}")
        lin, a, b = linears[module], ab["A"], ab["B"]
        if a.shape[0] != r or b.shape[1] != r:
            raise WeightsError(w_path, f"module {module!r}: tensors have rank {a.shape[0]}/{b.shape[1]} but r is {r}")
        if tuple(a.shape) != (r, lin.in_features) or tuple(b.shape) != (lin.out_features, r):
            raise WeightsError(
                w_path,
                f"module {module!r}: lora_A {list(a.shape)} / lora_B {list(b.shape)} do not fit a {lin.in_features}->{lin.out_features} layer",
            )
    if missing := sorted(matched - set(halves)):
        raise WeightsError(w_path, f"no tensors for targeted modules {missing}")
    scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    return Adapter(
        directory=directory,
        r=r,
        lora_alpha=float(alpha),
        scaling=scaling,
        target_modules=targets if isinstance(targets, list) else [targets],
        base_model=cfg.get("base_model_name_or_path"),
        pairs={k: LoraPair(v["A"], v["B"]) for k, v in halves.items()},
        files={ADAPTER_CONFIG: sha256_file(cfg_path), ADAPTER_WEIGHTS: sha256_file(w_path)},
    )


@torch.no_grad()
def merge_adapter(model: nn.Module, adapter: Adapter) -> None:
    """W += scaling * B @ A, in place."""
    linears = linear_modules(model)
    for name, p in adapter.pairs.items():
        linears[name].weight += adapter.scaling * (p.b @ p.a)


class LoraLinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update, unmerged."""

    def __init__(self, base: nn.Linear, r: int, scaling: float, pair: LoraPair | None = None) -> None:
        super().__init__()
        self.base = base
        self.scaling = scaling
        self.lora_A = nn.Linear(base.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, base.out_features, bias=False)
        if pair is None:  # PEFT's init: A random, B zero, so training starts at the base model
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B.weight)
        else:
            self.lora_A.weight.data.copy_(pair.a)
            self.lora_B.weight.data.copy_(pair.b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scaling * self.lora_B(self.lora_A(x))


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def wrap_lora(
    model: nn.Module, targets: list[str], r: int, scaling: float, pairs: dict[str, LoraPair] | None = None
) -> dict[str, LoraLinear]:
    """Replace the targeted linear layers by LoraLinear (unmerged); returns them by name."""
    wrapped: dict[str, LoraLinear] = {}
    for name, lin in linear_modules(model).items():
        if _matches(name, targets):
            wrapped[name] = LoraLinear(lin, r, scaling, (pairs or {}).get(name))
            _set_module(model, name, wrapped[name])
    return wrapped


def write_adapter(directory: Path, wrapped: dict[str, LoraLinear], r: int, lora_alpha: float, base_model: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in wrapped.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = layer.lora_A.weight.detach().contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = layer.lora_B.weight.detach().contiguous()
    save_file(tensors, str(directory / ADAPTER_WEIGHTS))
    cfg = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": lora_alpha,
        "target_modules": sorted(wrapped),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "base_model_name_or_path": base_model,
        "inference_mode": True,
        "task_type": None,
    }
    (directory / ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
