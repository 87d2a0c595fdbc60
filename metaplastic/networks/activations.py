"""Activation functions with their derivatives.

Rules that backpropagate by hand (SGD, and later FA/DFA) need phi'(a) from the
pre-activation; keeping both in one table avoids a second source of truth.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from metaplastic.errors import ConfigError


class Activation(NamedTuple):
    fn: Callable[[Tensor], Tensor]
    derivative: Callable[[Tensor], Tensor]


def _relu_derivative(a: Tensor) -> Tensor:
    return (a > 0).to(a.dtype)


def _tanh_derivative(a: Tensor) -> Tensor:
    return 1.0 - torch.tanh(a) ** 2


def _sigmoid_derivative(a: Tensor) -> Tensor:
    s = torch.sigmoid(a)
    return s * (1.0 - s)


ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation(torch.relu, _relu_derivative),
    "tanh": Activation(torch.tanh, _tanh_derivative),
    "sigmoid": Activation(torch.sigmoid, _sigmoid_derivative),
    "identity": Activation(lambda a: a, torch.ones_like),
}


def get_activation(name: str) -> Activation:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ConfigError(
            f"unknown activation '{name}' (known: {', '.join(sorted(ACTIVATIONS))})"
        ) from None
