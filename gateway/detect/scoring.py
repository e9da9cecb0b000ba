"""Run an installed model bundle with onnxruntime: normalized windows in, anomaly scores out.

Runtime only (numpy + onnxruntime): the Pi never has torch. The normalization defined here
is the single reference that both training (models/) and the detector follow.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

MANIFEST = "manifest.json"
MODEL_INT8 = "model.onnx"
MODEL_FP32 = "model.fp32.onnx"
PARITY_WINDOWS = "parity_windows.npy"
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
MEAN_AD_TO_SIGMA = 1.2533  # same for the mean absolute deviation (fallback when MAD is 0)


class BundleError(Exception):
    """A model file that is refused: names the file and why."""

    def __init__(self, path: Path | str, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.path = Path(path)
        self.why = why

    def __reduce__(self) -> tuple[type[BundleError], tuple[Path, str]]:
        # Raised in a worker process (bench's pools), it must cross back whole: Exception's own
        # pickling would call __init__ with the message alone.
        return type(self), (self.path, self.why)


@dataclass(frozen=True)
class Normalization:
    """How a window is normalized before the model sees it (recorded in every manifest).

    For a window x[t-W+1 .. t] of one channel, take the `history` values just before it,
    h = x[t-W-history+1 .. t-W] (fewer during warm-up), and compute
        m = median(h)
        s = 1.4826 * median(|h - m|), or if that is 0: 1.2533 * mean(|h - m|), floored at
            min_scale * max(1, |m|) so that a constant history does not divide by zero
        z = (x - m) / s
    The history excludes the window so that an anomaly inside the window does not hide
    itself by moving the statistics. The model clips z to [-clip, clip] itself.

    Values on a grid of width g (a quantised sensor; the detector knows each channel's) take
    both medians as medians of grouped data: each value spread evenly over its grid cell, the
    median interpolated within the tied values. A plain median of 0.1-step readings with a
    spread of 0.2 jumps between 0.1 and 0.2, halving or doubling every z at once; this one
    moves smoothly. g = 0 (continuous values, and training) is the plain median.
    """

    history: int = 128
    clip: float = 8.0
    min_scale: float = 1e-6

    def stats(self, history: np.ndarray, grid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Location and scale of each row of `history` [..., H] (robust: median and MAD), of
        values on a grid of width `grid` [...] where given (see the class)."""
        h = np.asarray(history, dtype=np.float64)
        if grid is None:
            m = _median(h)
            dev = np.abs(h - m[..., None])
            s = MAD_TO_SIGMA * _median(dev)
        else:
            # The sorted values and their sorted deviations in one array, sorted in place: both grouped
            # medians in one pass of calls (numpy's overhead per call is most of the cost of a small
            # batch), and no large temporaries (each a fresh mmap and its page faults).
            both = np.empty((2, *h.shape))
            ordered, dev = both
            ordered[...] = h
            ordered.sort(axis=-1)
            m = _sorted_median(ordered)
            # Deviations from the plain median, which lies on the grid or halfway: they are on a grid too.
            np.subtract(h, m[..., None], out=dev)
            np.abs(dev, out=dev)
            dev.sort(axis=-1)
            mad = _sorted_median(dev)
            # A grid finer than _FINE of the spread moves a grouped median by less than half a cell, a
            # negligible part of the spread: those rows (every continuous sensor's) keep the plain one.
            g = np.asarray(grid, dtype=np.float64)
            coarse = g > _FINE * mad
            if coarse.any():
                m, mad = _grouped_median(both, np.where(coarse, g, 0.0), _LOWEST, np.stack([m, mad]))
            s = MAD_TO_SIGMA * mad
        s = np.where(s > 0, s, MEAN_AD_TO_SIGMA * _mean(dev))
        s = np.maximum(s, self.min_scale * np.maximum(1.0, np.abs(m)))
        return m, s

    def apply(
        self, history: np.ndarray, window: np.ndarray, floor: np.ndarray | None = None, grid: np.ndarray | None = None
    ) -> np.ndarray:
        """Normalize `window` [..., W] by the statistics of `history` [..., H], the scale at least
        `floor` [...] where given (the detector's: a quantised sensor's resolution), the history
        on a grid of width `grid` [...] where given (see the class); float32."""
        m, s = self.stats(history, grid)
        if floor is not None:
            s = np.maximum(s, floor)
        return ((np.asarray(window, dtype=np.float64) - m[..., None]) / s[..., None]).astype(np.float32)

    def to_manifest(self) -> dict[str, Any]:
        return {
            "method": "robust_history",
            **asdict(self),
            "location": "median(h)",
            "scale": "1.4826*median(|h-m|); if 0: 1.2533*mean(|h-m|); floor min_scale*max(1,|m|)",
            "history_excludes_window": True,
            "clip_applied_by": "model",
        }

    @classmethod
    def from_manifest(cls, spec: dict[str, Any]) -> Normalization:
        if spec.get("method") != "robust_history":
            raise ValueError(f"unknown normalization method {spec.get('method')!r}")
        return cls(history=int(spec["history"]), clip=float(spec["clip"]), min_scale=float(spec["min_scale"]))


def _median(a: np.ndarray) -> np.ndarray:
    """`np.median(a, axis=-1)`, the same values, from a full sort: numpy's SIMD sort of rows this
    short is several times faster than the partition np.median uses (the detector's hot spot)."""
    n = a.shape[-1]
    if n == 0:
        return np.median(a, axis=-1)  # NaN and its warning, as before
    return _sorted_median(np.sort(a, axis=-1))


def _sorted_median(s: np.ndarray) -> np.ndarray:
    """`_median` of rows already sorted."""
    n = s.shape[-1]
    # The middle one (odd n) or the mean of the middle two, as np.median takes them.
    m = _mean(s[..., (n - 1) // 2 : n // 2 + 1])
    nan = np.isnan(s[..., -1])  # NaN sorts last; np.median gives NaN for a row holding one
    return np.where(nan, np.nan, m)[()] if nan.any() else m  # [()]: a scalar for one row, as np.median


# The lowest a grouped median's cells reach: none for a location, 0 for absolute deviations.
_LOWEST = np.array([-np.inf, 0.0])
_FINE = 1e-3


def _grouped_median(s: np.ndarray, width: np.ndarray, lowest: np.ndarray, plain: np.ndarray) -> np.ndarray:
    """The medians of sorted rows `s` [2, ..., n], their values on a grid of `width` [...], each
    spread evenly over its cell, no cell of s[i] reaching below `lowest[i]`: within the cell of
    the middle value, as far as the count of values below it says (the median of grouped data).
    `plain` [2, ...] is the rows' plain median, which a width of 0 gives exactly."""
    n = s.shape[-1]
    v = s[..., (n - 1) // 2]
    half = width / 2
    lowest = lowest.reshape((2,) + (1,) * (v.ndim - 1))
    # Values are a whole number of cells apart, so half a cell tells them apart despite rounding.
    below = np.count_nonzero(s < (v - half)[..., None], axis=-1)
    upto = np.count_nonzero(s <= (hi := v + half)[..., None], axis=-1)
    lo = np.maximum(v - half, lowest)
    median = lo + (hi - lo) * (n / 2 - below) / (upto - below)
    if n % 2 == 0:
        # Exactly half the values up to the middle cell: the median is anywhere in the gap to the next
        # value; its middle, as the plain median takes it (and so equals it as the cells shrink to nothing).
        median = np.where(upto == n // 2, (v + s[..., n // 2]) / 2, median)
    # The middle value in the lowest cell (deviations: most values equal the median) says a held or
    # constant signal, not noise read through a grid: the plain median, and the spread's fallback.
    # A row holding NaN keeps its NaN.
    return np.where((v > lowest) & ~np.isnan(plain), median, plain)


def _mean(a: np.ndarray) -> np.ndarray:
    """`a.mean(axis=-1)`, the same sum and division without the Python wrapper around them
    (several microseconds a call, which the daemon pays per batch, often of one reading)."""
    return np.add.reduce(a, axis=-1) / a.shape[-1]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()


def session_options(threads: int = 1) -> ort.SessionOptions:
    """Options for a small always-on daemon: few threads, no spinning, sequential graph.

    The CPU arena stays on (the default): turning it off measured neither faster nor smaller
    at this model size (bench/bench_model.py).
    """
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle worker threads must not burn a Pi core between packets.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


def load_session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """Open an ONNX file; a truncated or corrupt file is a BundleError naming it."""
    try:
        return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises several unrelated types for a bad file
        raise BundleError(
            path, f"onnxruntime cannot load it ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None


def read_manifest(bundle_dir: Path) -> dict[str, Any]:
    path = Path(bundle_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(path, "manifest missing: not a model bundle") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(path, f"manifest unreadable ({e})") from None
    if not isinstance(manifest, dict):
        raise BundleError(path, "manifest is not a JSON object")
    for key, kind in (("name", str), ("version", str), ("window", int), ("files", dict), ("normalization", dict)):
        if not isinstance(manifest.get(key), kind):
            raise BundleError(path, f"manifest lacks {key!r} (a {kind.__name__})")
    try:
        Normalization.from_manifest(manifest["normalization"])
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(path, f"manifest normalization not understood ({e})") from None
    return manifest


class OnnxScorer:
    """Scores batches of normalized windows with a bundle's int8 model.onnx."""

    def __init__(self, bundle_dir: Path, *, threads: int = 1, model_file: str = MODEL_INT8) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.manifest = read_manifest(self.bundle_dir)
        self.name: str = str(self.manifest["name"])
        self.version: str = str(self.manifest["version"])
        self.window: int = int(self.manifest["window"])
        self.normalization = Normalization.from_manifest(self.manifest["normalization"])
        path = self.bundle_dir / model_file
        expected = self.manifest["files"].get(model_file, {}).get("sha256")
        if not path.is_file():
            raise BundleError(path, "model file missing")
        # The daemon loads what the manifest pins, never a file swapped after install.
        self.sha256: str = sha256_file(path)
        if self.sha256 != expected:
            raise BundleError(path, f"sha256 {self.sha256[:12]}.. does not match the manifest ({str(expected)[:12]}..)")
        self._session = load_session(path, threads)
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or inputs[0].shape[-1] != self.window:
            raise BundleError(path, f"model takes {[i.shape for i in inputs]}, manifest says window {self.window}")
        self._input, self._output = inputs[0].name, outputs[0].name

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    def score(self, windows: np.ndarray) -> np.ndarray:
        """Anomaly scores float32 [B] (>= 0, larger = more anomalous) of windows float32 [B, W]."""
        x = np.ascontiguousarray(windows, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.window or x.shape[0] == 0:
            raise ValueError(f"expected windows of shape [B>=1, {self.window}], got {list(x.shape)}")
        return self._session.run([self._output], {self._input: x})[0].reshape(-1)
