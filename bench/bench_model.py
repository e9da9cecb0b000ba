"""Benchmark the model bundle: size, latency (int8 ONNX vs float ONNX vs torch eager), parity,
quantization variants, and (with --archs) the detection quality of candidate architectures.

    python bench/bench_model.py                  # the shipped default bundle
    python bench/bench_model.py --archs          # also train and score each architecture (~1 min)

Needs the [train] extra (torch for the eager baseline, onnx to count weight bytes).
All figures come from one run on one machine, one thread.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.tables import table  # noqa: E402
from gateway.detect.model_store import compare_scores, packaged_default_bundle  # noqa: E402
from gateway.detect.scoring import MODEL_FP32, MODEL_INT8, Normalization, OnnxScorer, session_options  # noqa: E402
from models.arch import ModelConfig, build_model, count_params  # noqa: E402
from models.cross_cpu import contrasting_cpu, qemu, score_on_cpu  # noqa: E402
from models.data import ANOMALIES, DetectionSet, auc, detection_set, event_set  # noqa: E402
from models.export import QuantSpec, export_onnx, quantize, run  # noqa: E402
from models.train import TrainOptions, train  # noqa: E402
from models.weights import load_weights  # noqa: E402


def median_us(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(max(20, repeats // 20)):
        fn()
    times = np.empty(repeats)
    for i in range(repeats):
        t = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t
    return float(np.median(times) * 1e6)


def weight_bytes(path: Path) -> int:
    """Bytes of the initializers (weights, biases, quantization parameters)."""
    return sum(len(t.raw_data) or onnx.numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer)


def ort_latency(path: Path, x: np.ndarray, repeats: int, arena: bool = True) -> float:
    so = session_options(1)
    so.enable_cpu_mem_arena = arena
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    return median_us(lambda: sess.run(None, feed), repeats)


def bench_bundle(bundle: Path, weights: Path, repeats: int) -> None:
    fp32, int8 = bundle / MODEL_FP32, bundle / MODEL_INT8
    externals = sorted(p.name for p in bundle.iterdir() if p.name.endswith(".data"))
    fb, qb = fp32.stat().st_size, int8.stat().st_size
    fw, qw = weight_bytes(fp32), weight_bytes(int8)
    table(
        f"Bundle {bundle} (external data files: {len(externals)})",
        ["", "float32", "int8", "int8 / float"],
        [
            ["file bytes (self-contained)", f"{fb:,}", f"{qb:,}", f"{qb / fb:.2f}"],
            ["weight bytes (initializers)", f"{fw:,}", f"{qw:,}", f"{qw / fw:.2f}"],
        ],
    )

    torch.set_num_threads(1)
    model = load_weights(weights).model
    held = detection_set(7, 4000, 400, OnnxScorer(bundle).window, Normalization())
    rows = []
    candidates: list[tuple[str, Callable[[np.ndarray], object]]] = [
        ("int8 ONNX (model.onnx)", OnnxScorer(bundle).score),
        ("float ONNX (model.fp32.onnx)", OnnxScorer(bundle, model_file=MODEL_FP32).score),
        ("torch eager float", lambda w: model(torch.from_numpy(w))),
    ]
    for label, fn in candidates:
        cells = []
        for b in (1, 64):
            x = np.ascontiguousarray(held.windows[:b])
            with torch.inference_mode():
                cells.append(median_us(partial(fn, x), repeats))
        rows.append([label, f"{cells[0]:.1f}", f"{cells[1]:.1f}", f"{cells[1] / 64:.2f}"])
    table(
        f"Latency per call, median of {repeats}, one thread",
        ["model", "batch 1 (us)", "batch 64 (us)", "per window at 64 (us)"],
        rows,
    )

    manifest = OnnxScorer(bundle).manifest
    f, q = run(fp32, held.windows), run(int8, held.windows)
    fig = compare_scores(f, q, manifest["parity"]["threshold"])
    table(
        f"Parity int8 vs float on {fig.windows} windows the build never saw (threshold {fig.threshold:.3f}: "
        f"{manifest['parity']['threshold_rule']})",
        ["max abs diff", "mean abs diff", "correlation", "alert agreement", "gate"],
        [
            [
                f"{fig.max_abs_diff:.4f}",
                f"{fig.mean_abs_diff:.5f}",
                f"{fig.correlation:.6f}",
                f"{fig.agreement:.2%}",
                f">= {manifest['parity']['min_agreement']:.1%}",
            ]
        ],
    )

    x64 = np.ascontiguousarray(held.windows[:64])
    table(
        "Session arena (float ONNX, batch 64)",
        ["arena", "us/call"],
        [[str(a), f"{ort_latency(fp32, x64, repeats, arena=a):.1f}"] for a in (True, False)],
    )
    bench_quant_variants(fp32, held, manifest["parity"]["threshold"], repeats)


def bench_quant_variants(fp32: Path, held: DetectionSet, threshold: float, repeats: int) -> None:
    """Each variant on this CPU and on an emulated x86 CPU without VNNI (qemu-user), where
    onnxruntime's U8S8 kernel saturates: a format must hold on both, and on ARM."""
    calib = detection_set(101, 1500, 100, held.windows.shape[1], Normalization()).windows
    f = run(fp32, held.windows)
    x1, x64 = np.ascontiguousarray(held.windows[:1]), np.ascontiguousarray(held.windows[:64])
    variants = [
        QuantSpec(),
        QuantSpec(format="QDQ", weight="QInt8"),
        QuantSpec(format="QDQ", activation="QInt8", weight="QInt8"),
        QuantSpec(format="QDQ", weight="QInt8", per_channel=True),
        QuantSpec(format="QOperator", weight="QInt8"),
        QuantSpec(format="QOperator", weight="QUInt8"),
        QuantSpec(format="QOperator", weight="QInt8", op_types=("Gemm", "MatMul", "Conv")),
    ]
    emulate = qemu() is not None
    rows = [["float32 (reference)", f"{fp32.stat().st_size:,}", f"{ort_latency(fp32, x1, repeats):.1f}",
             f"{ort_latency(fp32, x64, repeats):.1f}", "-", "-", "-"]]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        np.save(work / "held.npy", held.windows)
        files = [quantize(fp32, work / f"q{i}.onnx", calib, spec) for i, spec in enumerate(variants)]
        here = score_on_cpu(files, work / "held.npy", work, None)
        other = contrasting_cpu()
        there = score_on_cpu(files, work / "held.npy", work, other) if emulate else [None] * len(files)
        for spec, q, s_here, s_there in zip(variants, files, here, there):
            label = (f"{spec.format} {'per-channel' if spec.per_channel else 'per-tensor'} "
                     f"{spec.activation[1:]}/{spec.weight[1:]} {'+Relu' if 'Relu' in spec.op_types else 'Gemm only'}")
            emulated = ["not run (no qemu-x86_64)"] * 2 if s_there is None else [
                f"{compare_scores(f, s_there, threshold).agreement:.2%}", f"{np.abs(s_there - s_here).max():.4f}"]
            rows.append([
                label + (" (default)" if spec == QuantSpec() else ""),
                f"{q.stat().st_size:,}",
                f"{ort_latency(q, x1, repeats):.1f}",
                f"{ort_latency(q, x64, repeats):.1f}",
                f"{compare_scores(f, s_here, threshold).agreement:.2%}",
                *emulated,
            ])
    table(
        f"Static int8 variants (same calibration windows); the other U8S8 path: qemu -cpu {other}",
        ["quantization", "file bytes", "batch 1 (us)", "batch 64 (us)", "agreement here",
         f"agreement, {other}", f"max |here - {other}|"],
        rows,
    )


def bench_widths(repeats: int) -> None:
    """int8 pays a fixed per-call cost (quantize the input, dequantize the output): it wins only
    once the matrices are large enough. Latency does not depend on training, so untrained
    weights serve here."""
    calib = detection_set(101, 500, 50, 32, Normalization()).windows
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for hidden in (64, 128, 256):
            model = build_model(ModelConfig(hidden=hidden))
            fp32 = export_onnx(model, 32, Path(tmp) / f"f{hidden}.onnx")
            int8 = quantize(fp32, Path(tmp) / f"q{hidden}.onnx", calib, QuantSpec())
            cells = [
                f"mlp_ae hidden={hidden} ({count_params(model):,} params)",
                f"{int8.stat().st_size / fp32.stat().st_size:.2f}",
            ]
            for b in (1, 64, 256):
                x = np.ascontiguousarray(np.resize(calib, (b, 32)))
                cells.append(f"{ort_latency(fp32, x, repeats):.1f} / {ort_latency(int8, x, repeats):.1f}")
            rows.append(cells)
    table(
        "Model width: float / int8 latency per call (us), one thread",
        ["model", "int8/float file", "batch 1", "batch 64", "batch 256"],
        rows,
    )


def _quality(neg: np.ndarray, pos: np.ndarray, pos_kinds: np.ndarray) -> list[str]:
    """AUC overall and per anomaly kind, and recall at the p99 of the negatives (1% false alarms)."""
    recall = (pos > np.percentile(neg, 99)).mean()
    return [f"{auc(neg, pos):.3f}", *(f"{auc(neg, pos[pos_kinds == k]):.3f}" for k in ANOMALIES), f"{recall:.3f}"]


def _energy(x: np.ndarray) -> np.ndarray:
    return (x.clip(-8, 8) ** 2).mean(1)


def _torch_scores(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def bench_archs(steps: int) -> None:
    """Two held-out checks on series no training run sees:
    windows: normal windows vs windows with one injected anomaly each (depends on W);
    events: an anomaly starts at t0 in a series; its score is the max over the 32 windows ending at
    t0..t0+31, against the same windows of the clean series (the same events for every W)."""
    norm = Normalization()
    configs = [
        ModelConfig(arch="mlp_ae", hidden=256, latent=4),
        ModelConfig(arch="mlp_ae", hidden=64, latent=4),
        ModelConfig(arch="mlp_ae", hidden=64, latent=2),
        ModelConfig(arch="conv_ae", hidden=64, latent=4),
        ModelConfig(arch="mlp_forecast", hidden=64, horizon=8),
        ModelConfig(arch="mlp_forecast", hidden=64, horizon=4),
        ModelConfig(arch="mlp_ae", hidden=256, latent=4, window=16),
        ModelConfig(arch="mlp_ae", hidden=256, latent=4, window=64),
    ]
    window_rows, event_rows = [], []
    scorers: list[tuple[str, int, Callable[[np.ndarray], np.ndarray]]] = [("no model: mean z^2 (clipped)", 32, _energy)]
    for cfg in configs:
        model = train(cfg, TrainOptions(steps=steps))
        extra = f"h={cfg.horizon}" if cfg.arch == "mlp_forecast" else f"z={cfg.latent}"
        label = f"{cfg.arch} W={cfg.window} hidden={cfg.hidden} {extra} ({count_params(model):,} params)"
        scorers.append((label, cfg.window, partial(_torch_scores, model)))
    for label, window, fn in scorers:
        held = detection_set(1000, 4000, 800, window, norm)
        s = fn(held.windows)
        normal = held.kinds == "normal"
        window_rows.append([label, *_quality(s[normal], s[~normal], held.kinds[~normal])])
        ev = event_set(2000, 300, window, norm)
        worst = [fn(x.reshape(-1, window)).reshape(len(ev.kinds), -1).max(1) for x in (ev.clean, ev.anomalous)]
        event_rows.append([label, *_quality(worst[0], worst[1], ev.kinds)])
    header = ["scorer", "AUC all", *(f"AUC {k}" for k in ANOMALIES), "recall at 1% FPR"]
    table(f"Detection, windows: 4000 normal, 800 per anomaly ({steps} training steps)", header, window_rows)
    table("Detection, events: 300 per anomaly, max score over the 32 windows after onset", header, event_rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=packaged_default_bundle())
    p.add_argument("--weights", type=Path, default=packaged_default_bundle().parent / "weights.safetensors")
    p.add_argument("--repeats", type=int, default=3000)
    p.add_argument("--archs", action="store_true", help="train and compare the candidate architectures")
    p.add_argument("--steps", type=int, default=4000, help="training steps per architecture (--archs)")
    args = p.parse_args()
    print(f"onnxruntime {ort.__version__}, torch {torch.__version__}, numpy {np.__version__}")
    bench_bundle(args.bundle, args.weights, args.repeats)
    bench_widths(args.repeats)
    if args.archs:
        bench_archs(args.steps)


if __name__ == "__main__":
    main()
