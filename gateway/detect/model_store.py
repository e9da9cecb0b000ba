"""The store of installed model bundles: verify, install (immutable), activate (atomic), remove.

Layout under a root directory:
    root/<name>/<version>/   a bundle: model.onnx (int8), model.fp32.onnx, parity_windows.npy,
                             manifest.json; files read-only once installed
    root/active              symlink to "<name>/<version>", replaced atomically
Runtime only: numpy, onnxruntime, hashlib, json. No torch, no onnx package.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gateway.detect.held import THRESHOLD_PERCENTILE, HeldSet, SiteSeries, gateway_held, site_held
from gateway.detect.scoring import (
    MANIFEST,
    MODEL_FP32,
    MODEL_INT8,
    PARITY_WINDOWS,
    BundleError,
    OnnxScorer,
    read_manifest,
    sha256_file,
)

__all__ = [
    "DEFAULT_MIN_AGREEMENT",
    "BundleError",
    "InstalledBundle",
    "ParityFigures",
    "activate",
    "active_bundle",
    "alert_threshold",
    "compare_scores",
    "default_model_root",
    "install_bundle",
    "list_bundles",
    "packaged_default_bundle",
    "parse_ref",
    "remove",
    "verify_bundle",
]

ACTIVE = "active"
DEFAULT_MIN_AGREEMENT = 0.995  # int8/float alert agreement a bundle needs, unless the gateway sets another floor
DEFAULT_ROOT = Path("/var/lib/lora-gateway/models")
REQUIRED_FILES = (MODEL_INT8, MODEL_FP32, PARITY_WINDOWS)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class InstalledBundle:
    name: str
    version: str
    path: Path
    active: bool
    manifest_sha256: str

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class ParityFigures:
    """How the int8 model's scores compare with the float model's on the same windows."""

    windows: int
    max_abs_diff: float
    mean_abs_diff: float
    correlation: float
    threshold: float  # alert threshold the agreement is measured at
    agreement: float  # fraction of windows with the same alert decision

    def to_manifest(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"int8 and float alerts agree on {self.agreement:.2%} of {self.windows} windows at threshold "
            f"{self.threshold:.4g} (max score difference {self.max_abs_diff:.4g}, correlation {self.correlation:.4f})"
        )


def alert_threshold(normal_scores: np.ndarray) -> float:
    """The alert threshold parity is judged at: a high percentile of float scores on normal windows."""
    return float(np.percentile(normal_scores, THRESHOLD_PERCENTILE))


def compare_scores(float_scores: np.ndarray, int8_scores: np.ndarray, threshold: float) -> ParityFigures:
    f = np.asarray(float_scores, dtype=np.float64)
    q = np.asarray(int8_scores, dtype=np.float64)
    diff = np.abs(f - q)
    corr = float(np.corrcoef(f, q)[0, 1]) if f.std() > 0 and q.std() > 0 else 0.0
    return ParityFigures(
        windows=len(f),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        correlation=corr,
        threshold=float(threshold),
        agreement=float(((f > threshold) == (q > threshold)).mean()),
    )


def default_model_root() -> Path:
    return Path(os.environ.get("LORA_GATEWAY_MODELS") or DEFAULT_ROOT)


def packaged_default_bundle() -> Path:
    """The bundle shipped in models/default/bundle (found without importing torch or models)."""
    spec = importlib.util.find_spec("models")
    if spec is None or not spec.submodule_search_locations:
        raise BundleError("models/default/bundle", "the models package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "default" / "bundle"


def parse_ref(ref: str) -> tuple[str, str]:
    """'name@version' -> (name, version); both must be safe single path components."""
    name, sep, version = ref.partition("@")
    if not sep or not _NAME.match(name) or not _NAME.match(version):
        raise ValueError(f"{ref!r} is not NAME@VERSION (letters, digits, '.', '_', '-')")
    return name, version


def verify_bundle(
    bundle_dir: Path,
    *,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    site: Sequence[SiteSeries] = (),
    report: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Check a bundle end to end; returns its manifest or raises BundleError naming the file.

    Checks: manifest present and well-formed, every file's sha256 and size, both models load
    in onnxruntime with the manifest's window, and the int8 model gives the same alerts as
    the float model, measured here on this machine's onnxruntime. The gate is the installer's:
    `min_agreement` is this gateway's floor, the threshold is p99 of the float model's scores
    on the gateway's own normal windows, and the windows are the gateway's held series, the
    bundle's shipped windows and each `site` series (at p99 of its own float scores). The
    manifest's parity threshold and min_agreement are a record of the build, never the gate.
    """
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    mpath = bundle_dir / MANIFEST
    files = manifest["files"]
    for name in REQUIRED_FILES:
        if name not in files:
            raise BundleError(mpath, f"manifest does not list {name}")
    present = {p.name for p in bundle_dir.iterdir()} - {MANIFEST}
    if extra := sorted(present - set(files)):
        raise BundleError(bundle_dir / extra[0], "file not listed in the manifest")
    for name, entry in files.items():
        path = bundle_dir / name
        if "/" in name or name.startswith(".") or not isinstance(entry, dict):
            raise BundleError(mpath, f"bad files entry {name!r}")
        if path.is_symlink() or not path.is_file():
            raise BundleError(path, "listed in the manifest but missing (or a symlink)")
        size = path.stat().st_size
        if size != entry.get("bytes"):
            raise BundleError(path, f"size {size} bytes, manifest says {entry.get('bytes')} (truncated or replaced)")
        if (digest := sha256_file(path)) != entry.get("sha256"):
            raise BundleError(path, f"sha256 mismatch: file has {digest}, manifest says {entry.get('sha256')}")

    int8 = OnnxScorer(bundle_dir, model_file=MODEL_INT8)
    fp32 = OnnxScorer(bundle_dir, model_file=MODEL_FP32)
    wpath = bundle_dir / PARITY_WINDOWS
    try:
        shipped = np.load(wpath, allow_pickle=False).astype(np.float32)
    except (ValueError, OSError) as e:
        raise BundleError(wpath, f"unreadable held windows ({e})") from None
    if shipped.ndim != 2 or shipped.shape[1] != int8.window or len(shipped) == 0:
        raise BundleError(wpath, f"held windows have shape {list(shipped.shape)}, want [N, {int8.window}]")

    own = gateway_held(int8.window, int8.normalization)
    own_threshold = alert_threshold(fp32.score(own.windows[own.normal]))
    bundles_own = HeldSet("the bundle's held windows", shipped, np.ones(len(shipped), bool))
    checks = [(own, own_threshold), (bundles_own, own_threshold)]
    for series in site:
        site_windows = site_held(series, int8.window, int8.normalization)
        if site_windows.constant:
            if report is not None:
                report(site_windows.not_judged())
            continue
        checks.append((site_windows, alert_threshold(fp32.score(site_windows.windows))))
    for held, threshold in checks:
        fig = compare_scores(fp32.score(held.windows), int8.score(held.windows), threshold)
        if report is not None:
            report(f"parity on {held.source}: {fig.summary()}")
        if not np.isfinite(fig.max_abs_diff) or fig.agreement < min_agreement:
            raise BundleError(
                bundle_dir / MODEL_INT8,
                f"parity gate failed on {held.source}: {fig.summary()}; this gateway needs {min_agreement:.2%}",
            )
    return manifest


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's data and entries to the disk (a folder holds its files' names)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_bundle(directory: Path) -> None:
    for p in directory.iterdir():
        _fsync(p)
    _fsync(directory)


def _make_read_only(directory: Path) -> None:
    for p in directory.iterdir():
        p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    directory.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)


def _bundle(root: Path, name: str, version: str, active: str | None) -> InstalledBundle:
    path = root / name / version
    return InstalledBundle(name, version, path, active == f"{name}@{version}", sha256_file(path / MANIFEST))


def install_bundle(
    src_dir: Path,
    root: Path,
    *,
    expected_sha256: str | None = None,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    site: Sequence[SiteSeries] = (),
    report: Callable[[str], None] | None = None,
) -> InstalledBundle:
    """Verify `src_dir`, copy it to root/<name>/<version>, verify the copy, make it read-only.

    `expected_sha256` pins the bundle: the sha256 of its manifest.json, which lists the
    sha256 of every other file. Installing the same bundle twice is a no-op; another bundle
    under an installed name@version is refused (installed bundles are immutable).
    Nothing is activated here. The parity gate is this gateway's (see verify_bundle). The copy,
    its folder and the folders above it are fsynced before this returns.
    """
    src_dir, root = Path(src_dir), Path(root)
    if expected_sha256 is not None and (src_dir / MANIFEST).is_file():  # no manifest: verify says so
        digest = sha256_file(src_dir / MANIFEST)
        if digest != expected_sha256.lower():
            raise BundleError(
                src_dir / MANIFEST, f"sha256 mismatch: bundle has {digest}, expected {expected_sha256.lower()}"
            )
    manifest = verify_bundle(src_dir, min_agreement=min_agreement, site=site, report=report)
    try:
        name, version = parse_ref(f"{manifest['name']}@{manifest['version']}")
    except ValueError as e:
        raise BundleError(src_dir / MANIFEST, str(e)) from None
    dest = root / name / version
    active = _active_ref(root)
    if dest.exists():
        if sha256_file(dest / MANIFEST) == sha256_file(src_dir / MANIFEST):
            return _bundle(root, name, version, active)
        raise BundleError(
            dest,
            f"{name}@{version} is already installed with different content; bundles are immutable, use a new version",
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=dest.parent))
    try:
        for entry in [MANIFEST, *manifest["files"]]:
            shutil.copyfile(src_dir / entry, tmp / entry)
        verify_bundle(tmp, min_agreement=min_agreement, site=site)  # what landed on disk is what was checked
        _make_read_only(tmp)
        _fsync_bundle(tmp)  # before the rename, so the name never points at files still in the cache
        os.rename(tmp, dest)
    except BaseException:
        tmp.chmod(stat.S_IRWXU)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync(dest.parent)
    _fsync(root)
    return _bundle(root, name, version, active)


def _active_ref(root: Path) -> str | None:
    try:
        target = os.readlink(Path(root) / ACTIVE)
    except (FileNotFoundError, OSError):
        return None
    name, _, version = target.partition("/")
    return f"{name}@{version}"


def active_bundle(root: Path) -> Path | None:
    """The active bundle's directory, or None when nothing (valid) is active."""
    ref = _active_ref(root)
    if ref is None:
        return None
    path = Path(root) / ref.replace("@", "/", 1)
    return path if (path / MANIFEST).is_file() else None


def _installed(root: Path, ref: str) -> tuple[str, str, Path]:
    """Name, version and directory of an installed bundle, or a BundleError saying why not."""
    try:
        name, version = parse_ref(ref)
    except ValueError as e:
        raise BundleError(root, str(e)) from None
    path = root / name / version
    if not (path / MANIFEST).is_file():
        raise BundleError(path, f"{ref} is not installed")
    return name, version, path


def activate(root: Path, ref: str, *, min_agreement: float = DEFAULT_MIN_AGREEMENT) -> InstalledBundle:
    """Point root/active at an installed, verified bundle; an atomic rename, so a reader sees
    the old or the new model, never neither. A bundle that fails verification stays inactive.

    The bundle's files and folders are fsynced before the link is made, and root (which holds
    the link) after it is replaced, so after a power cut `active` names a whole bundle."""
    root = Path(root)
    name, version, path = _installed(root, ref)
    verify_bundle(path, min_agreement=min_agreement)
    _fsync_bundle(path)
    _fsync(path.parent)
    tmp = root / f".active.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(f"{name}/{version}", tmp)
    os.replace(tmp, root / ACTIVE)
    _fsync(root)
    return _bundle(root, name, version, ref)


def list_bundles(root: Path) -> list[InstalledBundle]:
    root = Path(root)
    if not root.is_dir():
        return []
    active = _active_ref(root)
    out = []
    for name_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and _NAME.match(p.name)):
        for vdir in sorted(p for p in name_dir.iterdir() if p.is_dir() and _NAME.match(p.name)):
            if (vdir / MANIFEST).is_file():
                out.append(_bundle(root, name_dir.name, vdir.name, active))
    return out


def remove(root: Path, ref: str) -> None:
    """Delete an installed bundle; the active one is refused."""
    root = Path(root)
    _, _, path = _installed(root, ref)
    if _active_ref(root) == ref:
        raise BundleError(path, f"{ref} is the active model; activate another first")
    path.chmod(stat.S_IRWXU)
    shutil.rmtree(path)
    if not any(path.parent.iterdir()):
        path.parent.rmdir()


def write_manifest(bundle_dir: Path, manifest: dict[str, Any]) -> None:
    """Fill in 'files' (sha256 and size of every other file) and write manifest.json."""
    manifest["files"] = {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(bundle_dir.iterdir())
        if p.name != MANIFEST
    }
    (bundle_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
