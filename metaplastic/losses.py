"""Task losses with their output gradients.

A loss gives a per-task value (mean over the batch) and dL/d(output) for rules that
backpropagate by hand. Values are per task, shape (T,), so the meta-objective can average
over tasks and the per-task gradients of an inner step stay independent.
"""

from __future__ import annotations

from typing import Protocol

import torch.nn.functional as F
from torch import Tensor

from metaplastic.errors import ConfigError


class Loss(Protocol):
    def value(self, output: Tensor, target: Tensor) -> Tensor: ...

    def output_grad(self, output: Tensor, target: Tensor) -> Tensor: ...


class MSELoss:
    """Mean squared error over batch and output units: (1/(B*n)) sum (y_hat - y)^2."""

    def value(self, output: Tensor, target: Tensor) -> Tensor:
        return ((output - target) ** 2).mean(dim=(-2, -1))

    def output_grad(self, output: Tensor, target: Tensor) -> Tensor:
        n = output.shape[-2] * output.shape[-1]
        return 2.0 * (output - target) / n


class CrossEntropyLoss:
    """Softmax cross-entropy on logits with one-hot (or soft) targets, mean over the batch."""

    def value(self, output: Tensor, target: Tensor) -> Tensor:
        return -(target * F.log_softmax(output, dim=-1)).sum(-1).mean(-1)

    def output_grad(self, output: Tensor, target: Tensor) -> Tensor:
        return (F.softmax(output, dim=-1) - target) / output.shape[-2]


LOSSES = {"mse": MSELoss, "cross_entropy": CrossEntropyLoss}


def get_loss(name: str) -> Loss:
    try:
        return LOSSES[name]()
    except KeyError:
        raise ConfigError(f"unknown loss '{name}' (known: {', '.join(sorted(LOSSES))})") from None
