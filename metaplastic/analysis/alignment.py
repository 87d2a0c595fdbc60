"""Alignment of a rule's inner-loop updates with gradient descent.

At inner step k the rule turns weights W_k into W_{k+1} on minibatch (x_k, y_k); its update
is dW = W_{k+1} - W_k. With g = dL(W_k; x_k, y_k)/dW the gradient of the task loss on the
same minibatch at the same weights, per layer l (the layer's weight matrix, and its bias when
the rule changes it) and per episode:

    cos_l  = <dW_l, -g_l> / (|dW_l| |g_l|)        alignment (1 = the direction of gradient descent)
    proj_l = <dW_l, -g_l> / |g_l|                 the update's length along -g (negative: uphill)

and the same over all plastic parameters together ("all"). Where the rule leaves a layer
unchanged at a step (|dW_l| = 0, e.g. a rule that alternates between forward and inverse
weights), cos and proj are undefined (NaN) and left out of the means.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metaplastic.analysis.vectors import EPS, cosine, flat, loss_gradient
from metaplastic.losses import Loss
from metaplastic.networks import MLP


def layer_groups(keys: list[str]) -> dict[str, list[str]]:
    """Keys grouped by layer ("layers.{l}.weight" -> "{l}"), plus "all"."""
    groups: dict[str, list[str]] = {}
    for k in keys:
        groups.setdefault(k.split(".")[1], []).append(k)
    return {**dict(sorted(groups.items(), key=lambda kv: int(kv[0]))), "all": list(keys)}


def alignment(update: dict[str, Tensor], gradient: dict[str, Tensor], keys: list[str]) -> dict[str, dict[str, Tensor]]:
    """{"cos"|"proj"|"norm": {layer: (T,)}} for one update and the gradient at the same weights."""
    result: dict[str, dict[str, Tensor]] = {"cos": {}, "proj": {}, "norm": {}}
    for name, group in layer_groups(keys).items():
        d, g = flat(update, group), flat(gradient, group)
        norm = d.norm(dim=-1)
        undefined = torch.where(norm > 0, 0.0, float("nan")).to(d.dtype)
        result["cos"][name] = cosine(d, -g) + undefined
        result["proj"][name] = (d * -g).sum(-1) / g.norm(dim=-1).clamp_min(EPS) + undefined
        result["norm"][name] = norm
    return result


def step_alignment(
    net: MLP,
    loss: Loss,
    before: dict[str, Tensor],
    after: dict[str, Tensor],
    keys: list[str],
    x: Tensor,
    y: Tensor,
) -> dict[str, dict[str, Tensor]]:
    """Alignment of the update ``after - before`` made on minibatch (x, y) of every episode."""
    grad = loss_gradient(net, loss, before, keys, x, y)
    update = {k: after[k] - before[k] for k in keys}
    with torch.no_grad():
        return alignment(update, grad, keys)
