"""The inner loop: a network learning online, one minibatch at a time, by its rule.

Plastic weights start as the shared meta-learned initial weights; the first update broadcasts
them to one copy per task, so a meta-batch of T tasks costs one batched matmul per layer and
no Python loop over tasks. Frozen layers stay shared for the whole lifetime.

``run_lifetime`` takes the path ``unroll.path`` / ``unroll.kernels`` choose
(``metaplastic.lifetime_paths``): by default a rule's fused path when it has one
(``rule.fused_lifetime``, same values, one autograd node for the whole lifetime), while a
meta-gradient is being recorded; ``path: step`` runs the step-by-step graph instead.

``unroll`` (``meta.unroll`` in configs) chooses how the meta-gradient goes through the inner
loop: full, checkpointed segments (same numbers, less memory), truncated to the last K steps,
or first order. The fused path does all four itself; everything else runs step by step here
(checkpointing with ``torch.utils.checkpoint``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from metaplastic.config import UnrollConfig
from metaplastic.errors import ShapeError
from metaplastic.lifetime_paths import choose_path
from metaplastic.losses import Loss
from metaplastic.networks import MLP
from metaplastic.params import select
from metaplastic.rules import Rule


def check_stream(net: MLP, x: Tensor, y: Tensor) -> None:
    if x.dim() != 4 or y.dim() != 4 or x.shape[:3] != y.shape[:3]:
        raise ShapeError(
            f"lifetime data must be x (T, S, B, n_in) and y (T, S, B, n_out) with matching T, S, B; "
            f"got x {tuple(x.shape)} and y {tuple(y.shape)}"
        )
    if x.shape[-1] != net.in_features or y.shape[-1] != net.out_features:
        raise ShapeError(
            f"network expects {net.in_features} inputs and {net.out_features} outputs, "
            f"data has {x.shape[-1]} and {y.shape[-1]}"
        )


def iterate_lifetime(
    net: MLP, rule: Rule, meta: dict[str, Tensor], x: Tensor, y: Tensor, loss: Loss
) -> Iterator[tuple[int, dict[str, Tensor]]]:
    """Yield (step, weights after that step) for every minibatch of the stream."""
    check_stream(net, x, y)
    weights = select(meta, "init")
    prepared = rule.prepare(net, meta)
    for step in range(x.shape[1]):
        weights = {**weights, **_inner_step(net, rule, loss, weights, prepared, x[:, step], y[:, step])}
        yield step, weights


FULL = UnrollConfig()


def _records_meta_gradient(meta: dict[str, Tensor], x: Tensor, y: Tensor) -> bool:
    """Whether the fused lifetime applies: a gradient to the meta-parameters only (the fused
    node gives none to the data) over at least one step."""
    return (
        torch.is_grad_enabled()
        and x.shape[1] > 0
        and any(v.requires_grad for v in meta.values())
        and not (x.requires_grad or y.requires_grad)
    )


def run_lifetime(
    net: MLP, rule: Rule, meta: dict[str, Tensor], x: Tensor, y: Tensor, loss: Loss, unroll: UnrollConfig = FULL
) -> dict[str, Tensor]:
    """Weights at the end of the lifetime, with the meta-gradient path ``unroll`` asks for."""
    check_stream(net, x, y)
    path = choose_path(rule, unroll, x.device, x.dtype) if _records_meta_gradient(meta, x, y) else None
    if path is not None and path.fused:
        n_steps = x.shape[1]
        segment = unroll.segment_length(n_steps) if unroll.mode == "checkpoint" else 0
        return rule.fused_lifetime(
            net, meta, x, y, loss, segment=segment, start=unroll.first_graph_step(n_steps),
            first_order=unroll.mode == "first_order", kernels=path.kernel_mode,
        )
    weights = select(meta, "init")
    prepared = rule.prepare(net, meta)
    n_steps = x.shape[1]
    first_graph_step = unroll.first_graph_step(n_steps)
    step_fn = _compiled_step(net, rule, loss) if unroll.compile else partial(_inner_step, net, rule, loss)
    if unroll.mode == "checkpoint" and torch.is_grad_enabled():
        segment = unroll.segment_length(n_steps)
        for begin in range(0, n_steps, segment):
            steps = range(begin, min(begin + segment, n_steps))
            weights = checkpoint(_segment, step_fn, prepared, x, y, steps, weights, use_reentrant=False)
        return weights
    for step in range(n_steps):
        inputs = weights
        if unroll.mode == "first_order":
            inputs = {k: v.detach() for k, v in weights.items()}
        new = step_fn(inputs, prepared, x[:, step], y[:, step])
        if unroll.mode == "first_order":
            new = {k: weights[k] + (v - inputs[k]) if k in weights else v for k, v in new.items()}
        elif step < first_graph_step:
            # truncation: the state before the window is a constant, and no graph is kept for it
            new = {k: v.detach() for k, v in new.items()}
        weights = {**weights, **new}
    return weights


def _inner_step(
    net: MLP, rule: Rule, loss: Loss, weights: dict[str, Tensor], prepared: dict[str, Tensor], x: Tensor, y: Tensor
) -> dict[str, Tensor]:
    """One inner step: the forward pass and the rule's new weights."""
    return rule.step(net, weights, prepared, net.forward(weights, x), y, loss)


_COMPILED: dict[tuple[int, int, int], tuple[MLP, Rule, Loss, Callable]] = {}


def _compiled_step(net: MLP, rule: Rule, loss: Loss) -> Callable:
    """``_inner_step`` through torch.compile, one compiled function per (network, rule, loss)."""
    key = (id(net), id(rule), id(loss))
    if key not in _COMPILED:  # the entry keeps the objects alive, so their ids stay theirs
        _COMPILED[key] = (net, rule, loss, torch.compile(partial(_inner_step, net, rule, loss), dynamic=False))
    return _COMPILED[key][3]


def _segment(
    step_fn: Callable, prepared: dict[str, Tensor], x: Tensor, y: Tensor, steps: Sequence[int],
    weights: dict[str, Tensor],
) -> dict[str, Tensor]:
    """Some inner steps from the given weights (the unit ``torch.utils.checkpoint`` recomputes)."""
    for step in steps:
        weights = {**weights, **step_fn(weights, prepared, x[:, step], y[:, step])}
    return weights
