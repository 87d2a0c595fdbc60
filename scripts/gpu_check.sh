#!/usr/bin/env bash
# The GPU checks of the scale-out issue, as one short script for a lent CUDA machine:
#   1. the paper-size meta-step (9 layers of 300/900, 10 functions x 40 steps x batch 32) on CUDA,
#      float32 with TF32, per rule: seconds per meta-step and peak GPU memory;
#   2. a 2-trial sweep with one GPU per trial (experiments/sweeps/gpu_two_trials.yaml);
#   3. data-parallel meta-training over nccl, one rank per GPU.
# Results go to ${OUT:-runs/gpu_check}. Usage: bash scripts/gpu_check.sh   (after scripts/setup.sh,
# with a CUDA build of torch: TORCH_VERSION=... or the machine's own torch)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
"$PY" benchmarks/meta_step.py --device cuda --tf32 --rules flp-oja,flp-hebb,oml --repeats 5 \
    --json "$OUT/meta_step_cuda_tf32.json" | tee "$OUT/meta_step_cuda_tf32.txt"
RAY_USAGE_STATS_ENABLED=0 "$PY" -m metaplastic sweep experiments/sweeps/gpu_two_trials.yaml \
    --out "$OUT/sweep" --wandb disabled | tee "$OUT/sweep.txt"
grep -h '"device"' "$OUT"/sweep/trials/*/*/config.yaml 2>/dev/null || grep -h '^device' "$OUT"/sweep/trials/*/*/config.yaml
# 3. data-parallel meta-training over nccl on every GPU of the machine (meta-batch = 2 x GPUs)
N=$(nvidia-smi --list-gpus | wc -l)
"$PY" -m torch.distributed.run --standalone --nproc-per-node "$N" -m metaplastic train experiments/quick_flp.yaml \
    device=cuda meta.steps=20 "meta.meta_batch=$((2 * N))" --out "$OUT/ddp" --no-progress --wandb disabled \
    | tee "$OUT/ddp.txt"
