"""Score ONNX models on another x86 CPU model, emulated by qemu-user, to see what a CPU on the
other side of onnxruntime's saturation question computes.

onnxruntime's U8S8 kernel multiplies with VPMADDUBSW on AVX2 CPUs without VNNI, and its int16
pair sums saturate, so the same int8 file can score differently from one CPU to the next: a CPU
with VNNI, or without AVX2, takes a path that does not saturate. qemu runs one child process on
the path this host does not take (`contrasting_cpu`). Debian's package: qemu-user.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from contextlib import suppress
from pathlib import Path

import numpy as np

SATURATING_CPU = "Haswell"  # AVX2 without VNNI: the saturating path
NON_SATURATING_CPU = "SandyBridge"  # AVX without AVX2: no VPMADDUBSW path at all
_VNNI = {"avx512_vnni", "avx_vnni"}


def contrasting_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The qemu CPU model whose U8S8 path is the other one from this host's: Haswell for a host
    with VNNI (or without AVX2), SandyBridge for an AVX2 host without VNNI, which saturates itself."""
    flags: set[str] = set()
    with suppress(OSError):
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.partition(":")[2].split())
                break
    return NON_SATURATING_CPU if "avx2" in flags and not flags & _VNNI else SATURATING_CPU

# The child imports onnxruntime and numpy only: every emulated import costs seconds.
_SCORE = """
import sys, numpy as np, onnxruntime as ort
opts = ort.SessionOptions(); opts.intra_op_num_threads = 1
x = np.load(sys.argv[1]).astype(np.float32)
for model, out in zip(sys.argv[2::2], sys.argv[3::2]):
    s = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    np.save(out, s.run(None, {s.get_inputs()[0].name: x})[0])
"""


def qemu() -> str | None:
    return shutil.which("qemu-x86_64")


def score_on_cpu(models: list[Path], windows: Path, work: Path, cpu: str | None) -> list[np.ndarray]:
    """Scores of each model on the windows in `windows` (.npy), on this CPU (cpu=None) or the
    emulated `cpu`; `work` holds the score files."""
    emulator = qemu()
    if cpu is not None and emulator is None:
        raise RuntimeError("qemu-x86_64 not found: install Debian's qemu-user to emulate another CPU")
    outs = [work / f"{cpu or 'host'}-{i}.npy" for i in range(len(models))]
    args = [a for m, o in zip(models, outs) for a in (str(m), str(o))]
    prefix = [] if cpu is None else [str(emulator), "-cpu", cpu]
    done = subprocess.run([*prefix, sys.executable, "-c", _SCORE, str(windows), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"scoring on {cpu or 'this CPU'} failed: {done.stderr.strip()[-500:]}")
    return [np.load(o) for o in outs]
