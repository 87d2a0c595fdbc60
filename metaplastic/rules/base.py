"""The plasticity-rule interface.

A rule is a frozen dataclass of hyper-parameters, the meta-parameter groups it adds to the
network's ``init`` (class attribute ``groups``, in the order its optimisers run; each gets
``meta.lr.<group>``), and three pure functions:

- ``init(net, generator, dtype)`` -> the rule's meta-parameters (keys ``<group>.<name>``, one of
  its declared groups);
- ``prepare(net, meta)`` -> the rule's parameters in the form the inner loop uses (constraints
  such as sigmoid or softplus applied once per lifetime, not once per step);
- ``step(net, weights, prepared, trace, target, loss)`` -> new values of the plastic weights.

``weights`` holds every layer's current weights (plastic ones with a task dimension after the
first step); ``trace`` is the forward pass on the current minibatch.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

import torch
from torch import Tensor

from metaplastic.losses import Loss
from metaplastic.networks import MLP, Trace


class Rule(Protocol):
    name: str
    groups: ClassVar[tuple[str, ...]]

    def init(self, net: MLP, generator: torch.Generator, dtype: torch.dtype) -> dict[str, Tensor]: ...

    def prepare(self, net: MLP, meta: dict[str, Tensor]) -> dict[str, Tensor]: ...

    def step(
        self,
        net: MLP,
        weights: dict[str, Tensor],
        prepared: dict[str, Tensor],
        trace: Trace,
        target: Tensor,
        loss: Loss,
    ) -> dict[str, Tensor]: ...
