"""How to run the tasks of a meta-batch: batched matmul, torch.func.vmap or a Python loop.

Measured in one run on the current device, for T tasks at the paper's shapes (batch 32, a
300x300 layer): (1) the kernel of one inner step of one plastic layer, a = h W^T, M = t^T h,
W' = W + P (M - s W) (Oja), written once for a leading task dimension, once for one task and
vmapped, once for one task and looped; (2) a whole forward lifetime (400 steps, no graph) of
the paper-size FLP-Oja network, batched against a loop of single-task lifetimes. The library
runs tasks batched; this script is how that choice was measured (see benchmarks/README.md).

    python benchmarks/task_batching.py [--device cuda] [--tasks 1,2,4,8]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.func import vmap


def timed(fn, device: str, repeats: int) -> float:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def inner_step(w: torch.Tensor, p: torch.Tensor, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """One plastic layer's forward pass and Oja update; works with or without a task dimension."""
    a = torch.matmul(h, w.transpose(-1, -2))
    m = torch.matmul(t.transpose(-1, -2), h) + 0 * a.sum()
    s = (t * t).sum(-2).unsqueeze(-1)
    return w + p * (m - s * w)


def kernel_row(n: int, device: str, repeats: int) -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n, 300, 300, generator=g).to(device)
    p = torch.randn(300, 300, generator=g).to(device) * 1e-3
    h = torch.randn(n, 32, 300, generator=g).to(device)
    t = torch.randn(n, 32, 300, generator=g).to(device)
    mapped = vmap(inner_step, in_dims=(0, None, 0, 0))
    batched = timed(lambda: inner_step(w, p, h, t), device, repeats)
    vm = timed(lambda: mapped(w, p, h, t), device, repeats)
    loop = timed(lambda: [inner_step(w[i], p, h[i], t[i]) for i in range(n)], device, repeats)
    print(f"{n:>5} {batched * 1e3:>11.3f} {vm * 1e3:>9.3f} {loop * 1e3:>9.3f} {vm / batched:>13.2f} "
          f"{loop / batched:>13.2f}", flush=True)


def lifetime_row(n: int, device: str, repeats: int) -> None:
    from metaplastic.config import config_from_dict
    from metaplastic.meta import Experiment
    from metaplastic.meta.lifetime import run_lifetime

    cfg = config_from_dict({
        "name": "batching", "device": device, "dtype": "float32",
        "task": {"name": "sine", "n_functions": 10, "steps_per_function": 40, "batch_size": 32},
        "network": {"hidden": [300, 300, 300, 300, 300, 900, 300, 300]},
        "rule": {"name": "flp", "form": "oja"}, "meta": {"meta_batch": n},
    })
    exp = Experiment.from_config(cfg)
    meta, ep = exp.init_meta(), exp.training_episodes(0)

    def one(i: int) -> None:
        run_lifetime(exp.net, exp.rule, meta, ep.x[i:i + 1], ep.y[i:i + 1], exp.loss)

    with torch.no_grad():
        batched = timed(lambda: run_lifetime(exp.net, exp.rule, meta, ep.x, ep.y, exp.loss), device, repeats)
        loop = timed(lambda: [one(i) for i in range(n)], device, repeats)
    print(f"{n:>5} {batched:>10.3f} {loop:>8.3f} {loop / batched:>13.2f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--tasks", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2, 4, 8])
    p.add_argument("--repeats", type=int, default=20, help="kernel repeats (lifetimes: a fifth, at least 2)")
    p.add_argument("--default-malloc", action="store_true",
                   help="skip metaplastic.runtime.keep_freed_memory(), which the CLI calls (glibc defaults)")
    args = p.parse_args(argv)
    if not args.default_malloc:
        from metaplastic.runtime import keep_freed_memory

        keep_freed_memory()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: this torch build or machine has no CUDA")
    malloc = "glibc defaults" if args.default_malloc else "keep_freed_memory"
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, malloc: {malloc}")
    print("one inner step of one 300x300 plastic layer (batch 32), median of", args.repeats)
    print(f"{'tasks':>5} {'batched ms':>11} {'vmap ms':>9} {'loop ms':>9} {'vmap/batched':>13} {'loop/batched':>13}")
    for n in args.tasks:
        kernel_row(n, args.device, args.repeats)
    print("forward lifetime of the paper-size FLP-Oja network (400 steps, no graph)")
    print(f"{'tasks':>5} {'batched s':>10} {'loop s':>8} {'loop/batched':>13}")
    for n in args.tasks:
        lifetime_row(n, args.device, max(2, args.repeats // 5))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
