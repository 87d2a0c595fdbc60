"""The meta-objective: loss after a whole lifetime on fresh query points of every task seen,
plus the optional "remember" points replayed from the trajectory (OML), for any learner."""

from __future__ import annotations

import torch
from torch import Tensor

from metaplastic.config import UnrollConfig
from metaplastic.losses import Loss
from metaplastic.meta.learner import Learner, PlasticLearner
from metaplastic.meta.lifetime import FULL
from metaplastic.networks import MLP
from metaplastic.rules import Rule
from metaplastic.tasks import Episodes


def meta_loss(
    net: MLP, rule: Rule, meta: dict[str, Tensor], episodes: Episodes, loss: Loss, unroll: UnrollConfig = FULL
) -> Tensor:
    """Mean over tasks of the post-lifetime loss on query (+ remember) points; ``unroll`` sets
    how its gradient goes through the inner loop (``meta.unroll``)."""
    return learner_meta_loss(PlasticLearner(net, rule, loss), meta, episodes, loss, unroll)


def learner_meta_loss(learner: Learner, meta: dict[str, Tensor], episodes: Episodes, loss: Loss,
                      unroll: UnrollConfig = FULL) -> Tensor:
    """The same for any learner (``metaplastic.meta.learner``): its outputs on the query points
    read from its state after the lifetime."""
    state = learner.final_state(meta, episodes, unroll)
    qx, qy = meta_loss_points(episodes)
    return loss.value(learner.outputs(meta, state, qx), qy).mean()


def meta_loss_points(episodes: Episodes) -> tuple[Tensor, Tensor]:
    """(x, y) of the meta-loss, (T, N, .): every task's query points, then its remember batch."""
    qx = episodes.query_x.flatten(1, 2)
    qy = episodes.query_y.flatten(1, 2)
    if episodes.remember_x.shape[1]:
        qx = torch.cat([qx, episodes.remember_x], dim=1)
        qy = torch.cat([qy, episodes.remember_y], dim=1)
    return qx, qy
