"""Time one meta-step (inner loop + full second-order meta-gradient + Adam) per rule.

Every configuration runs in a fresh subprocess, so its peak RSS (``ru_maxrss``) is its own.
The table reports, per rule: seconds per meta-step (median of ``--repeats`` steps after
``--warmup`` warm-up steps), the raw peak RSS and the RSS right after the imports, an
analytical FLOP count per meta-step, the achieved GFLOP/s, and the GFLOP/s of plain
``torch.matmul`` at the same GEMM shapes measured in the same run (``roofline`` is the ratio).

    python benchmarks/meta_step.py                       # paper size: 10 functions x 40 steps x 32
    python benchmarks/meta_step.py --quick               # small sizes, a smoke run
    python benchmarks/meta_step.py --rules flp-oja --general   # the step-by-step autograd graph
    python benchmarks/meta_step.py --rules flp-oja --unroll checkpoint   # memory modes (meta.unroll)

``benchmarks/sweeps.py`` runs the unroll-length and meta-batch sweeps with these workers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

RULES = {
    "flp-oja": ("FLP-Oja", {"name": "flp", "form": "oja"}, None),
    "flp-hebb": ("FLP-Hebb", {"name": "flp", "form": "hebb"}, None),
    # the reproduction study's FLP-Hebb (experiments/repro/flp_hebb.yaml): error signal, tanh feedback
    "flp-hebb-repro": ("FLP-Hebb (repro config)", {"name": "flp", "form": "hebb", "signal": "error",
                                                   "output_target": "signal", "feedback_activation": "tanh",
                                                   "beta_init": 1.0, "coef_init": 1.0e-4, "coef_max": 0.01}, None),
    # Oja's decay taken at the new weights (torch algebra, no native kernel): no FLOP model
    "flp-oja-si": ("FLP-Oja, semi-implicit step", {"name": "flp", "form": "oja", "oja_step": "semi_implicit",
                                                   "coef_max": 0.01, "coef_init": 1.0e-6}, None),
    "oml": ("OML (layers 6,7)", {"name": "sgd"}, [-3, -2]),  # layers 6, 7 of the 9
    # the 4-term pool of experiments/quick_poly.yaml: Oja's two terms, a neuron-scoped post term
    # and a layer-scoped weight decay
    "poly": ("poly (4 terms)", {"name": "poly", "terms": {"pre_target": "synapse", "target2_w": "synapse",
                                                          "post": "neuron", "w": "layer"},
                                "coef_init": {"pre_target": 1.0e-6, "target2_w": -1.0e-6}}, None),  # 1e-4: NaN at 900
    # target propagation and the backward-path rules: no FLOP model (GFLOP/s and roofline '-')
    "dtp": ("DTP", {"name": "dtp", "lr_init": 0.2, "inverse_lr_init": 0.2, "alpha_init": 0.1, "sigma_init": 0.1}, None),
    "fa": ("FA", {"name": "fa"}, None),
    "dfa": ("DFA", {"name": "dfa"}, None),
}
FLOP_MODEL = ("flp-oja", "flp-hebb", "flp-hebb-repro", "poly", "oml")
HIDDEN = [300, 300, 300, 300, 300, 900, 300, 300]
QUICK_HIDDEN = [64, 64, 128, 64]


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


def current_rss_gb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9
    except OSError:
        return float("nan")


# ---- analytical FLOP counts ----------------------------------------------------------------
def layer_shapes(n_in: int, hidden: list[int], n_out: int) -> list[tuple[int, int]]:
    sizes = [n_in, *hidden, n_out]
    return [(sizes[i + 1], sizes[i]) for i in range(len(sizes) - 1)]  # (out, in)


def gemm_list(rule: str, shapes: list[tuple[int, int]], plastic: list[int], batch: int, query: int, steps: int):
    """[(count, m, k, n)] of the GEMMs (m x k) @ (k x n) of one meta-step, and the weight-sized
    elementwise FLOPs. FLP: as the fused path computes them; OML: the inner forward pass and
    hand-written backward pass, and twice each of those for the meta-gradient."""
    gemms: list[tuple[int, int, int, int]] = []
    elementwise = 0
    lowest = min(plastic)
    for l, (o, i) in enumerate(shapes):
        gemms.append((steps, batch, i, o))  # inner forward pass a = h W^T
        gemms += [(1, query, i, o), (2 if l else 1, query, o, i)]  # query: forward, backward
        if rule.startswith("flp") or rule == "poly":
            # poly: one outer-product term (pre_target) like Oja's, its other terms weight-sized
            oja = rule in ("flp-oja", "poly")
            gemms.append((steps, o, batch, i))  # forward: M = t^T h
            # backward: h D^T, t D, M again (for dL/dP), delta^T h, and delta W below the top
            gemms += [(steps, batch, i, o), (steps, batch, o, i), (2 * steps, o, batch, i)]
            if l:
                gemms.append((steps, batch, o, i))
            # forward: [M - s W], W + P M; backward: D = P G, [D.W, M - s W, G - s D], dP += M G
            elementwise += steps * o * i * ((4 + 9) if oja else (2 + 3))
        else:
            inner = [(steps, batch, i, o)]
            if l > lowest:
                inner.append((steps, batch, o, i))  # inner backprop
            if l in plastic:
                inner.append((steps, o, batch, i))  # inner weight gradient
                elementwise += 3 * 2 * steps * o * i  # W - lr g, and its backward
            gemms += inner[1:] + [(2 * c, m, k, n) for c, m, k, n in inner]
    return gemms, elementwise


def flop_count(gemms, elementwise: int) -> float:
    return float(sum(2 * c * m * k * n for c, m, k, n in gemms) + elementwise)


def matmul_rate(gemms, dtype: str, seconds: float = 1.0, device: str = "cpu") -> float:
    """GFLOP/s of torch.matmul over the distinct GEMM shapes, weighted like the meta-step."""
    import torch

    dt = getattr(torch, dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    total_flop, total_time = 0.0, 0.0
    shapes: dict[tuple[int, int, int], int] = {}
    for c, m, k, n in gemms:
        shapes[(m, k, n)] = shapes.get((m, k, n), 0) + c
    budget = seconds / max(len(shapes), 1) / 5
    for (m, k, n), count in shapes.items():
        a, b = torch.randn(m, k, dtype=dt, device=device), torch.randn(k, n, dtype=dt, device=device)
        for _ in range(3):
            torch.matmul(a, b)
        sync()
        best = float("inf")
        for _ in range(5):  # best of 5 rounds: robust to other load on the machine
            reps, start = 0, time.perf_counter()
            while time.perf_counter() - start < budget or reps < 3:
                torch.matmul(a, b)
                reps += 1
                if reps % 50 == 0:
                    sync()
            sync()
            best = min(best, (time.perf_counter() - start) / reps)
        total_flop += 2.0 * m * k * n * count
        total_time += best * count
    return total_flop / total_time / 1e9


# ---- one configuration in this process -----------------------------------------------------
class Worker:
    """One configuration: build it, time meta-steps one at a time, report."""

    def __init__(self, opts: dict):
        self.import_rss = rss_gb()
        import torch

        import metaplastic.meta.lifetime as lifetime
        from metaplastic.config import config_from_dict
        from metaplastic.meta import Experiment, MetaTrainer
        from metaplastic.runtime import keep_freed_memory

        # --general: meta.unroll.path 'step'; older checkouts (--baseline) chose it with a context manager
        # use_fused_lifetime, and the oldest had no fused path at all
        switch = getattr(lifetime, "use_fused_lifetime", None)
        by_config = switch is None and hasattr(lifetime, "choose_path")

        def use_fused_lifetime(enabled: bool) -> contextlib.AbstractContextManager:
            return switch(enabled) if switch is not None else contextlib.nullcontext()

        self.torch, self.opts = torch, opts
        if opts["threads"]:
            torch.set_num_threads(opts["threads"])
        if opts.get("tf32"):  # float32 GEMMs on TensorFloat-32 tensor cores (CUDA, Ampere and newer)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if opts["keep_freed_memory"]:
            keep_freed_memory()
        self.baseline_rss = rss_gb()
        label, rule_cfg, plastic = RULES[opts["rule"]]
        n_layers = len(opts["hidden"]) + 1
        if plastic is not None:
            plastic = [p % n_layers for p in plastic]
            label = label.replace("6,7", ",".join(map(str, plastic)))
        if rule_cfg["name"] == "poly" and not hasattr(lifetime, "choose_path"):
            raise SystemExit("this checkout has no fused poly rule")
        if rule_cfg["name"] == "sgd":
            lr = {"init": 1e-4, "lr": 1e-4}
        elif opts["rule"] not in FLOP_MODEL:
            lr = {"init": 1e-4}
        else:
            lr = {"init": 1e-4, "feedback": 1e-4, "coef": 1e-8, "beta": 1e-4}
        network = {"hidden": opts["hidden"]}
        if plastic is not None:
            network["plastic"] = plastic
        meta = {"lr": lr, "meta_batch": opts.get("meta_batch", 1)}
        unroll = opts.get("unroll") or {"mode": "full"}
        if unroll != {"mode": "full", "segment": None, "last_steps": None}:  # (--baseline: older checkouts)
            meta["unroll"] = unroll
            label += " [" + ", ".join(f"{k} {v}" for k, v in unroll.items() if v not in (None, False)) + "]"
        if meta["meta_batch"] != 1:
            label += f" [meta-batch {meta['meta_batch']}]"
        if opts["general"] and by_config:
            meta["unroll"] = {**meta.get("unroll", {}), "path": "step"}
        self.device = opts.get("device", "cpu")
        cfg = config_from_dict({
            "name": "bench",
            "device": self.device,
            "dtype": opts["dtype"],
            "task": {"name": "sine", "n_functions": opts["functions"],
                     "steps_per_function": opts["steps_per_function"], "batch_size": opts["batch"]},
            "network": network,
            "rule": rule_cfg,
            "meta": meta,
        })
        self.exp = Experiment.from_config(cfg)
        self.trainer = MetaTrainer(self.exp)
        self.use_fused_lifetime = use_fused_lifetime
        self.label = label + (" [general]" if opts["general"] else "")
        shapes = layer_shapes(self.exp.net.in_features, list(opts["hidden"]), self.exp.net.out_features)
        steps = opts["functions"] * opts["steps_per_function"]
        query = opts["functions"] * self.exp.task.query_per_function
        self.gemms, elementwise = gemm_list(
            opts["rule"], shapes, self.exp.net.plastic_layers, opts["batch"], query, steps
        )
        # tasks of a meta-batch repeat the same GEMM shapes (batched); truncation is not counted
        self.flop = flop_count(self.gemms, elementwise) * meta["meta_batch"] if opts["rule"] in FLOP_MODEL else None
        if self.flop is None:  # the matmul column still times the network's inner forward GEMMs
            self.gemms = [(steps, opts["batch"], i, o) for o, i in shapes]
        self.times: list[float] = []
        self.rates: list[float] = []

    def step(self, timed: bool) -> float:
        with self.use_fused_lifetime(not self.opts["general"]):
            seconds = self.trainer.meta_step()["seconds"]
        if timed:
            self.times.append(seconds)
            # the matmul rate right after each timed step: the same conditions as the step
            self.rates.append(matmul_rate(self.gemms, self.opts["dtype"], seconds=0.25, device=self.device))
        return seconds

    def result(self) -> dict:
        seconds = statistics.median(self.times)
        return {
            "label": self.label,
            "seconds": seconds,
            "all_seconds": self.times,
            "peak_rss_gb": rss_gb(),
            "baseline_rss_gb": self.baseline_rss,
            "import_rss_gb": self.import_rss,
            "gflop": self.flop / 1e9 if self.flop is not None else None,
            "gflops": self.flop / 1e9 / seconds if self.flop is not None else None,
            "matmul_gflops": statistics.median(self.rates),
            "threads": self.torch.get_num_threads(),
            "device": self.device,
            "device_peak_gb": (self.torch.cuda.max_memory_allocated() / 1e9
                               if self.device.startswith("cuda") else None),
            "torch": self.torch.__version__,
            # the path meta.unroll resolved to (meta.unroll.path / kernels; older checkouts: none)
            "lifetime": lifetime.as_dict() if (lifetime := getattr(self.trainer, "lifetime", None)) else None,
        }


# ---- where one meta-step's time goes ---------------------------------------------------------
GEMM_OPS = {"aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::addbmm", "aten::mv", "aten::addmv",
            "aten::dot", "aten::vdot"}
ALLOC_OPS = {"aten::empty", "aten::empty_like", "aten::empty_strided", "aten::resize_", "aten::new_empty",
             "aten::new_empty_strided"}
KINDS = ("GEMM", "native", "elementwise", "allocation")
PHASES = ("forward", "reverse", "optimizer")


def _phase(event) -> str:
    """forward (the lifetime and meta-loss), reverse (inside autograd's backward) or optimizer."""
    node = event
    while node is not None:
        if node.name.startswith("autograd::engine::evaluate_function"):
            return "reverse"
        if node.name.startswith("Optimizer."):
            return "optimizer"
        node = node.cpu_parent
    return "forward"


def _kind(name: str) -> str:
    if name in GEMM_OPS:
        return "GEMM"
    if name.startswith("native::"):
        return "native"
    if name in ALLOC_OPS:
        return "allocation"
    return "elementwise"  # every other operator: elementwise passes, reductions, copies, indexing


def phase_breakdown(w: Worker) -> dict:
    """Seconds of one meta-step by phase and kind of work, from torch.profiler's self times of the
    operators (the native kernels are timed as ``native::<name>`` ranges); ``overhead`` is the
    step's wall time outside every operator (Python, dispatch, autograd bookkeeping, profiling).
    The profiler adds its own cost per operator, so the ``overhead`` row is an upper bound."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from metaplastic.kernels import native

    # the kernels a lifetime binds once (native.HebbianKernels); older checkouts: module functions
    owner = getattr(native, "HebbianKernels", native)
    names = {"forward": "hebbian_forward", "adjoint": "hebbian_adjoint"} if owner is not native else \
        {"hebbian_forward": "hebbian_forward", "hebbian_adjoint": "hebbian_adjoint"}
    originals = {attr: getattr(owner, attr) for attr in names if hasattr(owner, attr)}

    def timed(name, fn):
        def call(*args, **kwargs):
            with record_function(f"native::{name}"):
                return fn(*args, **kwargs)
        return call

    for attr, fn in originals.items():
        setattr(owner, attr, timed(names[attr], fn))
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            w.step(timed=False)
            wall = time.perf_counter() - start
    finally:
        for attr, fn in originals.items():
            setattr(owner, attr, fn)
    table = {phase: dict.fromkeys(KINDS, 0.0) for phase in PHASES}
    for event in prof.events():
        if event.name.startswith(("aten::", "native::")) and event.device_type == torch.autograd.DeviceType.CPU:
            table[_phase(event)][_kind(event.name)] += event.self_cpu_time_total / 1e6
    operators = sum(sum(row.values()) for row in table.values())
    return {"wall": wall, "table": table, "overhead": max(0.0, wall - operators)}


def print_phases(label: str, phases: dict) -> None:
    wall = phases["wall"]
    print(f"\n{label}: one profiled meta-step, {wall:.2f} s (seconds and share of it)")
    print(f"{'phase':<10}" + "".join(f"{k:>18}" for k in KINDS))
    for phase, row in phases["table"].items():
        print(f"{phase:<10}" + "".join(f"{row[k]:>10.3f} ({row[k] / wall:>4.0%})" for k in KINDS))
    print(f"{'overhead':<10}{phases['overhead']:>10.3f} ({phases['overhead'] / wall:>4.0%})  "
          "outside every operator: Python, dispatch, autograd bookkeeping, profiling")


def worker(opts: dict) -> dict:
    w = Worker(opts)
    for i in range(opts["warmup"] + opts["repeats"]):
        w.step(timed=i >= opts["warmup"])
    result = w.result()
    if opts.get("phases"):
        result["phases"] = phase_breakdown(w)
    return result


def serve(opts: dict) -> None:
    """Paired mode: one meta-step per line 'step' / 'warmup' on stdin, the result on 'result'."""
    w = Worker(opts)
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd in ("step", "warmup"):
            print(json.dumps(w.step(timed=cmd == "step")), flush=True)
        elif cmd == "result":
            print(json.dumps(w.result()), flush=True)
            return


# ---- the driver --------------------------------------------------------------------------------
def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    try:
        load = " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        load = "?"
    return f"{model}, {os.cpu_count()} logical CPUs, load average {load}"


def run_config(opts: dict) -> dict:
    """One configuration in a fresh subprocess (so its peak RSS is its own)."""
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(opts)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def default_opts(**changes) -> dict:
    """Paper size, FLP-Oja, full unroll, 1 warm-up + 3 timed steps, unless changed."""
    opts = {
        "rule": "flp-oja", "steps_per_function": 40, "functions": 10, "batch": 32, "hidden": HIDDEN,
        "dtype": "float32", "warmup": 1, "repeats": 3, "threads": 0, "general": False, "keep_freed_memory": True,
        "meta_batch": 1, "unroll": {"mode": "full", "segment": None, "last_steps": None},
    }
    opts.update(changes)
    return opts


def paired(opts: dict, baseline: str) -> list[dict]:
    """Time this checkout and the one in ``baseline`` in two processes, alternating steps."""
    procs = []
    for path in (None, os.path.abspath(baseline)):
        env = dict(os.environ)
        if path is not None:
            env["PYTHONPATH"] = path + os.pathsep + env.get("PYTHONPATH", "")
        proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", json.dumps(opts)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )
        procs.append(proc)

    def ask(proc: subprocess.Popen, cmd: str) -> str:
        proc.stdin.write(cmd + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker died (exit {proc.wait()})")
        return line

    for proc in procs:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("benchmark worker failed to start")
    for i in range(opts["warmup"] + opts["repeats"]):
        for proc in procs:
            ask(proc, "step" if i >= opts["warmup"] else "warmup")
    results = [json.loads(ask(proc, "result")) for proc in procs]
    for proc in procs:
        proc.wait()
    results[1]["label"] += " [baseline]"
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rules", default="flp-oja,flp-hebb,poly,oml", help=f"comma-separated, from {', '.join(RULES)}")
    p.add_argument("--steps-per-function", type=int, default=40)
    p.add_argument("--functions", type=int, default=10)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--hidden", type=lambda s: [int(v) for v in s.split(",")], default=HIDDEN)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--general", action="store_true", help="disable the fused lifetime (step-by-step graph)")
    p.add_argument("--meta-batch", type=int, default=1, help="tasks per meta-step")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (peak GPU memory is reported too)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (CUDA float32)")
    p.add_argument("--unroll", default="full", choices=["full", "checkpoint", "truncate", "first_order"],
                   help="meta.unroll.mode")
    p.add_argument("--segment", type=int, help="meta.unroll.segment (checkpoint; default about sqrt(steps))")
    p.add_argument("--last-steps", type=int, help="meta.unroll.last_steps (truncate)")
    p.add_argument("--compile", action="store_true", help="meta.unroll.compile (step-by-step path only)")
    p.add_argument("--default-malloc", action="store_true",
                   help="skip metaplastic.runtime.keep_freed_memory(), which the CLI calls (glibc defaults)")
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    p.add_argument("--phases", action="store_true",
                   help="after the timed steps, profile one more and print its time by phase (forward, reverse, "
                        "optimizer) and kind (GEMM, native kernels, elementwise, allocation, overhead)")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--baseline", metavar="DIR",
                   help="also time the metaplastic package found in DIR (e.g. an older checkout), "
                        "alternating meta-steps with this one so both see the same machine load")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--serve", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.serve:
        serve(json.loads(args.serve))
        return 0

    if args.quick:
        args.steps_per_function, args.functions, args.batch, args.hidden = 3, 2, 8, QUICK_HIDDEN
        args.repeats = min(args.repeats, 3)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            p.error("--device cuda: this torch build or machine has no CUDA")
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        p.error(f"unknown rule(s) {unknown}; known: {', '.join(RULES)}")
    results = []
    for rule in rules:
        opts = {
            "rule": rule, "steps_per_function": args.steps_per_function, "functions": args.functions,
            "batch": args.batch, "hidden": args.hidden, "dtype": args.dtype, "warmup": args.warmup,
            "repeats": args.repeats, "threads": args.threads, "general": args.general,
            "keep_freed_memory": not args.default_malloc, "meta_batch": args.meta_batch, "device": args.device,
            "tf32": args.tf32, "unroll": {"mode": args.unroll, "segment": args.segment, "last_steps": args.last_steps},
            "phases": args.phases,
        }
        if args.compile:
            opts["unroll"]["compile"] = True
        if args.baseline:
            results += paired(opts, args.baseline)
            continue
        results.append(run_config(opts))

    r0 = results[0]
    print(f"machine: {machine()}; torch {r0['torch']}, {r0['threads']} threads, device {r0['device']}")
    print(f"sizes: {args.functions} functions x {args.steps_per_function} steps x batch {args.batch}, "
          f"hidden {','.join(map(str, args.hidden))}, {args.dtype}, "
          f"median of {args.repeats} after {args.warmup} warm-up")
    header = (f"{'rule':<44} {'s/step':>7} {'peak RSS':>9} {'base RSS':>9} {'GFLOP':>7} {'GFLOP/s':>8} "
              f"{'matmul':>7} {'roofline':>8}")
    print(header)
    print("-" * len(header))
    for r in results:
        flops = (f"{r['gflop']:>7.3g} {r['gflops']:>8.3g} {r['matmul_gflops']:>7.1f} "
                 f"{r['gflops'] / r['matmul_gflops']:>8.2f}") if r.get("gflop") is not None else \
            f"{'-':>7} {'-':>8} {r['matmul_gflops']:>7.1f} {'-':>8}"
        print(f"{r['label']:<44} {r['seconds']:>7.2f} {r['peak_rss_gb']:>7.2f}GB {r['baseline_rss_gb']:>7.2f}GB "
              + flops
              + (f"  GPU peak {r['device_peak_gb']:.2f}GB" if r.get("device_peak_gb") is not None else "")
              + (f"  [{', '.join(r['lifetime'].values())}]" if r.get("lifetime") else ""))
    for r in results:
        if r.get("phases"):
            print_phases(r["label"], r["phases"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "args": vars(args), "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
