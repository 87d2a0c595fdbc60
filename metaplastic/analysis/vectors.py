"""Per-task views of parameter dicts: flattening, inner products, gradients of the task loss.

Every analysis compares updates and gradients task by task (episode by episode), so all
quantities here keep the leading task dimension T of the inner loop: a parameter dict maps
``layers.{l}.weight`` to (T, out, in), and ``flat`` turns a chosen set of keys into (T, P).
"""

from __future__ import annotations

import torch
from torch import Tensor

from metaplastic.losses import Loss
from metaplastic.networks import MLP

EPS = 1e-30


def per_task(weights: dict[str, Tensor], keys: list[str], n_tasks: int) -> dict[str, Tensor]:
    """Give the ``keys`` a leading task dimension (a copy per task), as after a first inner step."""
    out = dict(weights)
    for k in keys:
        v = weights[k]
        out[k] = v.unsqueeze(0).expand(n_tasks, *v.shape).clone() if v.dim() in (1, 2) else v
    return out


def flat(params: dict[str, Tensor], keys: list[str]) -> Tensor:
    """(T, P): the given keys of every task concatenated."""
    return torch.cat([params[k].flatten(1) for k in keys], dim=1)


def difference(a: dict[str, Tensor], b: dict[str, Tensor], keys: list[str]) -> dict[str, Tensor]:
    return {k: a[k] - b[k] for k in keys}


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine along the last dimension; 0 where either vector is zero."""
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(EPS)


def query_losses(net: MLP, loss: Loss, weights: dict[str, Tensor], qx: Tensor, qy: Tensor) -> Tensor:
    """Loss of every task of a stream on its own held-out points: qx (T, F, Q, n) -> (T, F)."""
    T, F, Q, _ = qx.shape
    out = net.forward(weights, qx.flatten(1, 2)).output
    return loss.value(out.view(T, F, Q, -1), qy)


def loss_gradient(
    net: MLP, loss: Loss, weights: dict[str, Tensor], keys: list[str], x: Tensor, y: Tensor
) -> dict[str, Tensor]:
    """Per-task gradient of the loss on (x (T, B, n), y) w.r.t. ``keys`` (which must be per task)."""
    with torch.enable_grad():
        leaves = {k: weights[k].detach().requires_grad_(True) for k in keys}
        value = loss.value(net.forward({**weights, **leaves}, x).output, y).sum()
        grads = torch.autograd.grad(value, [leaves[k] for k in keys])
    return dict(zip(keys, grads))


def query_gradients(
    net: MLP, loss: Loss, weights: dict[str, Tensor], keys: list[str], qx: Tensor, qy: Tensor, tasks: int
) -> list[dict[str, Tensor]]:
    """Per-episode gradients of L_i (task i's held-out loss) for i < ``tasks``."""
    return [loss_gradient(net, loss, weights, keys, qx[:, i], qy[:, i]) for i in range(tasks)]
