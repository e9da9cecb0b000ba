"""Instructions per frame, counted by valgrind: a CPU figure that the host's load does not move.

    python -m bench.bench_instructions [--against REF] [--stages] [--devices 20] [--warm 100] [--frames 1000]

The throughput section's ratio moves with the shared host more than a change of a few
microseconds a frame does (bench/PERFORMANCE.md). Here the stages of that section's table but MQTT
(line to reading, detector, state payload, history; `bench.pipeline_children work`; not the daemon's
checks around them: discovery, availability, warm-up figures) run in a fresh interpreter under valgrind's callgrind, once over `--warm` readings a device plus
`--frames` lines and once over `--warm` plus twice `--frames`: what the second run executes more is
`--frames` frames past the warm-up, with start-up, imports and the model's loading cancelled out.
With `--stages`, each stage's share too: the difference between the runs that stop after it and
before it. Only the main thread's instructions count, where all of this work runs: the other
threads (onnxruntime's, SQLite's) wait, and how long they wait, which the host's load decides,
moved a whole process's count by up to 30 million instructions (30,000 a frame). The main
thread's count repeats within about 0.05%; each is the least of `--repeats` runs.

With `--against REF` the same is counted for a git ref (a temporary worktree of it, its `gateway`
driven by this tree's child) in the same run, and the table gives the ratio. valgrind must be
installed (Debian's `valgrind`); each run takes half a minute or more under it, `--jobs` at a time
(4 runs a tree with the defaults, 16 with `--stages`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_pipeline import make_devices, record_lines  # noqa: E402
from bench.pipeline_children import STAGE_ORDER  # noqa: E402

CHILD = ROOT / "bench" / "pipeline_children.py"
_SUMMARY = re.compile(r"^summary:\s+(\d+)", re.MULTILINE)


def instructions(tree: Path, lines: Path, devices: Path, count: int, upto: str) -> int:
    """Instructions the work child executes over `count` lines up to stage `upto`, with the
    `gateway` package of `tree`."""
    out_dir = Path(tempfile.mkdtemp(prefix="callgrind-"))
    cmd = ["valgrind", "--tool=callgrind", "--separate-threads=yes", "--dump-instr=no", "--collect-jumps=no",
           f"--callgrind-out-file={out_dir}/out", sys.executable, str(CHILD), "work", "--lines", str(lines),
           "--devices", str(devices), "--broker", "1", "--count", str(count), "--upto", upto]
    # Same hashes, so sets iterate alike; one BLAS thread, whose spinning at import otherwise moves
    # the count by 10%.
    env = {**os.environ, "PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(tree)}
    out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=False)
    main_thread = out_dir / "out-01"  # callgrind numbers the threads from 1, the main one first
    refs = _SUMMARY.search(main_thread.read_text()) if main_thread.exists() else None
    shutil.rmtree(out_dir, ignore_errors=True)
    if out.returncode != 0 or refs is None:
        raise RuntimeError(f"work child under valgrind failed ({tree}, {upto}):\n{out.stderr[-3000:]}")
    ran = json.loads(out.stdout.strip().splitlines()[-1])
    if Path(ran["gateway"]) != tree.resolve():
        raise RuntimeError(f"the child imported gateway from {ran['gateway']}, not {tree}")
    return int(refs.group(1))


def per_frame(trees: dict[str, Path], lines: Path, devices: Path, warm: int, frames: int, stages: tuple[str, ...],
              repeats: int, jobs: int) -> dict[str, dict[str, float]]:
    """Instructions per frame of each of `stages` (each up to the one before), and of them all, per tree."""
    runs = [(name, upto, count) for name in trees for upto in stages for count in (warm + frames, warm + 2 * frames)
            for _ in range(repeats)]
    done = 0

    def count(run: tuple[str, str, int]) -> int:
        nonlocal done
        n = instructions(trees[run[0]], lines, devices, run[2], run[1])
        done += 1
        print(f"  {done} of {len(runs)} runs counted ({run[0]}, up to {run[1]}, {run[2]} lines)", file=sys.stderr)
        return n

    with ThreadPoolExecutor(jobs) as pool:
        counts = list(pool.map(count, runs))
    least: dict[tuple[str, str, int], int] = {}
    for run, n in zip(runs, counts, strict=True):
        least[run] = min(n, least.get(run, n))
    out: dict[str, dict[str, float]] = {}
    for name in trees:
        before = 0.0
        out[name] = {}
        for upto in stages:
            cumulative = (least[(name, upto, warm + 2 * frames)] - least[(name, upto, warm + frames)]) / frames
            out[name][upto] = cumulative - before
            before = cumulative
        out[name]["total"] = before
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--against", metavar="REF", help="a git ref to count the same way, for a ratio")
    p.add_argument("--stages", action="store_true", help="each stage's share too (four times the runs)")
    p.add_argument("--devices", type=int, default=20, help="devices, heard round robin (default 20)")
    p.add_argument("--warm", type=int, default=100,
                   help="readings a device before the counted frames (default 100: past the 64 a channel "
                        "needs before its first window is scored)")
    p.add_argument("--frames", type=int, default=1000, help="frames counted (default 1000)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each count, the least kept (default 2)")
    p.add_argument("--jobs", type=int, default=2, help="valgrind runs at a time (default 2)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    if shutil.which("valgrind") is None:
        p.error("valgrind is not installed (Debian: apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="bench-instr-") as tmp:
        work = Path(tmp)
        devices = make_devices(work, args.devices)
        warm = args.warm * args.devices
        lines = work / "lines.hex"
        lines.write_text("\n".join(x.hex() for x in record_lines(devices, warm + 2 * args.frames)))
        trees = {"this tree": ROOT}
        if args.against:
            other = work / "against"
            added = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(other), args.against],
                                   check=False, capture_output=True, text=True)
            if added.returncode != 0:
                p.error(f"--against {args.against}: git cannot check it out ({added.stderr.strip()})")
            trees[args.against] = other
        stages = STAGE_ORDER if args.stages else STAGE_ORDER[-1:]
        try:
            results = per_frame(trees, lines, devices, warm, args.frames, stages, args.repeats, args.jobs)
        finally:
            if args.against:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(trees[args.against])],
                               check=False, capture_output=True)
    names = list(results)
    head = "| stage | " + " | ".join(f"{n}: instructions a frame" for n in names)
    head += f" | this tree vs {names[1]} |" if len(names) > 1 else " |"
    print(f"\n{args.devices} devices, {args.warm} readings each first, then {args.frames} frames counted "
          f"(callgrind, the main thread, the least of {args.repeats} runs)\n")
    print(head)
    print("|---" * (len(names) + 1 + (len(names) > 1)) + "|")
    for stage in (*(stages if args.stages else ()), "total"):
        cells = [f"{results[n][stage]:,.0f}" for n in names]
        if len(names) > 1:
            base = results[names[1]][stage]
            cells.append(f"{results[names[0]][stage] / base:.3f}" if base else "-")
        print(f"| {stage} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
