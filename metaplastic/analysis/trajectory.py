"""One pass over a continual lifetime that records what every analysis needs.

The rule runs through its protocol (``prepare`` once, ``step`` per minibatch), exactly as in
``meta.lifetime.iterate_lifetime``, but with the plastic weights given a task dimension from
the start, so that per-episode gradients of shared initial weights stay separate. The analysed
parameters are the network parameters (``layers.*``) that the rule's steps return at any
point of the lifetime, found by a first pass without gradients (FLP's biases, for instance,
only when ``plastic_bias`` is set; a rule may update some layers only on some steps).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from metaplastic.analysis.alignment import step_alignment
from metaplastic.analysis.vectors import per_task
from metaplastic.losses import Loss
from metaplastic.meta.lifetime import check_stream
from metaplastic.networks import MLP, bias_key, weight_key
from metaplastic.params import select
from metaplastic.rules import Rule
from metaplastic.tasks import Episodes


@dataclass
class Trajectory:
    keys: list[str]  # the parameters the rule changes, layer order
    snapshots: list[dict[str, Tensor]]  # weights before the first task, then after each task
    alignment: list[dict[str, dict[str, Tensor]]]  # per step: {"cos"|"proj"|"norm": {layer: (T,)}}


def _key_order(key: str) -> tuple[int, str]:
    return int(key.split(".")[1]), key


def _steps(net: MLP, rule: Rule, weights: dict[str, Tensor], prepared: dict[str, Tensor], x: Tensor, y: Tensor,
           loss: Loss) -> Iterator[tuple[dict[str, Tensor], dict[str, Tensor]]]:
    """(weights before, the rule's returned values) for every step; state keys travel in weights."""
    for step in range(x.shape[1]):
        changed = rule.step(net, weights, prepared, net.forward(weights, x[:, step]), y[:, step], loss)
        changed = {k: v.detach() for k, v in changed.items()}
        yield weights, changed
        weights = {**weights, **changed}


@torch.no_grad()
def record(net: MLP, rule: Rule, meta: dict[str, Tensor], loss: Loss, episodes: Episodes) -> Trajectory:
    x, y = episodes.x, episodes.y
    check_stream(net, x, y)
    T = x.shape[0]
    plastic = [k for l in net.plastic_layers for k in (weight_key(l), bias_key(l))]
    start = {k: v.detach() for k, v in per_task(select(meta, "init"), plastic, T).items()}
    prepared = {k: v.detach() for k, v in rule.prepare(net, meta).items()}
    returned = {k for _, changed in _steps(net, rule, start, prepared, x, y, loss) for k in changed}
    keys = sorted((k for k in returned if k.startswith("layers.")), key=_key_order)
    boundaries = set(episodes.boundaries)
    snapshots, aligned = [start], []
    for step, (weights, changed) in enumerate(_steps(net, rule, start, prepared, x, y, loss)):
        new = {**weights, **changed}
        aligned.append(step_alignment(net, loss, weights, new, keys, x[:, step], y[:, step]))
        if step + 1 in boundaries:
            snapshots.append(new)
    return Trajectory(keys, snapshots, aligned)
