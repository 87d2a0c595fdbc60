"""Sparse Access Memory against dense attention over the number of memory slots.

For each number of slots N, one SAM config (``experiments/quick_sam.yaml`` with overrides) is
meta-trained for a few steps twice: sparse (top-``k`` reads and writes, ``rule.k``) and dense
(``rule.k = N``: the same module reading and writing every slot, a softmax over all N, which is
dense content-based attention as in the NTM/DNC). Each configuration runs in a fresh subprocess.
Columns: median seconds per meta-step (``MetaTrainer.meta_step``'s ``seconds``) after warm-up
steps, microseconds per sample of the stream (the same divided by the samples of one lifetime:
the meta-batch's tasks run together), peak
RSS of the subprocess (and peak GPU memory on CUDA), and each column's growth over the smallest N.

    python benchmarks/memory_slots.py                                # slots 64..4096, sparse and dense
    python benchmarks/memory_slots.py --slots 16,32 --steps 1 --warmup 0 task.steps_per_function=1  # a smoke run
    python benchmarks/memory_slots.py --device cuda --json slots.json

Run it on an idle machine: other processes on the same cores change every number.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "experiments" / "quick_sam.yaml"
# A shorter stream than the quick protocol's (640 samples instead of 1,600), so that the dense
# memory (which keeps every step's N x W memory for the backward pass) fits at 4096 slots.
DEFAULT_OVERRIDES = ["task.steps_per_function=4"]


def measure(args: argparse.Namespace, slots: int, k: int) -> dict:
    """One configuration, in this process: seconds per meta-step and peak memory."""
    import torch

    from metaplastic.config import load_config
    from metaplastic.meta.experiment import Experiment
    from metaplastic.meta.trainer import MetaTrainer
    from metaplastic.runtime import keep_freed_memory

    keep_freed_memory()  # as the CLI does
    torch.set_num_threads(args.threads)
    overrides = [*DEFAULT_OVERRIDES, *args.overrides, f"rule.slots={slots}", f"rule.k={k}",
                 f"device={args.device}", f"dtype={args.dtype}"]
    cfg = load_config(CONFIG, overrides)
    trainer = MetaTrainer(Experiment.from_config(cfg))
    for _ in range(args.warmup):
        trainer.meta_step()
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        m = trainer.meta_step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(m["seconds"])
    task = cfg.task
    samples = task["n_functions"] * task["steps_per_function"] * task["batch_size"]  # per task: tasks are batched
    seconds = statistics.median(times)
    return {
        "slots": slots, "k": k, "s_per_step": seconds, "us_per_sample": seconds / samples * 1e6,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else None,
    }


def run_child(args: argparse.Namespace, slots: int, k: int) -> dict:
    cmd = [sys.executable, __file__, "--one", f"{slots},{k}", "--steps", str(args.steps), "--warmup",
           str(args.warmup), "--threads", str(args.threads), "--device", args.device, "--dtype", args.dtype,
           *args.overrides]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        return {"slots": slots, "k": k, "error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict], model: str) -> str:
    lines = [f"CPU: {model}", "",
             "| slots | access | s/meta-step | us/sample | growth | peak RSS MB | peak GPU MB |",
             "|---|---|---|---|---|---|---|"]
    for kind in ("sparse", "dense"):
        mine = [r for r in rows if r["kind"] == kind]
        first = next((r["s_per_step"] for r in mine if "s_per_step" in r), None)
        for r in mine:
            if "error" in r:
                lines.append(f"| {r['slots']} | {kind} (k={r['k']}) | failed: {r['error']} | | | | |")
                continue
            gpu = f"{r['peak_gpu_mb']:.0f}" if r.get("peak_gpu_mb") is not None else "-"
            lines.append(f"| {r['slots']} | {kind} (k={r['k']}) | {r['s_per_step']:.3f} | {r['us_per_sample']:.1f} | "
                         f"{r['s_per_step'] / first:.2f}x | {r['peak_rss_mb']:.0f} | {gpu} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", default="64,256,1024,4096", help="comma-separated numbers of slots")
    parser.add_argument("--k", type=int, default=4, help="slots read and written per step by sparse access")
    parser.add_argument("--steps", type=int, default=3, help="timed meta-steps (median)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--no-dense", action="store_true", help="sparse access only")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="config overrides key=value (after the defaults)")
    args = parser.parse_args()
    if args.one:
        slots, k = (int(v) for v in args.one.split(","))
        print(json.dumps(measure(args, slots, k)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from scaling import cpu_model

    rows = []
    for kind in ("sparse",) if args.no_dense else ("sparse", "dense"):
        for slots in (int(s) for s in args.slots.split(",")):
            k = min(args.k, slots) if kind == "sparse" else slots
            rows.append({"kind": kind, **run_child(args, slots, k)})
            print(f"{kind} slots={slots}: {rows[-1]}", file=sys.stderr)
    model = cpu_model()
    print(table(rows, model))
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": model, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
