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

    def error_signal(self, output: Tensor, target: Tensor) -> Tensor: ...

    def error_signal_vjp(self, output: Tensor, grad: Tensor) -> Tensor: ...


class MSELoss:
    """Mean squared error over batch and output units: (1/(B*n)) sum (y_hat - y)^2."""

    def value(self, output: Tensor, target: Tensor) -> Tensor:
        return ((output - target) ** 2).mean(dim=(-2, -1))

    def output_grad(self, output: Tensor, target: Tensor) -> Tensor:
        n = output.shape[-2] * output.shape[-1]
        return 2.0 * (output - target) / n

    def error_signal(self, output: Tensor, target: Tensor) -> Tensor:
        """FLP's error signal e = y - y_hat."""
        return target - output

    def error_signal_vjp(self, output: Tensor, grad: Tensor) -> Tensor:
        """grad^T de/dy_hat = -grad."""
        return -grad


class CrossEntropyLoss:
    """Softmax cross-entropy on logits with one-hot (or soft) targets, mean over the batch."""

    def value(self, output: Tensor, target: Tensor) -> Tensor:
        return -(target * F.log_softmax(output, dim=-1)).sum(-1).mean(-1)

    def output_grad(self, output: Tensor, target: Tensor) -> Tensor:
        return (F.softmax(output, dim=-1) - target) / output.shape[-2]

    def error_signal(self, output: Tensor, target: Tensor) -> Tensor:
        """FLP's error signal under a softmax read-out: e = onehot(y) - softmax(y_hat)."""
        return target - F.softmax(output, dim=-1)

    def error_signal_vjp(self, output: Tensor, grad: Tensor) -> Tensor:
        """grad^T de/dy_hat = -p * (grad - <p, grad>) with p = softmax(y_hat)."""
        p = F.softmax(output, dim=-1)
        return -p * (grad - (p * grad).sum(-1, keepdim=True))


LOSSES = {"mse": MSELoss, "cross_entropy": CrossEntropyLoss}


def get_loss(name: str) -> Loss:
    try:
        return LOSSES[name]()
    except KeyError:
        raise ConfigError(f"unknown loss '{name}' (known: {', '.join(sorted(LOSSES))})") from None
