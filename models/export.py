"""Model -> self-contained ONNX (dynamic batch) -> static int8 -> parity gate -> bundle.

The bundle is checked again by gateway.detect.model_store.verify_bundle before it is written out,
so what leaves this module is exactly what an installing Pi will accept.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from torch import nn

import gateway
from gateway.detect.held import HeldSet, SiteSeries, site_held
from gateway.detect.model_store import alert_threshold, compare_scores, verify_bundle, write_manifest
from gateway.detect.scoring import (
    MODEL_FP32,
    MODEL_INT8,
    PARITY_WINDOWS,
    BundleError,
    Normalization,
    load_session,
)
from models.arch import ModelConfig, count_params
from models.data import detection_set

OPSET = 18
INPUT, OUTPUT = "window", "score"


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize; the default was chosen by bench/bench_quant_cpu.py (models/README.md).

    Unsigned weights (U8U8): onnxruntime's x86 kernel for U8S8 multiplies with VPMADDUBSW, whose
    int16 pair sums saturate on CPUs without VNNI, so one U8S8 file scores differently from one CPU
    to the next. U8U8 has no such path. QDQ is the format DESIGN.md names; onnxruntime fuses it into
    the same integer kernels at session start.
    """

    format: str = "QDQ"  # QDQ | QOperator
    per_channel: bool = False
    activation: str = "QUInt8"
    weight: str = "QUInt8"
    op_types: tuple[str, ...] = ("Gemm", "MatMul", "Conv", "Relu")  # Relu too: QGemm chains stay int8
    calibrate_method: str = "MinMax"


@dataclass(frozen=True)
class BuildOptions:
    name: str
    version: str
    quant: QuantSpec = QuantSpec()
    min_agreement: float = 0.995
    calib_seed: int = 101
    calib_windows: int = 2000
    held_seed: int = 202
    held_normal: int = 4000
    held_per_anomaly: int = 400
    bundle_windows: int = 1024  # held windows shipped in the bundle, re-checked at install (1024: one flip is 0.1%)
    threshold_quantile: float = 99.0  # reference alert threshold: this percentile of float scores on normal windows
    site: tuple[SiteSeries, ...] = ()  # a site's data: half its windows calibrate, the other half are checked
    source: dict[str, Any] = field(default_factory=dict)


def _strip(path: Path) -> None:
    """Drop doc strings and per-node metadata (source locations) the exporter records: on a
    model this small they outweigh the weights; the graph itself is untouched."""
    m = onnx.load(str(path))
    m.doc_string = ""
    del m.metadata_props[:]
    for n in m.graph.node:
        n.doc_string = ""
        del n.metadata_props[:]
    for v in [*m.graph.value_info, *m.graph.input, *m.graph.output, *m.graph.initializer]:
        v.doc_string = ""
        if hasattr(v, "metadata_props"):
            del v.metadata_props[:]
    onnx.save(m, str(path))


@contextmanager
def _quiet() -> Iterator[None]:
    """The exporter and the quantizer log advice meant for large vision models; keep the CLI readable."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logging.disable(logging.NOTSET)


def export_onnx(model: nn.Module, window: int, path: Path) -> Path:
    """One self-contained ONNX file with a dynamic batch axis; weights inside, no .data file."""
    model.eval()
    with _quiet():
        torch.onnx.export(
            model,
            (torch.zeros(2, window),),
            str(path),
            dynamo=True,
            external_data=False,  # the dynamo exporter would write model.onnx.data otherwise
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
            opset_version=OPSET,
            verbose=False,
        )
    if path.with_name(path.name + ".data").exists():
        raise BundleError(path, "exporter wrote external data; a bundle needs self-contained files")
    _strip(path)
    onnx.checker.check_model(str(path), full_check=True)
    return path


class _Windows(CalibrationDataReader):
    def __init__(self, windows: np.ndarray, batch: int = 64) -> None:
        self._batches = iter(np.array_split(windows, max(1, len(windows) // batch)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        b = next(self._batches, None)
        return None if b is None else {INPUT: np.ascontiguousarray(b, dtype=np.float32)}


def quantize(fp32: Path, out: Path, calib: np.ndarray, spec: QuantSpec) -> Path:
    """Static int8 quantization with activation ranges calibrated on `calib` windows."""
    with _quiet():
        quantize_static(
            str(fp32),
            str(out),
            _Windows(calib),
            quant_format=QuantFormat[spec.format],
            op_types_to_quantize=list(spec.op_types),
            per_channel=spec.per_channel,
            activation_type=QuantType[spec.activation],
            weight_type=QuantType[spec.weight],
            calibrate_method=CalibrationMethod[spec.calibrate_method],
        )
    return out


def run(path: Path, windows: np.ndarray) -> np.ndarray:
    sess = load_session(path)
    return sess.run([OUTPUT], {INPUT: np.ascontiguousarray(windows, dtype=np.float32)})[0]


def _created() -> str:
    """SOURCE_DATE_EPOCH pins the time stamp, so a rebuilt bundle is byte-identical."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.fromtimestamp(int(epoch), UTC) if epoch else datetime.now(UTC)
    return when.replace(microsecond=0).isoformat()


def _split_site(opts: BuildOptions, window: int, norm: Normalization) -> tuple[list[HeldSet], list[HeldSet]]:
    """Each site series' windows, split at random into a calibration half and a checked half."""
    rng = np.random.default_rng(opts.calib_seed)
    calib, checked = [], []
    for series in opts.site:
        site = site_held(series, window, norm)
        order = rng.permutation(len(site.windows))
        half = len(order) // 2
        for part, into in ((np.sort(order[:half]), calib), (np.sort(order[half:]), checked)):
            into.append(HeldSet(site.source, site.windows[part], site.normal[part]))
    return calib, checked


def _site_record(series: SiteSeries, windows: np.ndarray) -> dict[str, Any]:
    return {**series.record, "windows": len(windows)}


def build_bundle(
    model: nn.Module, cfg: ModelConfig, out_dir: Path, opts: BuildOptions, log: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Write a verified bundle to `out_dir` (which must not exist); returns its manifest.

    A parity failure raises BundleError naming model.onnx and nothing is written.
    """
    if out_dir.exists():
        raise BundleError(out_dir, "already exists")
    norm = cfg.norm
    work = Path(tempfile.mkdtemp(prefix=".bundle.", dir=out_dir.parent if out_dir.parent.is_dir() else None))
    try:
        log("exporting ONNX")
        fp32 = export_onnx(model, cfg.window, work / MODEL_FP32)
        held = detection_set(opts.held_seed, opts.held_normal, opts.held_per_anomaly, cfg.window, norm)
        with torch.no_grad():
            eager = model(torch.from_numpy(held.windows)).numpy()
        f_scores = run(fp32, held.windows)
        if not np.allclose(eager, f_scores, rtol=1e-4, atol=1e-5):
            raise BundleError(
                fp32, f"exported graph differs from the torch model (max diff {np.abs(eager - f_scores).max():.3g})"
            )

        per = max(1, opts.calib_windows // 10)
        calib = detection_set(opts.calib_seed, opts.calib_windows - 5 * per, per, cfg.window, norm).windows
        site_calib, site_checks = _split_site(opts, cfg.window, norm)
        calib = np.concatenate([calib, *(s.windows for s in site_calib)])
        log(f"calibrating int8 on {len(calib)} windows")
        int8 = quantize(fp32, work / MODEL_INT8, calib, opts.quant)

        log("checking parity")
        threshold = float(np.percentile(f_scores[held.labels == 0], opts.threshold_quantile))
        fig = compare_scores(f_scores, run(int8, held.windows), threshold)
        judged: list[tuple[SiteSeries, HeldSet]] = []
        site_figs = []
        for series, site in zip(opts.site, site_checks, strict=True):
            if site.constant:
                log(site.not_judged())
                continue
            judged.append((series, site))
            site_f = run(fp32, site.windows)
            site_figs.append(compare_scores(site_f, run(int8, site.windows), alert_threshold(site_f)))
        weights = opts.source.get("weights", {}).get("file", "the weights")
        for source, f in [("synthetic held windows", fig), *zip((s.source for _, s in judged), site_figs)]:
            log(f"parity on {source}: {f.summary()}")
            if f.agreement < opts.min_agreement:
                raise BundleError(
                    out_dir / MODEL_INT8,
                    f"parity gate failed for the int8 model of {weights} on {source}: {f.summary()} "
                    f"(need {opts.min_agreement:.2%}); nothing was written",
                )
        pick = np.random.default_rng(opts.held_seed).choice(len(held.windows), opts.bundle_windows, replace=False)
        # float16 halves the file; both models are later compared on the same rounded values
        np.save(work / PARITY_WINDOWS, held.windows[np.sort(pick)].astype(np.float16), allow_pickle=False)

        manifest: dict[str, Any] = {
            "format": 1,
            "name": opts.name,
            "version": opts.version,
            "created": _created(),
            "tool": {
                "lora_gateway": gateway.__version__,
                "torch": torch.__version__.split("+")[0],
                "onnx": onnx.__version__,
                "onnxruntime": ort.__version__,
                "python": platform.python_version(),
            },
            "architecture": {"arch": cfg.arch, "parameters": count_params(model), "config": cfg.to_json()},
            "window": cfg.window,
            "input": {"name": INPUT, "shape": ["batch", cfg.window], "dtype": "float32"},
            "output": {
                "name": OUTPUT,
                "shape": ["batch"],
                "dtype": "float32",
                "meaning": "mean squared error, >= 0, larger is more anomalous",
            },
            "opset": OPSET,
            "normalization": cfg.normalization,
            "quantization": {
                **asdict(opts.quant),
                "method": "static",
                "tool": "onnxruntime.quantization.quantize_static",
            },
            "calibration": {
                "source": "synthetic normal + injected anomalies" + (" + site data" if opts.site else ""),
                "seed": opts.calib_seed,
                "windows": len(calib),
            },
            "parity": {
                **fig.to_manifest(),
                "threshold_rule": f"p{opts.threshold_quantile:g} of float scores on held normal windows",
                "held": {"seed": opts.held_seed, "normal": opts.held_normal, "per_anomaly": opts.held_per_anomaly},
                "min_agreement": opts.min_agreement,
                "bundle_windows": opts.bundle_windows,
            },
            "source": opts.source,
        }
        if opts.site:  # only then: the shipped default's manifest stays the same bytes when rebuilt
            manifest["calibration"]["site"] = [_site_record(p, c.windows) for p, c in zip(opts.site, site_calib)]
            manifest["parity"]["site"] = [
                {**_site_record(p, s.windows), **f.to_manifest()} for (p, s), f in zip(judged, site_figs, strict=True)
            ]
        write_manifest(work, manifest)
        verify_bundle(work, min_agreement=opts.min_agreement)
        work.chmod(0o755)  # mkdtemp made it private; a bundle is for everyone to read
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        os.rename(work, out_dir)
        return manifest
    finally:
        shutil.rmtree(work, ignore_errors=True)
