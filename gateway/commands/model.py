"""`lora-gateway model ...`: train, adapt, install, list, activate, verify, remove.

install (of a ready bundle), list, activate, verify and remove need only the runtime
(numpy, onnxruntime). train, adapt and install of weights import the torch toolchain in
models/ lazily, and say how to get it when it is missing.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.commands.common import DEFAULT_CONFIG, config_path, error
from gateway.config import ConfigError, load_config
from gateway.detect.held import SiteSeries, csv_series, history_series
from gateway.detect.model_store import (
    DEFAULT_MIN_AGREEMENT,
    InstalledBundle,
    activate,
    active_bundle,
    default_model_root,
    install_bundle,
    list_bundles,
    packaged_default_bundle,
    parse_ref,
    remove,
    verify_bundle,
)
from gateway.detect.scoring import MANIFEST, BundleError

if TYPE_CHECKING:  # the toolchain needs torch: imported for real only inside the handlers
    from models.export import BuildOptions
    from models.train import TrainOptions

PROG = "lora-gateway model"
Handler = Callable[[argparse.Namespace], int]


class NeedsTorch(Exception):
    pass


def _err(message: str) -> int:
    error(message, "model")
    return 2


def _require_torch() -> None:
    missing = []
    for module in ("torch", "onnx", "onnxscript", "safetensors"):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise NeedsTorch(
            f"this command needs the training toolchain ({', '.join(missing)} missing): pip install 'lora-gateway[train]'"
        )


def _guard(handler: Handler) -> Handler:
    """Turn every expected failure into one line on stderr and exit code 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except NeedsTorch as e:
            return _err(str(e))
        except (BundleError, ConfigError) as e:
            return _err(str(e))
        except (ValueError, OSError) as e:  # includes models.weights.WeightsError (a ValueError)
            return _err(str(e))

    run.__name__ = handler.__name__
    return run


class _Progress:
    """A one-line text progress bar on stderr (no tqdm on the gateway)."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __call__(self, step: int, total: int, loss: float) -> None:
        filled = int(30 * step / total)
        end = "\n" if step == total else ""
        print(
            f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {step}/{total} loss {loss:.4f}",
            end=end,
            file=sys.stderr,
            flush=True,
        )


def _log(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _describe(b: InstalledBundle) -> dict[str, Any]:
    m = json.loads((b.path / MANIFEST).read_text())
    return {
        "ref": b.ref,
        "active": b.active,
        "arch": m.get("architecture", {}).get("arch"),
        "window": m.get("window"),
        "created": m.get("created"),
        "sha256": m["files"]["model.onnx"]["sha256"],
        "agreement": m.get("parity", {}).get("agreement"),
        "path": str(b.path),
    }


def _train_options(args: argparse.Namespace) -> TrainOptions:
    from models.train import TrainOptions

    return TrainOptions(steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed, csv=[Path(p) for p in args.csv])


def _floor(args: argparse.Namespace) -> float:
    """The gateway's parity floor: --min-agreement, else [model] min_agreement of the gateway's
    configuration file when there is one, else the default. Never the bundle's own figure."""
    if args.min_agreement is not None:
        return float(args.min_agreement)
    path = config_path(None)
    return load_config(path).model.min_agreement if path.is_file() else DEFAULT_MIN_AGREEMENT


def _site(args: argparse.Namespace) -> list[SiteSeries]:
    """The site's own data named on the command line: --csv files, --history channels."""
    site = [csv_series(Path(p)) for p in args.csv]
    if specs := getattr(args, "history", []):
        state_path = load_config(config_path(None)).state_path
        site += [series for spec in specs for series in history_series(state_path, spec)]
    return site


def _build_options(args: argparse.Namespace, name: str, version: str) -> BuildOptions:
    from models.export import BuildOptions

    return BuildOptions(name=name, version=version, min_agreement=_floor(args), site=tuple(_site(args)))


@_guard
def cmd_train(args: argparse.Namespace) -> int:
    _require_torch()
    from models.arch import ModelConfig
    from models.toolchain import bundle_from_weights, load_source, train_weights

    cfg = ModelConfig(
        arch=args.arch, window=args.window, hidden=args.hidden, latent=args.latent, name=args.name, version=args.version
    )
    out = Path(args.out)
    if args.bundle and Path(args.bundle).exists():
        raise BundleError(args.bundle, "already exists; remove it or choose another --bundle")
    opts = _train_options(args)
    _, cfg_path = train_weights(cfg, opts, out, _Progress("train"))
    _log(f"wrote {out} and {cfg_path}")
    if args.bundle:
        bundle_from_weights(
            load_source(out, cfg_path, [], None), Path(args.bundle), _build_options(args, cfg.name, cfg.version), _log
        )
        _log(f"wrote bundle {args.bundle}")
    return 0


@_guard
def cmd_adapt(args: argparse.Namespace) -> int:
    _require_torch()
    from models.toolchain import adapt_weights, bundle_from_weights, default_version, load_source

    if not args.csv:
        raise ValueError("adapt needs the site's normal data: --csv FILE (timestamp,value)")
    opts = _train_options(args)
    opts.synthetic_series = 0  # a site adapter learns that site's data only
    out = adapt_weights(
        Path(args.base),
        Path(args.config) if args.config else None,
        opts,
        Path(args.out),
        args.r,
        args.alpha,
        args.target or None,
        _Progress("adapt"),
    )
    _log(f"wrote adapter {out}")
    # The int8 model of base + adapter must hold on the data the adapter learnt: calibrated and checked on it.
    source = load_source(Path(args.base), Path(args.config) if args.config else None, [out], None)
    name, version = source.config.name, default_version(source)
    if args.bundle:
        bundle_from_weights(source, Path(args.bundle), _build_options(args, name, version), _log)
        _log(f"wrote bundle {args.bundle}")
        return 0
    with tempfile.TemporaryDirectory(prefix="lora-gateway-bundle.") as tmp:
        try:
            bundle_from_weights(source, Path(tmp) / "bundle", _build_options(args, name, version), _log)
        except BundleError as e:
            raise BundleError(out, f"written, but its int8 model is refused: {e.why}") from None
    return 0


@_guard
def cmd_install(args: argparse.Namespace) -> int:
    src, root = Path(args.source), Path(args.root)
    site = _site(args)
    if src.is_dir():
        if args.adapter:
            raise ValueError(f"{src}: --adapter applies to weights; a built bundle already has its adapters merged")
        installed = install_bundle(
            src, root, expected_sha256=args.sha256, min_agreement=_floor(args), site=site, report=_log
        )
    else:
        _require_torch()
        from models.toolchain import bundle_from_weights, default_version, load_source

        source = load_source(
            src, Path(args.config) if args.config else None, [Path(a) for a in args.adapter], args.sha256
        )
        name = args.name or source.config.name
        version = args.version or default_version(source)
        parse_ref(f"{name}@{version}")
        with tempfile.TemporaryDirectory(prefix="lora-gateway-bundle.") as tmp:
            bundle = Path(tmp) / "bundle"
            try:
                bundle_from_weights(source, bundle, _build_options(args, name, version), _log)
                installed = install_bundle(bundle, root, min_agreement=_floor(args), site=site, report=_log)
            except BundleError as e:
                if not e.path.is_relative_to(tmp):
                    raise
                raise BundleError(src, e.why) from None  # the temporary bundle is gone: name the user's weights
    _log(f"installed {installed.ref} at {installed.path}")
    if args.activate:
        activate(root, installed.ref, min_agreement=_floor(args))
        _log(f"activated {installed.ref} (a running daemon reloads on SIGHUP)")
    print(installed.ref)
    return 0


@_guard
def cmd_list(args: argparse.Namespace) -> int:
    rows = [_describe(b) for b in list_bundles(Path(args.root))]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(
            f"no bundles installed under {args.root} (the daemon uses the packaged default: {packaged_default_bundle()})"
        )
    for r in rows:
        print(
            f"{'*' if r['active'] else ' '} {r['ref']:32s} {r['arch'] or '?':12s} W={r['window']} sha256 {r['sha256'][:12]} {r['created']}"
        )
    return 0


@_guard
def cmd_activate(args: argparse.Namespace) -> int:
    b = activate(Path(args.root), args.ref, min_agreement=_floor(args))
    _log(f"activated {b.ref} (a running daemon reloads on SIGHUP)")
    return 0


@_guard
def cmd_verify(args: argparse.Namespace) -> int:
    root = Path(args.root)
    if args.target is None:
        path = active_bundle(root) or packaged_default_bundle()
    elif os.sep in args.target or Path(args.target).is_dir():
        path = Path(args.target)
    else:
        name, version = parse_ref(args.target)
        path = root / name / version
    m = verify_bundle(path, min_agreement=_floor(args), site=_site(args), report=_log)
    print(f"ok {m['name']}@{m['version']} {path}")
    return 0


@_guard
def cmd_remove(args: argparse.Namespace) -> int:
    remove(Path(args.root), args.ref)
    _log(f"removed {args.ref}")
    return 0


def _train_args(p: argparse.ArgumentParser, steps: int) -> None:
    p.add_argument(
        "--csv", action="append", default=[], metavar="FILE", help="series as timestamp,value (NAB layout); repeatable"
    )
    p.add_argument("--steps", type=int, default=steps, help=f"optimizer steps (default: {steps})")
    p.add_argument("--batch", type=int, default=256, help="windows per optimizer step (default: 256)")
    p.add_argument("--lr", type=float, default=2e-3, help="learning rate of the optimizer (default: 0.002)")
    p.add_argument("--seed", type=int, default=0, help="fixed seed: same seed, data and torch give the same weights")


def _site_args(p: argparse.ArgumentParser, use: str) -> None:
    p.add_argument("--csv", action="append", default=[], metavar="FILE",
                   help=f"a site's normal data as a timestamp,value CSV; {use}; repeatable")
    p.add_argument("--history", action="append", default=[], metavar="DEVICE[/CHANNEL]",
                   help="a site's data from the gateway's history (the state database of its configuration, "
                   f"$LORA_GATEWAY_CONFIG or {DEFAULT_CONFIG}): the device's channels, or one; {use}; repeatable")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `model` and its subcommands to the lora-gateway command line."""
    model = subparsers.add_parser(
        "model",
        help="train, install and manage anomaly models",
        description="Train, adapt, install and manage anomaly model bundles. install (of a bundle), list, activate, "
        "verify and remove need no torch; train, adapt and install of weights need the [train] extra.",
    )
    sub = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    root_help = f"model store (default: $LORA_GATEWAY_MODELS or {default_model_root()})"
    gate_help = (
        "this gateway's floor for int8/float alert agreement, measured on its own held windows "
        f"(default: [model] min_agreement of the gateway's configuration, else {DEFAULT_MIN_AGREEMENT}); "
        "a bundle's manifest never sets it"
    )

    p = sub.add_parser(
        "train",
        help="train the anomaly model (needs [train])",
        description=(
            "Train on synthetic sensor series (fixed seed) and optional CSV files; writes weights and config.json. "
            "The shipped default is: SOURCE_DATE_EPOCH=0 lora-gateway model train "
            "--out models/default/weights.safetensors --bundle models/default/bundle"
        ),
    )
    p.add_argument("--out", required=True, help="weights file to write (.safetensors; config.json goes beside it)")
    p.add_argument("--bundle", help="also build a bundle into this new directory")
    p.add_argument("--arch", default="mlp_ae", choices=("mlp_ae", "mlp_forecast", "conv_ae"),
                   help="mlp_ae: autoencoder, scores the reconstruction error; mlp_forecast: scores the error of "
                   "predicting the window's last values; conv_ae: convolutional autoencoder (default: mlp_ae)")
    p.add_argument("--window", type=int, default=32,
                   help="readings per scored window, at least 8 (a multiple of 4 for conv_ae; default: 32)")
    p.add_argument("--hidden", type=int, default=256, help="width of the hidden layers (default: 256)")
    p.add_argument("--latent", type=int, default=4,
                   help="width of the autoencoders' bottleneck: smaller learns only the typical shapes (default: 4)")
    p.add_argument("--name", default="default", help="model name in the manifest and in NAME@VERSION (default: default)")
    p.add_argument("--version", default="1.0.0", help="model version in the manifest (default: 1.0.0)")
    p.add_argument("--min-agreement", type=float, default=None, help=gate_help)
    _train_args(p, 4000)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("adapt", help="fine-tune a LoRA adapter on a site's normal data (needs [train])")
    p.add_argument("--base", required=True, help="base weights (.safetensors)")
    p.add_argument("--config", help="base config (default: config.json beside the weights)")
    p.add_argument("--out", required=True, help="adapter directory to write (PEFT layout)")
    p.add_argument("--r", type=int, default=4, help="adapter rank")
    p.add_argument("--alpha", type=float, default=8.0, help="lora_alpha (merge scale is alpha / r)")
    p.add_argument(
        "--target", action="append", default=[], help="module to adapt; repeatable (default: every linear layer)"
    )
    p.add_argument("--bundle", help="also build a bundle of base + adapter into this new directory")
    p.add_argument("--min-agreement", type=float, default=None, help=gate_help)
    _train_args(p, 600)
    p.set_defaults(func=cmd_adapt)

    p = sub.add_parser("install", help="install a bundle, or build one from weights (+ adapters; needs [train])")
    p.add_argument("source", help="a bundle directory, or a weights file (.safetensors, or .pt loaded weights-only)")
    p.add_argument(
        "--adapter", action="append", default=[], metavar="DIR", help="LoRA adapter (PEFT layout) to merge; repeatable"
    )
    p.add_argument("--config", help="config of the weights (default: config.json beside them)")
    p.add_argument("--sha256", help="expected sha256 of the weights file, or of a bundle's manifest.json")
    p.add_argument("--name", help="bundle name (default: the config's)")
    p.add_argument("--version", help="bundle version (default: the config's, plus an adapter digest)")
    p.add_argument("--activate", action="store_true", help="make it the active model once installed")
    p.add_argument("--min-agreement", type=float, default=None, help=gate_help)
    _site_args(p, "the int8 model's parity is checked on it (and, built from weights, calibrated on it too)")
    p.set_defaults(func=cmd_install)

    p = sub.add_parser("list", help="list installed bundles (* = active)")
    p.add_argument("--json", action="store_true", help="print the bundles as JSON")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("activate", help="make NAME@VERSION the active model (atomic)")
    p.add_argument("ref", metavar="NAME@VERSION", help="an installed bundle (see `lora-gateway model list`)")
    p.add_argument("--min-agreement", type=float, default=None, help=gate_help)
    p.set_defaults(func=cmd_activate)

    p = sub.add_parser("verify", help="check a bundle: hashes, loading, int8/float parity")
    p.add_argument(
        "target", nargs="?", metavar="NAME@VERSION|DIR", help="default: the active bundle (or the packaged default)"
    )
    p.add_argument("--min-agreement", type=float, default=None, help=gate_help)
    _site_args(p, "parity is checked on it too")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("remove", help="delete an installed bundle (not the active one)")
    p.add_argument("ref", metavar="NAME@VERSION", help="an installed bundle, not the active one")
    p.set_defaults(func=cmd_remove)

    for action in sub.choices.values():
        action.add_argument("--root", default=str(default_model_root()), help=root_help)
