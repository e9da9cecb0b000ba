"""Load and save model weights safely: safetensors, or .pt through torch.load(weights_only=True).

Every refusal is a WeightsError naming the file and the reason.
"""

from __future__ import annotations

import json
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from gateway.detect.scoring import sha256_file
from models.arch import ModelConfig, build_model


class WeightsError(ValueError):
    """Weights, config or adapter refused: names the file and why."""

    def __init__(self, path: Path | str, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.path = Path(path)
        self.why = why


@dataclass
class LoadedWeights:
    model: nn.Module
    config: ModelConfig
    weights_path: Path
    config_path: Path
    weights_sha256: str
    config_sha256: str


def config_path_for(weights: Path) -> Path:
    """config.json beside the weights (the Hugging Face convention)."""
    return weights.with_name("config.json")


def read_config(path: Path) -> ModelConfig:
    try:
        return ModelConfig.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        raise WeightsError(path, "config missing: weights need their config.json beside them (or --config)") from None
    except (OSError, ValueError, TypeError) as e:
        raise WeightsError(path, f"invalid model config ({e})") from None


def _is_safetensors(path: Path) -> bool:
    """Whatever its name: safetensors starts with the header's length (8 bytes, little-endian) and
    the header's JSON object, which fits in the file; a torch zip starts with PK, a pickle with 0x80."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:] == b"{" and 8 + int.from_bytes(head[:8], "little") <= path.stat().st_size


# The sentence of torch's refusal that names the global the pickle would import ("... GLOBAL
# posix.system whose module posix is blocked."); dots inside names do not end it.
_GLOBAL_SENTENCE = re.compile(r"[^.\n]*GLOBAL\b.*?(?:\.(?=\s|$)|$)", re.MULTILINE)


def _what_it_holds(e: pickle.UnpicklingError) -> str:
    """What the refused pickle holds, in whole sentences. Not torch's opening advice: to load it
    with weights_only=False is exactly what must not be done with a file of unknown origin."""
    text = str(e)
    if m := _GLOBAL_SENTENCE.search(text):
        return " ".join(m[0].split())
    return " ".join(text.split()) or "disallowed content"


def read_tensors(path: Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or .pt file; pickled code never runs."""
    if not path.is_file():
        raise WeightsError(path, "no such file")
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256.lower():
            raise WeightsError(path, f"sha256 mismatch: file has {actual}, expected {expected_sha256.lower()}")
    if path.suffix == ".safetensors" or _is_safetensors(path):
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(path, f"not a valid safetensors file ({e})") from None
    if path.suffix in (".pt", ".pth", ".bin"):
        try:
            # weights_only restricts unpickling to tensors and plain containers: a pickle
            # that would import or call anything is rejected before it runs.
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise WeightsError(
                path, f"refused: pickle holds more than tensors (code or objects); nothing was run ({_what_it_holds(e)})"
            ) from None
        except (RuntimeError, EOFError, OSError, ValueError) as e:
            raise WeightsError(path, f"not a readable torch file ({(str(e).splitlines() or [type(e).__name__])[0]})") from None
        if not isinstance(obj, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
        ):
            raise WeightsError(path, "a .pt must hold a flat state dict {name: tensor}")
        return obj
    raise WeightsError(path, "unknown weights format: use .safetensors (or .pt loaded with weights_only)")


def check_state(path: Path, model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse weights whose names or shapes differ from what the config builds."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in tensors.items()}
    if missing := sorted(set(want) - set(have)):
        raise WeightsError(path, f"weights lack {missing} that the config's architecture needs")
    if extra := sorted(set(have) - set(want)):
        raise WeightsError(path, f"weights hold {extra} that the config's architecture lacks")
    for k in want:
        if want[k] != have[k]:
            raise WeightsError(path, f"tensor {k} has shape {list(have[k])} but the config needs {list(want[k])}")
    for k, v in tensors.items():
        if not torch.isfinite(v).all():
            raise WeightsError(path, f"tensor {k} holds NaN or infinity")


def load_weights(path: Path, config: Path | None = None, expected_sha256: str | None = None) -> LoadedWeights:
    tensors = read_tensors(path, expected_sha256)
    cfg_path = config or config_path_for(path)
    cfg = read_config(cfg_path)
    model = build_model(cfg)
    check_state(path, model, tensors)
    model.load_state_dict({k: v.float() for k, v in tensors.items()})
    model.eval()
    return LoadedWeights(model, cfg, path, cfg_path, sha256_file(path), sha256_file(cfg_path))


def save_weights(model: nn.Module, cfg: ModelConfig, path: Path) -> Path:
    """Write `path` (.safetensors) and config.json beside it; returns the config path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
    path.chmod(0o644)  # safetensors writes 0600; weights are not secret and the daemon user reads them
    cfg_path = config_path_for(path)
    cfg_path.write_text(json.dumps(cfg.to_json(), indent=2, sort_keys=True) + "\n")
    return cfg_path
