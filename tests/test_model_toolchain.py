"""The torch side of the model toolchain: weights, LoRA adapters, ONNX export, int8, parity,
and every refusal, through the functions and through `lora-gateway model`.

Training runs are tiny (a few hundred steps) so the file runs in well under a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the model toolchain needs the [train] extra")
onnx = pytest.importorskip("onnx")

from gateway.commands.model import register  # noqa: E402
from gateway.detect.model_store import (  # noqa: E402
    BundleError,
    activate,
    active_bundle,
    install_bundle,
    verify_bundle,
    write_manifest,
)
from gateway.detect.scoring import OnnxScorer, load_session, sha256_file  # noqa: E402
from models.arch import ModelConfig, build_model  # noqa: E402
from models.data import detection_set, normal_windows  # noqa: E402
from models.export import BuildOptions, QuantSpec, build_bundle, export_onnx, quantize, run  # noqa: E402
from models.lora import LoraPair, check_base, merge_adapter, read_adapter, wrap_lora, write_adapter  # noqa: E402
from models.train import TrainOptions, train  # noqa: E402
from models.weights import WeightsError, load_weights, save_weights  # noqa: E402

from .bundles import SMALL_BUILD, low_parity_bundle  # noqa: E402

TINY = TrainOptions(steps=300, batch=128, pool=6000, synthetic_series=36)


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="lora-gateway")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained model saved as weights.safetensors + config.json."""
    d = tmp_path_factory.mktemp("weights")
    cfg = ModelConfig(name="tiny", version="0.1.0")
    save_weights(train(cfg, TINY), cfg, d / "weights.safetensors")
    return d / "weights.safetensors"


@pytest.fixture(scope="module")
def bundle(trained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    lw = load_weights(trained)
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    build_bundle(lw.model, lw.config, out, BuildOptions(name="tiny", version="0.1.0", **SMALL_BUILD))
    return out


@pytest.fixture
def store(bundle: Path, tmp_path: Path) -> Path:
    """A model store with the tiny bundle installed and active."""
    root = tmp_path / "store"
    activate(root, install_bundle(bundle, root).ref)
    return root


def assert_active_unchanged(root: Path) -> None:
    assert active_bundle(root) == root / "tiny" / "0.1.0"


def rewrite_hashes(bundle_dir: Path) -> None:
    """Make the manifest agree with tampered files, so that deeper checks must catch them."""
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    write_manifest(bundle_dir, manifest)


def copy_bundle(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest)
    return dest


# --- export, quantization, parity ---------------------------------------------------------


def test_export_is_one_self_contained_file_with_dynamic_batch(trained: Path, tmp_path: Path) -> None:
    lw = load_weights(trained)
    path = export_onnx(lw.model, lw.config.window, tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no m.onnx.data
    model = onnx.load(str(path))
    assert all(
        not t.HasField("data_location") or t.data_location == onnx.TensorProto.DEFAULT for t in model.graph.initializer
    )
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    sess = load_session(path)
    for b in (1, 7, 64):
        x = np.random.default_rng(b).normal(size=(b, lw.config.window)).astype(np.float32)
        got = sess.run(None, {"window": x})[0]
        with torch.no_grad():
            want = lw.model(torch.from_numpy(x)).numpy()
        assert got.shape == (b,)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_int8_matches_float_on_held_windows(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    parity = manifest["parity"]
    assert parity["agreement"] >= 0.995 and parity["correlation"] > 0.999
    held = detection_set(999, 1000, 100, manifest["window"], ModelConfig().norm)  # windows the build never saw
    f, q = run(bundle / "model.fp32.onnx", held.windows), run(bundle / "model.onnx", held.windows)
    threshold = parity["threshold"]
    assert np.corrcoef(f, q)[0, 1] > 0.999
    assert ((f > threshold) == (q > threshold)).mean() >= 0.995
    # int8 really is int8: the Gemm weights stored as 8-bit integers (unsigned: see QuantSpec)
    model = onnx.load(str(bundle / "model.onnx"))
    eight_bit = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.UINT8 and len(t.dims) == 2]
    assert eight_bit and sum(np.prod(t.dims) for t in eight_bit) > 10_000
    assert (bundle / "model.onnx").stat().st_size < (bundle / "model.fp32.onnx").stat().st_size / 2


def test_scorer_runs_the_bundle(bundle: Path) -> None:
    s = OnnxScorer(bundle)
    assert (s.name, s.version, s.window) == ("tiny", "0.1.0", 32)
    assert s.sha256 == s.manifest["files"]["model.onnx"]["sha256"]
    x = np.zeros((5, 32), np.float32)
    x[1, 10] = 9.0  # a spike
    scores = s.score(x)
    assert scores.shape == (5,) and scores.dtype == np.float32 and (scores >= 0).all()
    assert scores[1] > scores[0]
    with pytest.raises(ValueError):
        s.score(np.zeros((2, 31), np.float32))


# --- LoRA -----------------------------------------------------------------------------------


def random_adapter(model: torch.nn.Module, r: int, seed: int) -> dict[str, LoraPair]:
    g = torch.Generator().manual_seed(seed)
    pairs = {}
    for name in ("enc1", "dec2"):
        lin = model.get_submodule(name)
        pairs[name] = LoraPair(
            torch.randn(r, lin.in_features, generator=g) * 0.1, torch.randn(lin.out_features, r, generator=g) * 0.1
        )
    return pairs


def write_random_adapter(trained: Path, directory: Path, r: int = 4, alpha: float = 8.0) -> Path:
    lw = load_weights(trained)
    wrapped = wrap_lora(lw.model, ["enc1", "dec2"], r, alpha / r, random_adapter(lw.model, r, seed=1))
    write_adapter(directory, wrapped, r, alpha, base_model="tiny@0.1.0")
    return directory


def test_merged_adapter_equals_unmerged(trained: Path, tmp_path: Path) -> None:
    adapter_dir = write_random_adapter(trained, tmp_path / "lora")
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["target_modules"] == ["dec2", "enc1"]
    from safetensors.torch import load_file

    assert set(load_file(str(adapter_dir / "adapter_model.safetensors"))) == {
        f"base_model.model.{m}.lora_{ab}.weight" for m in ("enc1", "dec2") for ab in "AB"
    }

    x = torch.from_numpy(detection_set(5, 200, 20, 32, ModelConfig().norm).windows)
    base = load_weights(trained).model
    adapter = read_adapter(adapter_dir, base)
    unmerged = load_weights(trained).model
    wrap_lora(unmerged, adapter.target_modules, adapter.r, adapter.scaling, adapter.pairs)
    merged = load_weights(trained).model
    merge_adapter(merged, adapter)
    with torch.no_grad():
        y_base, y_unmerged, y_merged = base(x), unmerged(x), merged(x)
    torch.testing.assert_close(y_merged, y_unmerged, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(y_base, y_merged)  # the adapter did change the model
    # merged weights are W + alpha/r * B @ A
    p = adapter.pairs["enc1"]
    torch.testing.assert_close(merged.enc1.weight, base.enc1.weight + 2.0 * p.b @ p.a)


def test_adapt_then_install_with_adapter(
    trained: Path, store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv, values = write_site_csv(tmp_path / "site.csv")
    site = tmp_path / "site"
    # On its own data this tiny adapter's int8 model agrees with float on about 99.4-99.5% of
    # windows, at the edge of the default floor; this gateway's floor is lowered to 99%.
    rc = cli("model", "adapt", "--base", str(trained), "--csv", str(csv), "--out", str(site), "--steps", "100",
             "--min-agreement", "0.99")
    assert rc == 0
    assert "parity on site.csv: int8 and float alerts agree on" in capsys.readouterr().err
    assert (site / "adapter_config.json").is_file()
    written = json.loads((site / "adapter_config.json").read_text())
    assert (written["base_model_name_or_path"], written["revision"]) == (str(trained), sha256_file(trained))
    # the adapter fits the site's normal data better than the base model does
    x = torch.from_numpy(normal_windows([values], 2000, 32, ModelConfig().norm, seed=9))
    base = load_weights(trained).model
    adapted = load_weights(trained).model
    merge_adapter(adapted, read_adapter(site, adapted))
    with torch.no_grad():
        assert adapted(x).mean() < base(x).mean()
    rc = cli("model", "install", str(trained), "--adapter", str(site), "--csv", str(csv), "--min-agreement", "0.99",
             "--root", str(store), "--activate")
    assert rc == 0
    active = active_bundle(store)
    assert active is not None and active.parent.name == "tiny" and active.name.startswith("0.1.0-lora")
    manifest = json.loads((active / "manifest.json").read_text())
    assert manifest["source"]["adapters"][0]["r"] == 4
    assert set(manifest["source"]["adapters"][0]["files"]) == {"adapter_config.json", "adapter_model.safetensors"}
    assert manifest["calibration"]["site"][0]["sha256"] == sha256_file(csv)


# --- refusals: each names the file, and the active model stays ----------------------------------


def test_weights_sha256_mismatch(trained: Path, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("model", "install", str(trained), "--sha256", "0" * 64, "--root", str(store), "--activate") == 2
    err = capsys.readouterr().err
    assert "weights.safetensors" in err and "sha256 mismatch" in err
    assert_active_unchanged(store)


def test_bundle_sha256_mismatch(bundle: Path, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("model", "install", str(bundle), "--sha256", "f" * 64, "--root", str(store), "--activate") == 2
    assert "manifest.json: sha256 mismatch" in capsys.readouterr().err
    assert_active_unchanged(store)


def test_truncated_weights(trained: Path, tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(trained.read_bytes()[:-100])
    shutil.copy(trained.with_name("config.json"), tmp_path / "config.json")
    assert cli("model", "install", str(bad), "--root", str(store), "--activate") == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "not a valid safetensors file" in err
    assert_active_unchanged(store)


def test_truncated_model_in_bundle(
    bundle: Path, tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = copy_bundle(bundle, tmp_path / "b")
    data = (bad / "model.onnx").read_bytes()
    (bad / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match=r"model.onnx: size .*truncated"):
        verify_bundle(bad)
    rewrite_hashes(bad)  # hashes now agree: onnxruntime itself must refuse the file
    with pytest.raises(BundleError, match="model.onnx: onnxruntime cannot load it"):
        verify_bundle(bad)
    assert cli("model", "install", str(bad), "--root", str(store), "--activate") == 2
    assert "model.onnx" in capsys.readouterr().err
    assert_active_unchanged(store)


class Payload:
    """Unpickling this would create a directory: proof that pickle code ran."""

    marker: Path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def test_pickle_with_code_is_refused_and_never_runs(
    trained: Path, tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = Payload()
    payload.marker = tmp_path / "pwned"
    tensors = dict(load_weights(trained).model.state_dict())
    tensors["enc1.weight"] = payload  # type: ignore[assignment]
    pt = tmp_path / "weights.pt"
    torch.save(tensors, pt)
    shutil.copy(trained.with_name("config.json"), tmp_path / "config.json")
    with pytest.raises(WeightsError, match="weights.pt: refused: pickle"):
        load_weights(pt)
    assert cli("model", "install", str(pt), "--root", str(store), "--activate") == 2
    err = capsys.readouterr().err
    assert "weights.pt: refused: pickle" in err
    # torch's sentence that names the global, whole; not its advice to load with weights_only=False
    assert err.rstrip().endswith("(Trying to load unsupported GLOBAL posix.mkdir whose module posix is blocked.)"), err
    assert "weights_only" not in err
    assert not payload.marker.exists()
    assert_active_unchanged(store)
    # a plain state dict in a .pt is fine
    torch.save(dict(load_weights(trained).model.state_dict()), pt)
    assert load_weights(pt).config.name == "tiny"


def test_weights_shapes_must_match_config(
    trained: Path, tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(trained, tmp_path / "weights.safetensors")
    cfg = json.loads(trained.with_name("config.json").read_text())
    cfg["hidden"] = 48  # trained with 256
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        WeightsError,
        match=r"weights.safetensors: tensor enc1.weight has shape \[256, 32\] but the config needs \[48, 32\]",
    ):
        load_weights(tmp_path / "weights.safetensors")
    assert cli("model", "install", str(tmp_path / "weights.safetensors"), "--root", str(store), "--activate") == 2
    assert "enc1.weight" in capsys.readouterr().err
    assert_active_unchanged(store)


def test_adapter_targeting_missing_module(
    trained: Path, tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    adapter = write_random_adapter(trained, tmp_path / "lora")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["target_modules"] = ["enc1", "dec2", "attn.q_proj"]
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    assert cli("model", "install", str(trained), "--adapter", str(adapter), "--root", str(store), "--activate") == 2
    err = capsys.readouterr().err
    assert "adapter_config.json" in err and "'attn.q_proj' is not in the model" in err
    assert_active_unchanged(store)

    # tensors (rather than the config) naming a module the model lacks
    from safetensors.torch import load_file, save_file

    cfg["target_modules"] = ["enc1", "dec2"]
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    tensors["base_model.model.head.lora_A.weight"] = torch.zeros(4, 32)
    save_file(tensors, str(adapter / "adapter_model.safetensors"))
    with pytest.raises(
        WeightsError, match="adapter_model.safetensors: tensors target module 'head' that the model lacks"
    ):
        read_adapter(adapter, load_weights(trained).model)


def test_adapter_rank_mismatch(trained: Path, tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    adapter = write_random_adapter(trained, tmp_path / "lora", r=2, alpha=4.0)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["r"] = 4
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    assert cli("model", "install", str(trained), "--adapter", str(adapter), "--root", str(store), "--activate") == 2
    err = capsys.readouterr().err
    assert "adapter_model.safetensors" in err and "rank 2/2 but r is 4" in err
    assert_active_unchanged(store)


def test_manifest_not_matching_files(
    bundle: Path, tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = copy_bundle(bundle, tmp_path / "b")
    data = bytearray((bad / "model.fp32.onnx").read_bytes())
    data[-10] ^= 0xFF  # same size, other content
    (bad / "model.fp32.onnx").write_bytes(bytes(data))
    assert cli("model", "install", str(bad), "--root", str(store), "--activate") == 2
    err = capsys.readouterr().err
    assert "model.fp32.onnx: sha256 mismatch" in err
    extra = copy_bundle(bundle, tmp_path / "c")
    (extra / "notes.txt").write_text("not in the manifest")
    with pytest.raises(BundleError, match="notes.txt: file not listed in the manifest"):
        verify_bundle(extra)
    gone = copy_bundle(bundle, tmp_path / "d")
    (gone / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest.json: manifest missing"):
        install_bundle(gone, store)
    assert_active_unchanged(store)


def test_parity_failure_with_a_broken_int8_model(
    trained: Path, bundle: Path, tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An int8 file of another (untrained) model, with hashes that match: only the re-measured
    # parity can catch it.
    bad = copy_bundle(bundle, tmp_path / "b")
    other = build_model(ModelConfig())
    fp32 = export_onnx(other, 32, tmp_path / "other.onnx")
    calib = detection_set(3, 300, 30, 32, ModelConfig().norm).windows
    quantize(fp32, bad / "model.onnx", calib, QuantSpec())
    rewrite_hashes(bad)
    with pytest.raises(BundleError, match=r"model.onnx: parity gate failed"):
        verify_bundle(bad)
    assert cli("model", "install", str(bad), "--root", str(store), "--activate") == 2
    assert "model.onnx: parity gate failed" in capsys.readouterr().err
    assert_active_unchanged(store)


def test_parity_tolerance_that_cannot_be_met(
    trained: Path, bundle: Path, tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lw = load_weights(trained)
    with pytest.raises(BundleError, match="model.onnx: parity gate failed"):
        build_bundle(
            lw.model,
            lw.config,
            tmp_path / "never",
            BuildOptions(name="tiny", version="9", min_agreement=1.01, **SMALL_BUILD),
        )
    assert not (tmp_path / "never").exists()
    assert (
        cli(
            "model",
            "install",
            str(trained),
            "--version",
            "0.2.0",
            "--min-agreement",
            "1.01",
            "--root",
            str(store),
            "--activate",
        )
        == 2
    )
    # named by the user's weights file, not by the temporary bundle that is gone
    assert f"lora-gateway model: {trained}: parity gate failed" in capsys.readouterr().err
    assert not (store / "tiny" / "0.2.0").exists()
    assert_active_unchanged(store)


# --- the CLI end to end -----------------------------------------------------------------------------


def test_train_cli_writes_weights_config_and_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "w.safetensors"
    rc = cli(
        "model",
        "train",
        "--out",
        str(out),
        "--bundle",
        str(tmp_path / "bundle"),
        "--steps",
        "30",
        "--name",
        "t",
        "--version",
        "2",
    )
    assert rc == 0
    err = capsys.readouterr().err
    assert "30/30" in err  # the progress line reached the end
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["training"]["steps"] == 30 and cfg["training"]["seed"] == 0
    manifest = verify_bundle(tmp_path / "bundle")
    assert manifest["source"]["weights"]["file"] == "w.safetensors"
    assert manifest["normalization"]["method"] == "robust_history"
    # same seed, same weights
    again = tmp_path / "again" / "w.safetensors"
    assert cli("model", "train", "--out", str(again), "--steps", "30") == 0
    assert again.read_bytes() == out.read_bytes()


def test_install_weights_and_manage(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "store"
    assert cli("model", "install", str(trained), "--sha256", sha256_file(trained), "--root", str(root)) == 0
    assert capsys.readouterr().out.strip() == "tiny@0.1.0"
    assert active_bundle(root) is None  # install alone does not activate
    assert cli("model", "activate", "tiny@0.1.0", "--root", str(root)) == 0
    assert cli("model", "list", "--root", str(root), "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["ref"], r["active"]) for r in rows] == [("tiny@0.1.0", True)]
    assert cli("model", "verify", "--root", str(root)) == 0
    assert cli("model", "remove", "tiny@0.1.0", "--root", str(root)) == 2
    assert "is the active model" in capsys.readouterr().err


# --- the gate belongs to the installer ------------------------------------------------------------


def agreement_in(message: str) -> float:
    """The agreement figure a parity refusal gives, as a fraction."""
    m = re.search(r"agree on (\d+\.\d+)% of", message)
    assert m, message
    return float(m[1]) / 100


def test_a_bundle_built_with_a_low_gate_is_refused_by_the_installer(
    tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    low = tmp_path / "low"
    manifest = low_parity_bundle(low)
    assert manifest["parity"]["min_agreement"] == 0.5 and manifest["parity"]["agreement"] < 0.995
    assert cli("model", "install", str(low), "--root", str(store), "--activate") == 2
    err = capsys.readouterr().err.strip()
    assert f"{low / 'model.onnx'}: parity gate failed" in err and "99.50%" in err
    assert agreement_in(err) < 0.995
    assert not (store / "lowparity").exists()
    assert_active_unchanged(store)
    # The floor is this gateway's to lower, on the command line or in its configuration.
    config = tmp_path / "config.toml"
    config.write_text("[model]\nmin_agreement = 0.9\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LORA_GATEWAY_CONFIG", str(config))
        assert cli("model", "install", str(low), "--root", str(store)) == 0
    # ... and activation applies the default floor again.
    assert cli("model", "activate", "lowparity@0.9.0", "--root", str(store)) == 2
    assert "parity gate failed" in capsys.readouterr().err
    assert_active_unchanged(store)


def test_a_manifest_threshold_edited_to_pass_is_not_the_gate(
    bundle: Path, tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The int8 model of another (untrained) model, and a threshold no score reaches: every
    # window "agrees" at the manifest's threshold. The hashes are made to match.
    bad = copy_bundle(bundle, tmp_path / "b")
    fp32 = export_onnx(build_model(ModelConfig()), 32, tmp_path / "other.onnx")
    quantize(fp32, bad / "model.onnx", detection_set(3, 300, 30, 32, ModelConfig().norm).windows, QuantSpec())
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["version"] = "0.1.1"
    manifest["parity"]["threshold"] = 1e9
    manifest["parity"]["min_agreement"] = 0.0
    write_manifest(bad, manifest)
    assert cli("model", "install", str(bad), "--root", str(store), "--activate") == 2
    err = capsys.readouterr().err.strip()
    assert f"{bad / 'model.onnx'}: parity gate failed" in err
    assert agreement_in(err) < 0.995 and "threshold 1e+09" not in err
    assert_active_unchanged(store)


# --- adapters: merged as peft does, or refused naming the field ------------------------------------


def edit_adapter_config(adapter: Path, **changes: object) -> None:
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg.update(changes)
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("init", ["pissa", "pissa_niter_4", "olora", "corda", "loftq"])
def test_adapters_that_changed_their_base_are_refused(
    init: str, trained: Path, tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    adapter = write_random_adapter(trained, tmp_path / "lora")
    edit_adapter_config(adapter, init_lora_weights=init)
    assert cli("model", "install", str(trained), "--adapter", str(adapter), "--root", str(store), "--activate") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"lora-gateway model: {adapter / 'adapter_config.json'}: init_lora_weights {init!r}")
    assert "path_initial_model_for_weight_conversion" in err
    assert_active_unchanged(store)


def test_inits_that_keep_the_base_merge(trained: Path, tmp_path: Path) -> None:
    adapter = write_random_adapter(trained, tmp_path / "lora")
    for init in (True, False, "gaussian", "eva"):
        edit_adapter_config(adapter, init_lora_weights=init)
        assert read_adapter(adapter, load_weights(trained).model).config.init_lora_weights == init


def test_exclude_modules_leaves_those_modules_alone(trained: Path, tmp_path: Path) -> None:
    adapter = write_random_adapter(trained, tmp_path / "lora")  # tensors for enc1 and dec2
    base = load_weights(trained).model
    for exclude in (["enc2", "dec1"], "(enc2|dec1)"):
        edit_adapter_config(adapter, target_modules=["enc1", "enc2", "dec1", "dec2"], exclude_modules=exclude)
        merged = load_weights(trained).model
        read = read_adapter(adapter, merged)
        assert read.target_modules == ["dec2", "enc1"]
        merge_adapter(merged, read)
        torch.testing.assert_close(merged.enc2.weight, base.enc2.weight, rtol=0, atol=0)
        assert not torch.equal(merged.enc1.weight, base.enc1.weight)
    # tensors for a module that exclude_modules names: refused for that reason
    edit_adapter_config(adapter, target_modules=["enc1", "dec2"], exclude_modules=["dec2"])
    with pytest.raises(WeightsError, match="safetensors: tensors for 'dec2', which exclude_modules excludes"):
        read_adapter(adapter, load_weights(trained).model)


def test_base_model_is_checked_against_the_weights(
    trained: Path, tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    adapter = write_random_adapter(trained, tmp_path / "lora")
    edit_adapter_config(adapter, base_model_name_or_path="meta-llama/Llama-2-7b-hf")
    assert cli("model", "install", str(trained), "--adapter", str(adapter), "--root", str(store)) == 2
    err = capsys.readouterr().err
    assert "adapter_config.json: base_model_name_or_path 'meta-llama/Llama-2-7b-hf' does not name" in err
    # `revision` holding a sha256 (what `model adapt` writes) must be the weights' sha256
    edit_adapter_config(adapter, base_model_name_or_path=str(trained), revision="ab" * 32)
    assert cli("model", "install", str(trained), "--adapter", str(adapter), "--root", str(store)) == 2
    assert f"adapter_config.json: revision {'ab' * 32} is the sha256 of other base weights" in capsys.readouterr().err
    edit_adapter_config(adapter, revision=sha256_file(trained))
    lw = load_weights(trained)
    check_base(read_adapter(adapter, lw.model), trained, lw.weights_sha256, "tiny", "0.1.0")
    assert not (store / "tiny" / "0.2.0").exists()
    assert_active_unchanged(store)


def test_manifest_records_rslora_scaling(trained: Path, tmp_path: Path) -> None:
    adapter = write_random_adapter(trained, tmp_path / "lora", r=4, alpha=8.0)
    edit_adapter_config(adapter, use_rslora=True)
    root = tmp_path / "store"
    assert cli("model", "install", str(trained), "--adapter", str(adapter), "--root", str(root)) == 0
    (installed,) = (root / "tiny").iterdir()
    (record,) = json.loads((installed / "manifest.json").read_text())["source"]["adapters"]
    assert record["use_rslora"] is True and record["scaling"] == 8.0 / 2  # lora_alpha / sqrt(r)


def test_nan_adapter_is_refused_naming_the_users_file(
    trained: Path, tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import load_file, save_file

    adapter = write_random_adapter(trained, tmp_path / "lora")
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    for value in (float("nan"), float("inf")):
        tensors["base_model.model.dec2.lora_B.weight"][0, 0] = value
        save_file(tensors, str(adapter / "adapter_model.safetensors"))
        assert cli("model", "install", str(trained), "--adapter", str(adapter), "--root", str(store)) == 2
        err = capsys.readouterr().err.strip()
        assert err == (
            f"lora-gateway model: {adapter / 'adapter_model.safetensors'}: "
            "tensor base_model.model.dec2.lora_B.weight holds NaN or infinity"
        )
    assert_active_unchanged(store)


@pytest.mark.parametrize(
    "text, field",
    [
        ("[1, 2]", "top level"),
        ('{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": [1, 2]}', "target_modules"),
        ('{"peft_type": "LORA", "r": "4", "lora_alpha": 8, "target_modules": ["enc1"]}', "r"),
        ('{"peft_type": "LORA", "r": 4, "lora_alpha": true, "target_modules": ["enc1"]}', "lora_alpha"),
        ('{"peft_type": "LORA", "r": 4, "lora_alpha": 8}', "target_modules"),
        ('"LORA"', "top level"),
    ],
)
def test_malformed_adapter_config_is_one_line(
    text: str, field: str, trained: Path, tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    adapter = write_random_adapter(trained, tmp_path / "lora")
    (adapter / "adapter_config.json").write_text(text)
    assert cli("model", "install", str(trained), "--adapter", str(adapter), "--root", str(store)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"lora-gateway model: {adapter / 'adapter_config.json'}: invalid adapter config: {field}")
    assert_active_unchanged(store)


def test_safetensors_named_pt_is_read_as_safetensors(trained: Path, tmp_path: Path) -> None:
    renamed = tmp_path / "weights.pt"
    shutil.copy(trained, renamed)
    shutil.copy(trained.with_name("config.json"), tmp_path / "config.json")
    lw = load_weights(renamed)
    torch.testing.assert_close(lw.model.state_dict(), load_weights(trained).model.state_dict())
    assert cli("model", "install", str(renamed), "--root", str(tmp_path / "store")) == 0


# --- site data ------------------------------------------------------------------------------------


def write_site_csv(path: Path, seed: int = 4, n: int = 3000) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(seed)
    values = 20 + 3 * np.sin(np.arange(n) / 40) + rng.normal(0, 0.3, n)
    path.write_text(
        "timestamp,value\n" + "".join(f"2024-01-01 00:{i % 60:02d}:00,{v:.4f}\n" for i, v in enumerate(values))
    )
    return path, values


def test_install_calibrates_and_checks_on_the_sites_data(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv, _ = write_site_csv(tmp_path / "site.csv")
    root = tmp_path / "store"
    assert cli("model", "install", str(trained), "--csv", str(csv), "--root", str(root)) == 0
    err = capsys.readouterr().err
    assert "parity on site.csv: int8 and float alerts agree on" in err  # at the build and again at install
    manifest = json.loads((root / "tiny" / "0.1.0" / "manifest.json").read_text())
    (calibrated,) = manifest["calibration"]["site"]
    assert calibrated["file"] == "site.csv" and calibrated["sha256"] == sha256_file(csv) and calibrated["windows"] > 0
    (checked,) = manifest["parity"]["site"]
    assert checked["file"] == "site.csv" and checked["agreement"] >= 0.995
    # a ready bundle is checked on the site's data too (no torch needed for that)
    assert cli("model", "verify", str(root / "tiny" / "0.1.0"), "--csv", str(csv)) == 0
    assert "parity on site.csv" in capsys.readouterr().err
    empty = tmp_path / "empty.csv"
    empty.write_text("timestamp,value\n")
    assert cli("model", "verify", str(root / "tiny" / "0.1.0"), "--csv", str(empty)) == 2
    assert "empty.csv: no numeric values" in capsys.readouterr().err


@pytest.mark.parametrize(
    "field, value",
    [("use_dora", True), ("modules_to_save", ["head"]), ("layers_to_transform", 0), ("rank_pattern", {"enc1": 8}),
     ("lora_bias", True), ("target_parameters", ["enc1.weight"])],
)
def test_unsupported_peft_fields_are_refused_by_name(
    field: str, value: object, trained: Path, tmp_path: Path
) -> None:
    adapter = write_random_adapter(trained, tmp_path / "lora")
    edit_adapter_config(adapter, **{field: value})
    with pytest.raises(WeightsError, match=rf"adapter_config.json: {field} .* is not supported"):
        read_adapter(adapter, load_weights(trained).model)
    edit_adapter_config(adapter, **{field: None})  # peft writes null for an unset field
    read_adapter(adapter, load_weights(trained).model)


def test_a_constant_site_series_is_calibrated_on_and_not_judged(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Every window of a flat series normalizes to zeros: its p99 threshold is every float score, and
    # int8's rounding alone put each window on a side of it (0.00% agreement, NAB's art_flatline).
    csv, _ = write_site_csv(tmp_path / "site.csv")
    flat = tmp_path / "flat.csv"
    flat.write_text("timestamp,value\n" + "".join(f"2024-01-01 00:{i % 60:02d}:00,3.3\n" for i in range(1000)))
    root = tmp_path / "store"
    assert cli("model", "install", str(trained), "--csv", str(csv), "--csv", str(flat), "--root", str(root)) == 0
    err = capsys.readouterr().err
    assert "parity on flat.csv: not judged, its" in err and "parity on site.csv: int8 and float alerts agree on" in err
    manifest = json.loads((root / "tiny" / "0.1.0" / "manifest.json").read_text())
    assert [c["file"] for c in manifest["calibration"]["site"]] == ["site.csv", "flat.csv"]
    assert [c["file"] for c in manifest["parity"]["site"]] == ["site.csv"]
    assert cli("model", "verify", str(root / "tiny" / "0.1.0"), "--csv", str(flat)) == 0
    assert "parity on flat.csv: not judged" in capsys.readouterr().err
