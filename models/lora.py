"""LoRA adapters in PEFT's on-disk layout: read, check, apply unmerged, merge, write.

Layout: a directory with adapter_config.json (peft_type "LORA", r, lora_alpha,
target_modules, base_model_name_or_path) and adapter_model.safetensors holding
`base_model.model.<module>.lora_A.weight` [r, in] and `...lora_B.weight` [out, r].
Merging adds (lora_alpha / r) * B @ A to the module's weight (lora_alpha / sqrt(r) with use_rslora),
as peft's merge_and_unload() does. Adapters whose initialisation changed the base weights (PiSSA,
OLoRA, ...) and were saved without conversion are refused: they fit no base installed here.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError
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


class AdapterConfig(BaseModel):
    """The fields of adapter_config.json that decide the merge; PEFT's other fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    peft_type: StrictStr
    r: StrictInt = Field(gt=0)
    lora_alpha: StrictInt | StrictFloat
    target_modules: list[StrictStr] | StrictStr = Field(min_length=1)
    exclude_modules: list[StrictStr] | StrictStr | None = None
    use_rslora: StrictBool = False
    init_lora_weights: StrictBool | StrictStr = True
    bias: StrictStr = "none"
    base_model_name_or_path: StrictStr | None = None
    revision: StrictStr | None = None  # `model adapt` writes the base weights' sha256 here


@dataclass
class Adapter:
    directory: Path
    config: AdapterConfig
    scaling: float  # lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora
    pairs: dict[str, LoraPair]  # module name -> tensors
    files: dict[str, str]  # file name -> sha256

    @property
    def r(self) -> int:
        return self.config.r

    @property
    def target_modules(self) -> list[str]:
        return sorted(self.pairs)


def linear_modules(model: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def _matches(name: str, targets: list[str] | str) -> bool:
    """PEFT's rule: a list matches a module name exactly or as a dotted suffix; a string is a regex."""
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


# init_lora_weights values that leave the base weights as they were. PiSSA, OLoRA, CorDA and
# LoftQ subtract their initial B @ A from the base instead, so an adapter saved without
# conversion only fits that changed base, which is not the one installed here.
_UNSUPPORTED = (
    "use_dora",
    "modules_to_save",
    "layers_to_transform",
    "layer_replication",
    "rank_pattern",
    "alpha_pattern",
    "lora_bias",
    "target_parameters",
    "trainable_token_indices",
)
_BASE_UNCHANGED: tuple[bool | str, ...] = (True, False, "gaussian", "eva")
_BASE_CHANGED = ("pissa", "olora", "corda", "loftq")


def read_adapter_config(path: Path) -> AdapterConfig:
    """adapter_config.json, checked: one WeightsError line for any problem, naming the field."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise WeightsError(
            path, "adapter config missing (PEFT layout: adapter_config.json + adapter_model.safetensors)"
        ) from None
    except (OSError, ValueError) as e:
        raise WeightsError(path, f"unreadable adapter config ({e})") from None
    try:
        cfg = AdapterConfig.model_validate(raw)
    except ValidationError as e:
        problems = [f"{'.'.join(map(str, err['loc'])) or 'top level'}: {err['msg']}" for err in e.errors()]
        raise WeightsError(path, f"invalid adapter config: {'; '.join(problems)}") from None
    if cfg.peft_type != "LORA":
        raise WeightsError(path, f"peft_type is {cfg.peft_type!r}, only 'LORA' is supported")
    for unsupported in _UNSUPPORTED:
        value = raw.get(unsupported)
        # unset is null, false or empty; layers_to_transform 0 is layer 0, so no truth test
        if not (value is None or value is False or value == [] or value == {}):
            raise WeightsError(path, f"{unsupported} {value!r} is not supported")
    if cfg.bias != "none":
        raise WeightsError(path, f"bias {cfg.bias!r} is not supported (only 'none')")
    init = cfg.init_lora_weights
    if isinstance(init, str) and init.lower().startswith(_BASE_CHANGED):
        raise WeightsError(
            path,
            f"init_lora_weights {init!r}: peft changed the base weights when it set this adapter up, so saved "
            "without conversion it fits only that changed base; save it with peft's "
            "save_pretrained(..., path_initial_model_for_weight_conversion=...), which makes a plain LoRA adapter",
        )
    if init not in _BASE_UNCHANGED:
        raise WeightsError(
            path, f"init_lora_weights {init!r} is not supported (only {', '.join(map(repr, _BASE_UNCHANGED))})"
        )
    return cfg


def read_adapter(directory: Path, model: nn.Module) -> Adapter:
    """Read and check an adapter against `model`; any mismatch is a WeightsError naming the file."""
    cfg_path, w_path = directory / ADAPTER_CONFIG, directory / ADAPTER_WEIGHTS
    cfg = read_adapter_config(cfg_path)
    r, targets, exclude = cfg.r, cfg.target_modules, cfg.exclude_modules

    linears = linear_modules(model)
    matched = {name for name in linears if _matches(name, targets) and not (exclude and _matches(name, exclude))}
    if isinstance(targets, list):
        for t in targets:
            if not any(name == t or name.endswith("." + t) for name in linears):
                raise WeightsError(
                    cfg_path, f"target module {t!r} is not in the model (its linear modules: {sorted(linears)})"
                )
    elif not any(_matches(name, targets) for name in linears):
        raise WeightsError(cfg_path, f"target_modules regex {targets!r} matches no module of the model")
    if not matched:
        raise WeightsError(cfg_path, f"exclude_modules {exclude!r} leaves none of the targeted modules")

    tensors = read_tensors(w_path)
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        m = _KEY.match(key)
        if not m:
            raise WeightsError(w_path, f"unexpected tensor {key!r} (want base_model.model.<module>.lora_A/B.weight)")
        if not torch.isfinite(value).all():
            raise WeightsError(w_path, f"tensor {key} holds NaN or infinity")
        halves.setdefault(m["module"], {})[m["ab"]] = value.float()
    for module, ab in halves.items():
        if module not in linears:
            raise WeightsError(w_path, f"tensors target module {module!r} that the model lacks")
        if module not in matched:
            why = "exclude_modules excludes" if _matches(module, targets) else "target_modules does not name"
            raise WeightsError(w_path, f"tensors for {module!r}, which {why}")
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
    return Adapter(
        directory=directory,
        config=cfg,
        scaling=cfg.lora_alpha / math.sqrt(r) if cfg.use_rslora else cfg.lora_alpha / r,
        pairs={k: LoraPair(v["A"], v["B"]) for k, v in halves.items()},
        files={ADAPTER_CONFIG: sha256_file(cfg_path), ADAPTER_WEIGHTS: sha256_file(w_path)},
    )


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def check_base(adapter: Adapter, weights: Path, weights_sha256: str, model_name: str, model_version: str) -> None:
    """Refuse an adapter that records other base weights than `weights`.

    `revision`, when it is a sha256 (as `model adapt` writes it), must be the weights' sha256.
    Otherwise `base_model_name_or_path`, when set, must end in the weights' file or folder name,
    or be the model's name or NAME@VERSION; unset, there is nothing to check.
    """
    path, cfg = adapter.directory / ADAPTER_CONFIG, adapter.config
    if cfg.revision and _SHA256.match(cfg.revision.lower()):
        if cfg.revision.lower() != weights_sha256:
            raise WeightsError(
                path, f"revision {cfg.revision} is the sha256 of other base weights than {weights} ({weights_sha256})"
            )
        return
    recorded = (cfg.base_model_name_or_path or "").rstrip("/")
    if not recorded:
        return
    names = {weights.name, weights.resolve().parent.name, model_name, f"{model_name}@{model_version}"}
    if recorded.rsplit("/", 1)[-1] not in names:
        raise WeightsError(
            path,
            f"base_model_name_or_path {recorded!r} does not name the base weights {weights} "
            f"(want its file or folder name, {model_name!r} or '{model_name}@{model_version}')",
        )


def provenance(adapter: Adapter) -> dict[str, Any]:
    """What the manifest records of a merged adapter."""
    cfg = adapter.config
    return {
        "dir": adapter.directory.name,
        "r": cfg.r,
        "lora_alpha": float(cfg.lora_alpha),
        "use_rslora": cfg.use_rslora,
        "scaling": adapter.scaling,
        "init_lora_weights": cfg.init_lora_weights,
        "target_modules": adapter.target_modules,
        "base_model_name_or_path": cfg.base_model_name_or_path,
        "revision": cfg.revision,
        "files": adapter.files,
    }


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


def write_adapter(
    directory: Path,
    wrapped: dict[str, LoraLinear],
    r: int,
    lora_alpha: float,
    base_model: str,
    revision: str | None = None,
) -> None:
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
        "revision": revision,
        "inference_mode": True,
        "task_type": None,
    }
    (directory / ADAPTER_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
