"""Evaluation of a rule (or any learner) on regression streams (sine protocol).

For every episode, after each task boundary k of the stream (after function k has been
presented, in continual order), the MSE on held-out points of every function is recorded:
M[episode, k, f]. From it:

- final MSE:            mean_f M[:, K-1, f]           (all functions, end of lifetime)
- per-function MSE:     M[:, K-1, f]                  (the forgetting profile)
- curve (continual):    mean_{f <= k} M[:, k, f]      (functions seen so far, after function k)
- curve (iid):          mean_f M[:, k, f]             (all functions, after the same number of steps)

Means are over episodes with standard errors. Every method is scored on identical episodes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from metaplastic.losses import Loss
from metaplastic.meta.experiment import seeded_generator
from metaplastic.meta.learner import Learner, PlasticLearner
from metaplastic.networks import MLP
from metaplastic.rules import Rule
from metaplastic.tasks import Episodes


def _mean_se(x: Tensor) -> tuple[float, float]:
    n = x.shape[0]
    mean = float(x.mean())
    se = float(x.std(unbiased=True) / math.sqrt(n)) if n > 1 else 0.0
    return mean, se


@torch.no_grad()
def boundary_errors(
    net: MLP,
    rule: Rule,
    meta: dict[str, Tensor],
    task: Any,
    loss: Loss,
    episodes: int,
    points: int,
    seed: int,
    batch: int,
) -> Tensor:
    """M (episodes, boundaries, functions): held-out MSE per function after each boundary."""
    return learner_boundary_errors(PlasticLearner(net, rule, loss), meta, task, episodes, points, seed, batch)


@torch.no_grad()
def learner_boundary_errors(
    learner: Learner, meta: dict[str, Tensor], task: Any, episodes: int, points: int, seed: int, batch: int
) -> Tensor:
    """``boundary_errors`` for any learner (``metaplastic.meta.learner``)."""
    device = next(iter(meta.values())).device
    dtype = next(iter(meta.values())).dtype
    blocks = []
    done = 0
    while done < episodes:
        n = min(batch, episodes - done)
        ep = task.sample(n, seeded_generator(seed, done), query_per_function=points).to(device, dtype)
        blocks.append(episode_errors(learner, meta, ep))
        done += n
    return torch.cat(blocks, dim=0)


@torch.no_grad()
def episode_errors(learner: Learner, meta: dict[str, Tensor], episodes: Episodes) -> Tensor:
    """M (T, boundaries, functions) of given episodes: held-out MSE on each function's query
    points after each task boundary of the stream (float64, on the CPU)."""
    T, F, Q, _ = episodes.query_x.shape
    qx = episodes.query_x.flatten(1, 2)
    rows = []
    for _, state in learner.states(meta, episodes, {b - 1 for b in episodes.boundaries}):
        out = learner.outputs(meta, state, qx).view(T, F, Q, -1)
        rows.append(((out - episodes.query_y) ** 2).mean(dim=(-2, -1)))
    return torch.stack(rows, dim=1).cpu().double()


def summarize(errors: Tensor, order: str) -> dict[str, Any]:
    n_eps, K, F = errors.shape
    final = errors[:, -1, :]
    mean, se = _mean_se(final.mean(-1))
    per_fn = [_mean_se(final[:, f]) for f in range(F)]
    curve = []
    for k in range(K):
        seen = errors[:, k, : k + 1] if order == "continual" else errors[:, k, :]
        curve.append(_mean_se(seen.mean(-1)))
    if not math.isfinite(mean):
        mean = float("nan")
    return {
        "mse": mean,
        "mse_se": se,
        "per_function_mse": [m for m, _ in per_fn],
        "per_function_se": [s for _, s in per_fn],
        "curve": [m for m, _ in curve],
        "curve_se": [s for _, s in curve],
        "episodes": n_eps,
    }


def evaluate_rule(
    net: MLP,
    rule: Rule,
    meta: dict[str, Tensor],
    task: Any,
    loss: Loss,
    episodes: int,
    points: int,
    seed: int,
    batch: int,
    orders: tuple[str, ...] = ("continual", "iid"),
) -> dict[str, Any]:
    """Summaries for each presentation order, on episodes drawn from ``seed``."""
    return evaluate_learner(PlasticLearner(net, rule, loss), meta, task, episodes, points, seed, batch, orders)


def evaluate_learner(
    learner: Learner,
    meta: dict[str, Tensor],
    task: Any,
    episodes: int,
    points: int,
    seed: int,
    batch: int,
    orders: tuple[str, ...] = ("continual", "iid"),
) -> dict[str, Any]:
    """``evaluate_rule`` for any learner (``metaplastic.meta.learner``)."""
    results = {}
    for order in orders:
        # Episodes depend on (seed, order) only, so every method sees the same ones.
        episode_seed = seed * 7919 + ("continual", "iid").index(order)
        errors = learner_boundary_errors(learner, meta, task.with_order(order), episodes, points, episode_seed, batch)
        results[order] = summarize(errors, order)
    return results
