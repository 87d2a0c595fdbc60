"""The meta-objective: loss after a whole lifetime on fresh query points of every task seen,
plus the optional "remember" points replayed from the trajectory (OML)."""

from __future__ import annotations

import torch
from torch import Tensor

from metaplastic.config import UnrollConfig
from metaplastic.losses import Loss
from metaplastic.meta.lifetime import FULL, run_lifetime
from metaplastic.networks import MLP
from metaplastic.rules import Rule
from metaplastic.tasks import Episodes


def meta_loss(
    net: MLP, rule: Rule, meta: dict[str, Tensor], episodes: Episodes, loss: Loss, unroll: UnrollConfig = FULL
) -> Tensor:
    """Mean over tasks of the post-lifetime loss on query (+ remember) points; ``unroll`` sets
    how its gradient goes through the inner loop (``meta.unroll``)."""
    weights = run_lifetime(net, rule, meta, episodes.x, episodes.y, loss, unroll)
    qx, qy = meta_loss_points(episodes)
    return loss.value(net.forward(weights, qx).output, qy).mean()


def meta_loss_points(episodes: Episodes) -> tuple[Tensor, Tensor]:
    """(x, y) of the meta-loss, (T, N, .): every task's query points, then its remember batch."""
    qx = episodes.query_x.flatten(1, 2)
    qy = episodes.query_y.flatten(1, 2)
    if episodes.remember_x.shape[1]:
        qx = torch.cat([qx, episodes.remember_x], dim=1)
        qy = torch.cat([qy, episodes.remember_y], dim=1)
    return qx, qy
