"""Scaling out: throughput of meta-training at several process counts, in one run.

Section ``processes``: data-parallel meta-training (``metaplastic train`` under torchrun,
``metaplastic.meta.distributed``) of a config at 1, 2, ... processes, each run in a fresh
torchrun subprocess with cores / processes threads per process. Throughput is tasks per
second: meta-batch / median seconds per meta-step (rank 0's ``seconds`` metric, which includes
the gradient all-reduce), after ``--warmup`` steps. The final meta-loss is printed too: it
must agree across process counts (the numbers do not depend on them).

    python benchmarks/scaling.py                                   # quick FLP, 1 and 2 processes
    python benchmarks/scaling.py --nproc 1,2,4 --steps 20 --out scaling.json
    python benchmarks/scaling.py --steps 1 --warmup 0 task.steps_per_function=2   # a smoke run

Section ``sweep``: the overhead of ``metaplastic sweep`` (Ray's start, per-trial start) against
running the same trials by hand, in the same run.

Another section is a function ``(args) -> (rows, markdown table)`` added to ``SECTIONS``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_CONFIG = ROOT / "experiments" / "quick_flp.yaml"


def cpu_model() -> str:
    """``lscpu``'s model name (the platform's processor string where lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine() -> dict:
    import torch

    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}


def train_once(args: argparse.Namespace, nproc: int, run_dir: Path) -> dict:
    """One torchrun meta-training run at ``nproc`` processes; its timings from metrics.jsonl."""
    threads = args.threads or max(1, (os.cpu_count() or 1) // nproc)
    steps = args.warmup + args.steps
    overrides = [*args.overrides, f"meta.steps={steps}", "meta.log_every=1", f"meta.checkpoint_every={steps}",
                 "meta.validate_every=null", f"out_dir={run_dir}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "metaplastic", "train", str(args.config), *overrides, "--no-progress", "--wandb", "disabled"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "disabled"}
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"error: training at {nproc} processes failed: {tail}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "meta_loss" in r]
    timed = [r["seconds"] for r in rows if r["step"] > args.warmup]
    return {"threads": threads, "seconds": statistics.median(timed), "wall_s": wall,
            "final_meta_loss": rows[-1]["meta_loss"]}


def processes_section(args: argparse.Namespace) -> tuple[list[dict], str]:
    """Tasks per second at each process count of ``--nproc``, with the speed-up over the first."""
    from metaplastic.config import load_config
    from metaplastic.meta.distributed import check_divisible

    meta_batch = load_config(args.config, args.overrides).meta.meta_batch
    for n in args.nproc:
        check_divisible(meta_batch, n)  # before any run starts
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        for n in args.nproc:
            r = train_once(args, n, Path(tmp) / f"nproc{n}")
            row = {"processes": n, "meta_batch": meta_batch, "tasks_per_rank": meta_batch // n, **r,
                   "tasks_per_s": meta_batch / r["seconds"]}
            row["speedup"] = row["tasks_per_s"] / rows[0]["tasks_per_s"] if rows else 1.0
            rows.append(row)
            print(f"  {n} process(es): {r['seconds']:.3f} s/step", file=sys.stderr, flush=True)
    lines = ["| processes | threads/process | meta-batch | tasks/rank | s/step (median) | tasks/s | speed-up "
             "| final meta-loss |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['processes']} | {r['threads']} | {r['meta_batch']} | {r['tasks_per_rank']} | "
              f"{r['seconds']:.3f} | {r['tasks_per_s']:.2f} | {r['speedup']:.2f}x | {r['final_meta_loss']:.6g} |"
              for r in rows]
    return rows, "\n".join(lines)


SWEEP_LRS = (1e-3, 3e-3, 1e-2, 3e-2)  # the swept meta.lr.coef values: one trial each


def _run_parallel(cmds: list[list[str]], jobs: int, env: dict) -> float:
    """Wall seconds to run ``cmds`` with at most ``jobs`` at a time (what a shell loop with & does)."""
    start = time.perf_counter()
    pending, running = list(cmds), []
    while pending or running:
        while pending and len(running) < jobs:
            running.append(subprocess.Popen(pending.pop(0), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE, text=True))
        proc = running.pop(0)
        _, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"error: a hand-run trial failed: {(err.strip().splitlines() or ['no output'])[-1]}")
    return time.perf_counter() - start


def sweep_section(args: argparse.Namespace) -> tuple[list[dict], str]:
    """Sweep overhead: the same trials through ``metaplastic sweep`` (embedded Ray, one trial per
    core) and by hand (``metaplastic train`` processes, as many at once as cores), and Ray's start."""
    import yaml

    cores = os.cpu_count() or 1
    steps = args.warmup + args.steps
    trial_overrides = [*args.overrides, f"meta.steps={steps}", f"meta.validate_every={steps}",
                       "meta.validate_episodes=2", f"meta.checkpoint_every={steps}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="sweep-overhead-") as tmp:
        tmp = Path(tmp)
        start_cmd = [sys.executable, "-c", "import time, ray; t = time.perf_counter(); "
                     f"ray.init(num_cpus={cores}, include_dashboard=False, log_to_driver=False); "
                     "print(time.perf_counter() - t)"]
        started = subprocess.run(start_cmd, env=env, capture_output=True, text=True, check=True)
        ray_start = float(started.stdout.split()[-1])
        by_hand = [[sys.executable, "-m", "metaplastic", "train", str(args.config), *trial_overrides,
                    f"meta.lr.coef={lr}", f"out_dir={tmp / 'hand' / str(lr)}", "--no-progress", "--wandb", "disabled"]
                   for lr in SWEEP_LRS]
        hand = _run_parallel(by_hand, cores, env)
        sweep_file = tmp / "overhead.yaml"
        sweep_file.write_text(yaml.safe_dump({
            "name": "overhead", "base": str(Path(args.config).resolve()), "overrides": trial_overrides,
            "space": {"meta.lr.coef": {"grid": list(SWEEP_LRS)}}, "search": "grid", "threads": 1,
        }))
        cmd = [sys.executable, "-m", "metaplastic", "sweep", str(sweep_file), "--out", str(tmp / "sweep"),
               "--wandb", "disabled"]
        start = time.perf_counter()
        result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        swept = time.perf_counter() - start
        if result.returncode:
            raise SystemExit(f"error: the sweep failed: {(result.stderr.strip().splitlines() or ['no output'])[-1]}")
    n = len(SWEEP_LRS)
    rows = [{"way": "by hand (metaplastic train, cores at once)", "trials": n, "wall_s": hand},
            {"way": "metaplastic sweep (embedded Ray)", "trials": n, "wall_s": swept},
            {"way": "Ray start alone (ray.init)", "trials": 0, "wall_s": ray_start}]
    per_trial = (swept - hand - ray_start) / n
    lines = [f"{n} trials of {steps} meta-steps, {cores} at once, 1 thread each:", "",
             "| way | trials | wall s | ratio to by hand |", "|---|---|---|---|"]
    lines += [f"| {r['way']} | {r['trials']} | {r['wall_s']:.1f} | {r['wall_s'] / hand:.2f} |" for r in rows]
    lines += ["", f"Overhead per trial beyond Ray's start: {per_trial:.1f} s"]
    rows.append({"way": "overhead per trial beyond Ray's start", "trials": n, "wall_s": per_trial})
    return rows, "\n".join(lines)


SECTIONS: dict[str, Callable[[argparse.Namespace], tuple[list[dict], str]]] = {
    "processes": processes_section, "sweep": sweep_section,
}


def _counts(text: str) -> list[int]:
    try:
        counts = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated process counts, got '{text}'") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected positive process counts, got '{text}'")
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="key=value overrides of the config, e.g. meta.meta_batch=8")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="config to meta-train (default quick FLP)")
    p.add_argument("--section", action="append", choices=sorted(SECTIONS),
                   help="what to measure (repeatable; default all)")
    p.add_argument("--nproc", type=_counts, default=[1, 2], help="process counts, e.g. 1,2 (default)")
    p.add_argument("--steps", type=int, default=10, help="timed meta-steps per run (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="meta-steps before timing (default 2)")
    p.add_argument("--threads", type=int, help="torch threads per process (default cores / processes)")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    info = machine()
    print(f"Machine: {info['cpu']}, {info['cores']} cores; torch {info['torch']}, Python {info['python']}\n")
    results: dict = {"machine": info, "config": str(args.config), "overrides": args.overrides,
                     "steps": args.steps, "warmup": args.warmup, "sections": {}}
    for name in args.section or list(SECTIONS):
        rows, table = SECTIONS[name](args)
        results["sections"][name] = rows
        print(f"### {name}\n\n{table}\n", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
