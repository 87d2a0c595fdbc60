"""Plastic convolutions: the conv stage as fast weights learned by inner-loop gradient descent.

With ``network.conv.plastic`` the conv layers are no longer a frozen feature extractor. Every
inner step computes the step's features with the current conv weights, lets the head's rule
update the fully connected layers as usual, and moves the conv weights by one gradient step
(the OML/MAML gradient rule), whatever rule the head uses:

    conv' = conv - lr.features.{i} * dL_step/dconv,   L_step = loss(head(conv; x_step), y_step)

at the pre-update weights, with ``torch.autograd.grad(create_graph=True)`` so the meta-gradient
through the step is exact second order (first order when the SGD head rule has
``first_order``). The shared meta-learned weights ``init.features.*`` are broadcast to one copy
per task (a view, no copy) and every conv layer runs as one grouped convolution, so T tasks
cost no Python loop. The lifetime runs step by step: the fused FLP path and the checkpoint /
truncate / first-order unroll modes do not apply here (the Experiment rejects them).
"""

from __future__ import annotations

import torch
from torch import Tensor

from metaplastic.losses import Loss
from metaplastic.meta.lifetime import check_stream
from metaplastic.meta.objective import meta_loss_points
from metaplastic.networks import MLP
from metaplastic.networks.conv import PREFIX as FEATURES
from metaplastic.networks.conv import ConvEncoder
from metaplastic.params import select
from metaplastic.rules import Rule
from metaplastic.tasks import Episodes

LR_PREFIX = "lr." + FEATURES


def conv_lr_init(encoder: ConvEncoder, value: float, dtype: torch.dtype) -> dict[str, Tensor]:
    """Initial meta-parameters ``lr.features.{i}``: one inner step size per conv layer."""
    return {f"{LR_PREFIX}{i}": torch.tensor(value, dtype=dtype) for i in range(len(encoder.channels))}


def split_meta(meta: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """(initial conv weights ``features.*``, conv step sizes by layer index, head meta-parameters)."""
    conv = {k[len("init."):]: v for k, v in meta.items() if k.startswith("init." + FEATURES)}
    lrs = {k[len(LR_PREFIX):]: v for k, v in meta.items() if k.startswith(LR_PREFIX)}
    head = {k: v for k, v in meta.items() if not (k.startswith("init." + FEATURES) or k.startswith(LR_PREFIX))}
    return conv, lrs, head


def plastic_conv_lifetime(
    encoder: ConvEncoder,
    net: MLP,
    rule: Rule,
    meta: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    loss: Loss,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(per-task conv weights, head weights) at the end of the lifetime on images x (T, S, B, pixels).

    Without a meta-gradient to record (``torch.no_grad`` in evaluation, or no meta-parameter
    requiring grad) the inner conv gradients are still taken, on detached weights, and no
    meta-graph is kept.
    """
    outer = torch.is_grad_enabled() and any(v.requires_grad for v in meta.values())
    conv0, lrs, head = split_meta(meta)
    n_tasks = x.shape[0]
    conv = {k: v.expand(n_tasks, *v.shape) for k, v in conv0.items()}
    weights = select(head, "init")
    prepared = rule.prepare(net, head)
    create_graph = outer and not getattr(rule, "first_order", False)
    with torch.enable_grad():
        for step in range(x.shape[1]):
            if not outer:
                conv = {k: v.detach() for k, v in conv.items()}
            # a copy with no history (evaluation, or conv meta-parameters held fixed) becomes a
            # leaf the inner gradient can be taken against
            conv = {k: v if v.requires_grad else v.detach().requires_grad_(True) for k, v in conv.items()}
            features = encoder.forward_tasks(conv, x[:, step])
            if step == 0:
                check_stream(net, features.unsqueeze(1), y[:, :1])
            trace = net.forward(weights, features)
            # sum over tasks: each task's loss depends only on its own conv copy
            step_loss = loss.value(trace.output, y[:, step]).sum()
            grads = torch.autograd.grad(step_loss, list(conv.values()), create_graph=create_graph)
            with torch.set_grad_enabled(outer):
                new = rule.step(net, weights, prepared, trace, y[:, step], loss)
                weights = {**weights, **new}
                conv = {k: v - lrs[k.split(".")[1]] * g for (k, v), g in zip(conv.items(), grads)}
    if not outer:
        conv = {k: v.detach() for k, v in conv.items()}
        weights = {k: v.detach() for k, v in weights.items()}
    return conv, weights


def plastic_conv_outputs(
    encoder: ConvEncoder, net: MLP, conv: dict[str, Tensor], weights: dict[str, Tensor], x: Tensor
) -> Tensor:
    """Network outputs (T, N, n_out) for images x (T, N, pixels) with adapted conv and head weights."""
    return net.forward(weights, encoder.forward_tasks(conv, x)).output


def plastic_conv_meta_loss(
    encoder: ConvEncoder, net: MLP, rule: Rule, meta: dict[str, Tensor], episodes: Episodes, loss: Loss
) -> Tensor:
    """Mean over tasks of the post-lifetime query (+ remember) loss, through the adapted convs."""
    conv, weights = plastic_conv_lifetime(encoder, net, rule, meta, episodes.x, episodes.y, loss)
    qx, qy = meta_loss_points(episodes)
    return loss.value(plastic_conv_outputs(encoder, net, conv, weights, qx), qy).mean()
