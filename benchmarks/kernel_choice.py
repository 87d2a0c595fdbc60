"""What ``meta.unroll.kernels: auto`` chooses on this CPU for some configs, measured afresh.

Runs one meta-step of each config with a private, empty kernel choices file (the user's
``$METAPLASTIC_CACHE/kernel_choices.json`` is neither read nor written) and prints the choice
and the two per-inner-step times it was made by (metaplastic.kernels.selection).

    python benchmarks/kernel_choice.py experiments/repro/flp_hebb.yaml experiments/repro/flp_oja.yaml \\
        --override meta.meta_batch=1 --threads 1 --json benchmarks/results_kernel_choice.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
from pathlib import Path

import torch

from metaplastic.config import load_config
from metaplastic.kernels import selection
from metaplastic.meta import Experiment, MetaTrainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--override", action="append", default=[], help="key=value for every config")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the choices here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp())
    selection.choices_file = lambda: folder / "kernel_choices.json"  # this script's own, empty file
    rows = []
    for path in args.configs:
        cfg = load_config(path, [*args.override, f"out_dir={folder / 'run'}"])
        trainer = MetaTrainer(Experiment.from_config(cfg))
        with selection.recording() as chosen:
            trainer.meta_step()
        for choice in chosen.values():
            rows.append({"config": path, "overrides": args.override, "native": choice.native,
                         "native_us": round(choice.native_s * 1e6, 1), "torch_us": round(choice.torch_s * 1e6, 1)})
            print(f"{path}: {choice.describe()}", flush=True)
    if args.json:
        cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout if platform.system() == "Linux" else ""
        model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "")
        Path(args.json).write_text(json.dumps({"cpu": model, "cpu_id": selection.cpu_name(), "threads": args.threads,
                                               "margin": selection.MARGIN, "choices": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
