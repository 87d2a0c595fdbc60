"""Train a network with any rule, no meta-learning: one lifetime over a fixed dataset.

The rule's meta-parameters stay at their initial values (the paper setting: fixed random
feedback, fixed step sizes); the inner loop runs for ``epochs`` passes over the training set
in shuffled minibatches, with the task dimension T = 1. Everything is drawn from generators
seeded by ``seed``, so the same seed gives the same numbers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from metaplastic.data.arrays import ArrayDataset
from metaplastic.errors import DivergenceError, ShapeError
from metaplastic.losses import CrossEntropyLoss
from metaplastic.networks import MLP
from metaplastic.params import prefixed, select
from metaplastic.rules import Rule


@dataclass
class FitResult:
    """Errors (fractions) after 0, 1, ..., epochs passes; ``seconds``: wall time of the epochs
    (the error evaluations between them included)."""

    epochs: list[int] = field(default_factory=list)
    train_error: list[float] = field(default_factory=list)
    test_error: list[float] = field(default_factory=list)
    seconds: float = 0.0


def classification_error(net: MLP, weights: dict[str, Tensor], x: Tensor, y: Tensor, chunk: int = 2048) -> float:
    """Fraction of misclassified rows of x (N, D) with labels y (N,)."""
    wrong = 0
    for i in range(0, x.shape[0], chunk):
        out = net.forward(weights, x[i : i + chunk].unsqueeze(0)).output[0]
        wrong += int((out.argmax(-1) != y[i : i + chunk]).sum())
    return wrong / max(1, x.shape[0])


def init_params(net: MLP, rule: Rule, seed: int, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Network init and the rule's meta-parameters, in the order Experiment.init_meta draws them."""
    g = torch.Generator().manual_seed(int(seed))
    return {**prefixed(net.init(g, dtype), "init"), **rule.init(net, g, dtype)}


@torch.no_grad()
def fit_rule(
    net: MLP,
    rule: Rule,
    data: ArrayDataset,
    epochs: int,
    batch_size: int,
    seed: int = 0,
    meta: dict[str, Tensor] | None = None,
) -> FitResult:
    """Train from ``meta`` (default: ``init_params(net, rule, seed)``) and record error curves."""
    if data.n_features != net.in_features or data.n_classes != net.out_features:
        raise ShapeError(
            f"network maps {net.in_features} -> {net.out_features}, dataset '{data.name}' has "
            f"{data.n_features} features and {data.n_classes} classes"
        )
    meta = init_params(net, rule, seed) if meta is None else meta
    device = next(iter(meta.values())).device
    dtype = meta["init.layers.0.weight"].dtype
    x, y = data.train_x.to(device, dtype), data.train_y.to(device)
    xt, yt = data.test_x.to(device, dtype), data.test_y.to(device)
    onehot = F.one_hot(y, data.n_classes).to(dtype)
    loss = CrossEntropyLoss()
    weights = select(meta, "init")
    prepared = rule.prepare(net, meta)
    order = torch.Generator().manual_seed(int(seed) + 1)
    result = FitResult()

    def record(epoch: int) -> None:
        result.epochs.append(epoch)
        result.train_error.append(classification_error(net, weights, x, y))
        result.test_error.append(classification_error(net, weights, xt, yt))

    record(0)
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(x.shape[0], generator=order).to(device)
        for i in range(0, x.shape[0] - batch_size + 1, batch_size):
            idx = perm[i : i + batch_size]
            xb, yb = x[idx].unsqueeze(0), onehot[idx].unsqueeze(0)
            trace = net.forward(weights, xb)
            weights = {**weights, **rule.step(net, weights, prepared, trace, yb, loss)}
        if not all(math.isfinite(float(weights[k].abs().sum())) for k in weights if k.startswith("layers.")):
            raise DivergenceError(f"training diverged in epoch {epoch}: weights are not finite; lower the step size")
        result.seconds = time.perf_counter() - start
        record(epoch)
    return result
