"""The runtime side of models: the shipped default bundle, the scorer, the store, the CLI
commands that must work on a Pi without torch. Nothing here imports torch."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from gateway.commands.model import register
from gateway.detect.held import HELD_SERIES
from gateway.detect.model_store import (
    BundleError,
    activate,
    active_bundle,
    default_model_root,
    install_bundle,
    list_bundles,
    packaged_default_bundle,
    parse_ref,
    remove,
    verify_bundle,
    write_manifest,
)
from gateway.detect.scoring import Normalization, OnnxScorer, sha256_file
from gateway.service.history import History

REPO = Path(__file__).resolve().parents[1]


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="lora-gateway")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def renamed_bundle(tmp_path: Path, version: str) -> Path:
    """A copy of the default bundle under another version (the manifest re-hashed)."""
    d = tmp_path / f"src-{version}"
    shutil.copytree(packaged_default_bundle(), d)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["version"] = version
    write_manifest(d, manifest)
    return d


def test_packaged_default_bundle_is_shipped_and_valid() -> None:
    path = packaged_default_bundle()
    assert path == REPO / "models" / "default" / "bundle"
    manifest = verify_bundle(path)
    assert (manifest["name"], manifest["window"]) == ("default", 32)
    assert manifest["parity"]["agreement"] >= 0.995
    assert manifest["normalization"]["method"] == "robust_history"
    # int8 at most a third of the float file is the target for weights; the files hold graph overhead too
    assert (path / "model.onnx").stat().st_size < (path / "model.fp32.onnx").stat().st_size / 2
    assert (REPO / "models" / "default" / "weights.safetensors").is_file()
    assert json.loads((REPO / "models" / "default" / "config.json").read_text())["training"]["seed"] == 0


def test_scorer_interface_and_batching() -> None:
    s = OnnxScorer(packaged_default_bundle(), threads=1)
    assert (s.name, s.version, s.window) == ("default", "1.0.0", 32)
    assert s.sha256 == sha256_file(packaged_default_bundle() / "model.onnx")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 32)).astype(np.float32)
    batch = s.score(x)
    assert batch.shape == (64,) and batch.dtype == np.float32 and (batch >= 0).all()
    one_by_one = np.concatenate([s.score(x[i : i + 1]) for i in range(64)])
    np.testing.assert_allclose(batch, one_by_one, rtol=1e-6)
    spiky = x[:1].copy()
    spiky[0, 20] = 12.0
    assert s.score(spiky)[0] > batch[0]
    for bad in (np.zeros((0, 32)), np.zeros((3, 16)), np.zeros(32)):
        with pytest.raises(ValueError):
            s.score(bad)


def test_scorer_refuses_a_swapped_model(tmp_path: Path) -> None:
    d = shutil.copytree(packaged_default_bundle(), tmp_path / "b")
    shutil.copy(d / "model.fp32.onnx", d / "model.onnx")
    with pytest.raises(BundleError, match="model.onnx: sha256 .* does not match the manifest"):
        OnnxScorer(d)


def test_normalization_reference() -> None:
    norm = Normalization(history=5)
    m, s = norm.stats(np.array([[1.0, 2.0, 3.0, 4.0, 100.0]]))
    assert m[0] == 3.0 and s[0] == pytest.approx(1.4826)  # MAD ignores the outlier
    z = norm.apply(np.array([[5.0, 5, 5, 5, 6]]), np.array([[5.0, 7.0]]))  # MAD 0: mean abs dev fallback
    assert z.dtype == np.float32 and z[0, 0] == 0 and z[0, 1] == pytest.approx(2 / (1.2533 * 0.2))
    z = norm.apply(np.full((1, 5), 3.3), np.array([[3.3, 3.31]]))  # constant history: finite
    assert np.isfinite(z).all() and z[0, 1] > 100
    assert Normalization.from_manifest(norm.to_manifest()) == norm


def test_store_install_activate_list_remove(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "store"
    a = install_bundle(
        packaged_default_bundle(), root, expected_sha256=sha256_file(packaged_default_bundle() / "manifest.json")
    )
    assert a.ref == "default@1.0.0" and not a.active and active_bundle(root) is None
    files = list(a.path.iterdir())
    assert all(not (p.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) for p in [a.path, *files])
    assert install_bundle(packaged_default_bundle(), root).path == a.path  # same content again: no-op

    b = install_bundle(renamed_bundle(tmp_path, "1.0.1"), root)
    activate(root, a.ref)
    assert active_bundle(root) == a.path
    assert os.readlink(root / "active") == "default/1.0.0"
    activate(root, b.ref)
    assert active_bundle(root) == b.path
    assert [(x.ref, x.active) for x in list_bundles(root)] == [("default@1.0.0", False), ("default@1.0.1", True)]
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp left behind

    with pytest.raises(BundleError, match="is the active model"):
        remove(root, b.ref)
    remove(root, a.ref)
    assert not a.path.exists() and active_bundle(root) == b.path

    monkeypatch.setenv("LORA_GATEWAY_MODELS", str(root))
    assert default_model_root() == root


def test_installed_bundles_are_immutable(tmp_path: Path) -> None:
    root = tmp_path / "store"
    install_bundle(packaged_default_bundle(), root)
    other = renamed_bundle(tmp_path, "1.0.0")  # same ref, different manifest content
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["created"] = "2030-01-01T00:00:00+00:00"
    write_manifest(other, manifest)
    with pytest.raises(BundleError, match="already installed with different content"):
        install_bundle(other, root)


def test_refusals_leave_the_active_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "store"
    activate(root, install_bundle(packaged_default_bundle(), root).ref)
    assert cli("model", "activate", "nope@1", "--root", str(root)) == 2
    assert "nope/1: nope@1 is not installed" in capsys.readouterr().err
    assert cli("model", "activate", "../etc@1", "--root", str(root)) == 2
    assert "is not NAME@VERSION" in capsys.readouterr().err
    bad = renamed_bundle(tmp_path, "2.0.0")
    (bad / "parity_windows.npy").write_bytes(b"\x93NUMPY garbage")
    assert cli("model", "install", str(bad), "--root", str(root), "--activate") == 2
    assert "parity_windows.npy: size" in capsys.readouterr().err
    assert active_bundle(root) == root / "default" / "1.0.0"
    assert not (root / "default" / "2.0.0").exists()


def test_parse_ref() -> None:
    assert parse_ref("default@1.0.0") == ("default", "1.0.0")
    for bad in ("default", "a@", "@1", "../x@1", "a@b/c", "a@.hidden"):
        with pytest.raises(ValueError):
            parse_ref(bad)


def test_runtime_commands_never_import_torch(tmp_path: Path) -> None:
    """The Pi's path: scorer, store and every torch-free command run with torch unimportable."""
    script = textwrap.dedent(
        f"""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "onnx", "onnxscript", "safetensors"):
                    raise ModuleNotFoundError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import argparse, numpy as np
        import gateway.detect.scoring, gateway.detect.model_store
        from gateway.commands.model import register
        from gateway.detect.model_store import packaged_default_bundle
        from gateway.detect.scoring import OnnxScorer
        p = argparse.ArgumentParser(); register(p.add_subparsers(dest="c", required=True))
        def run(*a):
            args = p.parse_args(list(a)); return args.func(args)
        root = {str(tmp_path / "store")!r}
        s = OnnxScorer(packaged_default_bundle())
        assert s.score(np.zeros((4, s.window), np.float32)).shape == (4,)
        assert run("model", "install", str(packaged_default_bundle()), "--root", root, "--activate") == 0
        assert run("model", "list", "--root", root) == 0
        assert run("model", "verify", "default@1.0.0", "--root", root) == 0
        assert run("model", "activate", "default@1.0.0", "--root", root) == 0
        assert run("model", "train", "--out", {str(tmp_path / "w.safetensors")!r}) == 2
        assert run("model", "install", {str(tmp_path / "w.safetensors")!r}, "--root", root) == 2
        bad = [m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "safetensors", "models")]
        assert not bad, bad
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")
    assert "pip install 'lora-gateway[train]'" in out.stderr


def test_plain_import_does_not_load_torch() -> None:
    code = "import sys, gateway.detect.scoring, gateway.detect.model_store, gateway.commands.model; print('torch' in sys.modules, 'onnx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_install_and_activate_reach_the_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[Path] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    root = tmp_path / "models"
    b = install_bundle(renamed_bundle(tmp_path, "2.0.0"), root)
    names = sorted(p.name for p in b.path.iterdir())
    # written under a temporary name beside the bundle's final place, synced, then renamed
    staged = [p for p in synced if p.parent.parent == b.path.parent and p.parent.name.startswith(".2.0.0.")]
    assert sorted(p.name for p in staged if p.name in names) == names
    assert synced[-2:] == [b.path.parent, root]  # the folders holding the new names, after the rename
    synced.clear()
    activate(root, b.ref)
    assert set(b.path.iterdir()) | {b.path} <= set(synced)
    assert synced[-1] == root  # the folder holding the new link, after the link was replaced


def test_held_series_are_the_ones_the_toolchain_makes() -> None:
    """gateway/detect/held_series.npz is models.data.held_series(); rebuild it with
    python -c 'import models.data as d; d.write_held_series()'"""
    data = pytest.importorskip("models.data")
    normal, anomalous = data.held_series()
    with np.load(HELD_SERIES) as shipped:
        np.testing.assert_array_equal(shipped["normal"], normal)
        np.testing.assert_array_equal(shipped["anomalous"], anomalous)


def test_parity_on_a_channel_of_the_gateways_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state.db"
    rng = np.random.default_rng(5)
    temperature = 20 + 3 * np.sin(np.arange(2000) / 40) + rng.normal(0, 0.3, 2000)
    history = History(state, retention_s=1e12, interval_s=0.0)  # every reading kept: parity needs a long series
    history.append(
        ("pump-house", 1000.0 + i, json.dumps({"values": {"temperature": t, "battery": 3.6}, "anomaly": {}}), None, "ok")
        for i, t in enumerate(temperature)
    )
    history.close()
    (tmp_path / "config.toml").write_text(f'state_path = "{state}"\n')
    monkeypatch.setenv("LORA_GATEWAY_CONFIG", str(tmp_path / "config.toml"))
    bundle = str(packaged_default_bundle())
    assert cli("model", "verify", bundle, "--history", "pump-house/temperature") == 0
    assert "parity on history pump-house/temperature: int8 and float alerts agree on" in capsys.readouterr().err
    root = tmp_path / "models"
    assert cli("model", "install", bundle, "--history", "boiler", "--root", str(root)) == 2
    assert capsys.readouterr().err.strip() == (
        f"lora-gateway model: {state}: no readings of 'boiler' in the history (devices with history: pump-house)"
    )
    assert cli("model", "install", bundle, "--history", "pump-house/humidity", "--root", str(root)) == 2
    assert "'pump-house' has no channel 'humidity' in the history (it has ['battery', 'temperature'])" in (
        capsys.readouterr().err
    )
    assert not root.exists()


def test_a_bundle_error_crosses_a_process_boundary_whole() -> None:
    error = pickle.loads(pickle.dumps(BundleError("/models/x/model.onnx", "sha256 mismatch")))
    assert isinstance(error, BundleError) and error.path == Path("/models/x/model.onnx")
    assert error.why == "sha256 mismatch" and str(error) == "/models/x/model.onnx: sha256 mismatch"
