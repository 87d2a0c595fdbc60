"""Sweeps of the meta-step cost, each configuration in a fresh subprocess (``meta_step.py``).

    python benchmarks/sweeps.py unroll       # (c) time and peak memory vs unroll length,
                                             #     full / checkpointed / truncated meta-gradients
    python benchmarks/sweeps.py meta-batch   # (d) tasks per meta-step, against a per-task loop
    python benchmarks/sweeps.py unroll --quick   # small sizes, a smoke run

Paper-size network (9 layers, width 300/900), FLP-Oja, batch 32, float32. Unroll lengths are
10 functions x (length / 10) steps. ``ratio`` columns are measured in the same run: memory
against the same mode at the shortest length; time per task against meta-batch 1 (running the
tasks one after another).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from meta_step import QUICK_HIDDEN, default_opts, machine, run_config  # noqa: E402


def modes(last_steps: int) -> list[tuple[str, dict]]:
    return [
        ("full", {"mode": "full", "segment": None, "last_steps": None}),
        ("checkpoint", {"mode": "checkpoint", "segment": None, "last_steps": None}),
        (f"truncate K={last_steps}", {"mode": "truncate", "segment": None, "last_steps": last_steps}),
    ]


def unroll_sweep(args: argparse.Namespace) -> list[dict]:
    rows = []
    print(f"{'mode':<16} {'steps':>6} {'s/step':>7} {'peak RSS':>9} {'x shortest':>10}")
    for name, unroll in modes(args.last_steps):
        first = None
        for length in args.lengths:
            opts = default_opts(rule=args.rule, steps_per_function=length // 10, unroll=unroll,
                                warmup=args.warmup, repeats=args.repeats)
            if args.quick:
                opts.update(hidden=QUICK_HIDDEN, batch=8)
            r = run_config(opts)
            first = first or r
            rows.append({"mode": name, "steps": length, **r})
            print(f"{name:<16} {length:>6} {r['seconds']:>7.2f} {r['peak_rss_gb']:>7.2f}GB "
                  f"{r['peak_rss_gb'] / first['peak_rss_gb']:>10.2f}", flush=True)
    return rows


def meta_batch_sweep(args: argparse.Namespace) -> list[dict]:
    rows = []
    print(f"{'mode':<12} {'tasks':>6} {'s/step':>7} {'s/task':>7} {'x loop':>7} {'peak RSS':>9}")
    for name, unroll in modes(args.last_steps)[:2]:
        single = None
        for tasks in args.tasks:
            opts = default_opts(rule=args.rule, meta_batch=tasks, unroll=unroll, warmup=args.warmup,
                                repeats=args.repeats)
            if args.quick:
                opts.update(hidden=QUICK_HIDDEN, batch=8, steps_per_function=4)
            r = run_config(opts)
            single = single or r
            per_task = r["seconds"] / tasks
            rows.append({"mode": name, "tasks": tasks, **r})
            print(f"{name:<12} {tasks:>6} {r['seconds']:>7.2f} {per_task:>7.2f} "
                  f"{per_task / single['seconds']:>7.2f} {r['peak_rss_gb']:>7.2f}GB", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", choices=["unroll", "meta-batch"])
    p.add_argument("--rule", default="flp-oja")
    p.add_argument("--lengths", type=lambda s: [int(v) for v in s.split(",")], default=[100, 200, 400, 800])
    p.add_argument("--tasks", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2, 4, 8])
    p.add_argument("--last-steps", type=int, default=100, help="K of the truncated mode")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args(argv)
    print(f"machine: {machine()}")
    rows = unroll_sweep(args) if args.sweep == "unroll" else meta_batch_sweep(args)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "args": vars(args), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
