"""Inner-loop SGD on the plastic layers (the OML / MAML baseline): the ``bp`` backward path
(``metaplastic.rules.backward_paths``) plus a descent step.

Gradients come from that hand-written backward pass over the forward trace, so the inner step
stays a differentiable function of the weights: the meta-gradient through it is exact second
order. ``first_order`` detaches the inner gradient, which gives the first-order MAML/OML
meta-gradient (dW_T/dW_0 = I for the plastic layers).

    delta_L = dL/dy_hat * phi_L'(a_L);  delta_l = (delta_{l+1} W_{l+1}) * phi_l'(a_l)
    W_l <- W_l - lr_l * delta_l^T h_{l-1};   b_l <- b_l - lr_l * sum_b delta_l
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from metaplastic.losses import Loss
from metaplastic.networks import MLP, Trace
from metaplastic.params import prefixed, select
from metaplastic.rules.backward_paths import BackwardPathRule
from metaplastic.rules.step_sizes import check_lr, descend, init_step_sizes


@dataclass(frozen=True)
class SGDRule:
    name: str = "sgd"
    groups: ClassVar[tuple[str, ...]] = ("lr",)  # meta-parameter groups besides init
    lr_init: float = 0.003
    lr_scope: str = "layer"
    first_order: bool = False

    def __post_init__(self) -> None:
        check_lr(self.lr_init, self.lr_scope)

    def backprop(self) -> BackwardPathRule:
        """The ``bp`` path whose teaching signals this rule descends on."""
        return BackwardPathRule(name="bp", lr_init=self.lr_init, lr_scope=self.lr_scope)

    def init(self, net: MLP, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        return init_step_sizes(net, self.lr_init, self.lr_scope, dtype)

    def prepare(self, net: MLP, meta: dict[str, Tensor]) -> dict[str, Tensor]:
        return prefixed(select(meta, "lr"), "lr")

    def gradients(
        self, net: MLP, weights: dict[str, Tensor], trace: Trace, target: Tensor, loss: Loss
    ) -> dict[str, Tensor]:
        """Per-task gradients of the minibatch loss w.r.t. the plastic weights and biases."""
        return self.backprop().gradients(net, weights, {}, trace, target, loss)

    def step(
        self,
        net: MLP,
        weights: dict[str, Tensor],
        prepared: dict[str, Tensor],
        trace: Trace,
        target: Tensor,
        loss: Loss,
    ) -> dict[str, Tensor]:
        grads = self.gradients(net, weights, trace, target, loss)
        if self.first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        return descend(weights, grads, prepared, self.lr_scope)
