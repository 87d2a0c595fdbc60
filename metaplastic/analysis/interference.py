"""Interference: what an update made on one task does to the loss of earlier tasks.

In a continual stream the rule learns tasks j = 0..F-1 one after another. Let W_j be the
weights before task j and dW_j = W_{j+1} - W_j the rule's cumulative update over task j's
minibatches. With L_i the loss on task i's held-out points, for i <= j:

    exact:        I[i, j] = L_i(W_j + dW_j) - L_i(W_j)
    first order:  I1[i, j] = <grad L_i(W_j), dW_j>

(positive = the update on task j raised the loss on task i). The SGD baseline at matched
update norm replaces dW_j by  dW_j^SGD = -|dW_j| g_j / |g_j|,  g_j the gradient of task j's
training loss (all its minibatches) at W_j. Scalar summaries over the pairs i < j:

    interference       = mean_{i<j} I[i, j]
    per unit norm      = mean_{i<j} I[i, j] / |dW_j|

and the diagonal I[j, j] is the update's effect on its own task; the runner also reports
mean_{i<j} I[i, j] / (-mean_j I[j, j]), interference per unit of own-task learning. Norms and inner products run
over every parameter the rule changes, per episode; means are over pairs and episodes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metaplastic.analysis.vectors import EPS, flat, loss_gradient, query_gradients, query_losses
from metaplastic.losses import Loss
from metaplastic.networks import MLP


def first_order(gradients: list[dict[str, Tensor]], update: dict[str, Tensor], keys: list[str]) -> Tensor:
    """(T, len(gradients)): <grad L_i, dW> per episode for every given gradient."""
    d = flat(update, keys)
    return torch.stack([(flat(g, keys) * d).sum(-1) for g in gradients], dim=1)


def loss_change(
    net: MLP, loss: Loss, weights: dict[str, Tensor], update: dict[str, Tensor], keys: list[str], qx: Tensor, qy: Tensor
) -> tuple[Tensor, Tensor]:
    """(exact, first-order) change of every task's held-out loss under ``update``, each (T, F)."""
    base = query_losses(net, loss, weights, qx, qy)
    moved = query_losses(net, loss, {**weights, **{k: weights[k] + update[k] for k in keys}}, qx, qy)
    grads = query_gradients(net, loss, weights, keys, qx, qy, qx.shape[1])
    return moved - base, first_order(grads, update, keys)


def matched_sgd_update(
    net: MLP, loss: Loss, weights: dict[str, Tensor], update: dict[str, Tensor], keys: list[str], x: Tensor, y: Tensor
) -> dict[str, Tensor]:
    """-|dW| g/|g| per episode, g the gradient of the loss on (x (T, N, n), y) at ``weights``."""
    g = loss_gradient(net, loss, weights, keys, x, y)
    scale = flat(update, keys).norm(dim=-1) / flat(g, keys).norm(dim=-1).clamp_min(EPS)
    return {k: -g[k] * scale.view(-1, *[1] * (g[k].dim() - 1)) for k in keys}


def block_interference(
    net: MLP,
    loss: Loss,
    before: dict[str, Tensor],
    after: dict[str, Tensor],
    keys: list[str],
    j: int,
    train_x: Tensor,
    train_y: Tensor,
    qx: Tensor,
    qy: Tensor,
    baseline: bool = True,
) -> dict[str, Tensor]:
    """Column j of the interference matrices (rows i <= j) for the rule and, optionally, SGD.

    train_x/train_y: task j's minibatches flattened to (T, S*B, n). Returns (T, j+1) tensors and
    the update norms (T,)."""
    qx, qy = qx[:, : j + 1], qy[:, : j + 1]
    update = {k: after[k] - before[k] for k in keys}
    exact, lin = loss_change(net, loss, before, update, keys, qx, qy)
    out = {"exact": exact.detach(), "first_order": lin.detach(), "norm": flat(update, keys).norm(dim=-1)}
    if baseline:
        sgd = matched_sgd_update(net, loss, before, update, keys, train_x, train_y)
        exact, lin = loss_change(net, loss, before, sgd, keys, qx, qy)
        out["sgd_exact"], out["sgd_first_order"] = exact.detach(), lin.detach()
    return out


def _mean_se(pairs: Tensor) -> tuple[float, float]:
    """Mean over pairs and episodes; standard error across episodes of the per-episode means."""
    per_episode = pairs.mean(1)
    n = per_episode.shape[0]
    se = float(per_episode.std() / n**0.5) if n > 1 else float("nan")
    return float(per_episode.mean()), se


def summarize_matrix(columns: list[Tensor], norms: list[Tensor]) -> dict[str, object]:
    """Mean (over episodes) F x F matrix (NaN below the diagonal: i > j is not defined) and the
    scalars over i < j: mean change and mean change per unit update norm, with standard errors
    across episodes."""
    F = len(columns)
    matrix = torch.full((F, F), float("nan"), dtype=torch.float64)
    pairs, per_norm = [], []
    for j, (col, norm) in enumerate(zip(columns, norms)):
        matrix[: j + 1, j] = col.double().mean(0).cpu()
        if j > 0:
            pairs.append(col[:, :j].double())
            per_norm.append((col[:, :j] / norm.clamp_min(EPS).unsqueeze(-1)).double())
    mean, se = _mean_se(torch.cat(pairs, 1)) if pairs else (float("nan"), float("nan"))
    mean_norm, se_norm = _mean_se(torch.cat(per_norm, 1)) if per_norm else (float("nan"), float("nan"))
    return {
        "matrix": matrix.tolist(),
        "mean_earlier": mean,
        "mean_earlier_se": se,
        "mean_earlier_per_norm": mean_norm,
        "mean_earlier_per_norm_se": se_norm,
        "mean_own": float(torch.stack([c[:, -1].double() for c in columns]).mean()),
    }
