"""Where an FLP-Oja lifetime leaves the stable region of its explicit update.

Oja's step W' = W + P (t^T h - diag(sum_b t^2) W) multiplies each synapse's old weight by
1 - P_ij sum_b t_i^2: once that product exceeds 2 the weight flips sign and grows at every step,
the output error grows with it, the targets grow with the error, and the lifetime overflows.
This prints, for one training episode of a checkpoint (the meta-batch the trainer would draw
next), the largest P_ij sum_b t_i^2 per plastic layer and the largest per-task weight norm at every inner step.

    python scripts/oja_stability.py RUN_DIR [--steps N] [--advance K] [--threads T]
    # N: first N inner steps (default all); K: meta-train K more steps first (e.g. up to the
    # meta-step at which the run diverged; the data of every meta-step is seeded by its index)
"""

from __future__ import annotations

import argparse

import torch

from metaplastic.evaluation.checkpoint_eval import load_trainer
from metaplastic.networks import weight_key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--advance", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads: those of the run, to replay it bitwise")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    trainer = load_trainer(args.run)
    for _ in range(args.advance):
        trainer.meta_step()
    exp, net = trainer.experiment, trainer.experiment.net
    episodes = exp.training_episodes(trainer.step)
    meta = {k: v.detach() for k, v in trainer.meta.items()}
    prepared = exp.rule.prepare(net, meta)
    weights = {k[len("init."):]: v for k, v in meta.items() if k.startswith("init.")}
    n_steps = episodes.x.shape[1] if args.steps is None else min(args.steps, episodes.x.shape[1])
    print(f"checkpoint step {trainer.step}; per inner step: max P*sum_b t^2 (stable below 2) | |W| per layer")
    with torch.no_grad():
        for step in range(n_steps):
            trace = net.forward(weights, episodes.x[:, step])
            targets = exp.rule.targets(net, prepared, trace, episodes.y[:, step], exp.loss)
            decay = {l: float((prepared[f"coef.{l}.weight"] * (t * t).sum(-2).unsqueeze(-1)).max())
                     for l, t in targets.items()}
            # the largest over tasks
            norms = {l: float(weights[weight_key(l)].flatten(-2).norm(dim=-1).max()) for l in targets}
            print(f"{step:4d}  " + " ".join(f"{decay[l]:9.3g}" for l in targets) + "  | "
                  + " ".join(f"{norms[l]:9.3g}" for l in targets))
            weights = {**weights, **exp.rule.step(net, weights, prepared, trace, episodes.y[:, step], exp.loss)}
            if not all(torch.isfinite(w).all() for w in weights.values()):
                print("the lifetime overflowed")
                break


if __name__ == "__main__":
    main()
