"""Inner-loop SGD on the plastic layers (the OML / MAML baseline), by explicit backprop.

Gradients come from a hand-written backward pass over the forward trace, so the inner step
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

from metaplastic.errors import ConfigError
from metaplastic.losses import Loss
from metaplastic.networks import MLP, Trace, bias_key, get_activation, weight_key
from metaplastic.params import prefixed, select


@dataclass(frozen=True)
class SGDRule:
    groups: ClassVar[tuple[str, ...]] = ("lr",)  # meta-parameter groups besides init
    name: str = "sgd"
    lr_init: float = 0.003
    lr_scope: str = "layer"
    first_order: bool = False

    def __post_init__(self) -> None:
        if self.lr_scope not in ("layer", "global"):
            raise ConfigError(f"rule.lr_scope must be 'layer' or 'global', got '{self.lr_scope}'")
        if self.lr_init < 0:
            raise ConfigError(f"rule.lr_init must be >= 0, got {self.lr_init}")

    def init(self, net: MLP, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        keys = ["global"] if self.lr_scope == "global" else [str(l) for l in net.plastic_layers]
        return prefixed({k: torch.tensor(self.lr_init, dtype=dtype) for k in keys}, "lr")

    def prepare(self, net: MLP, meta: dict[str, Tensor]) -> dict[str, Tensor]:
        return prefixed(select(meta, "lr"), "lr")

    def gradients(
        self, net: MLP, weights: dict[str, Tensor], trace: Trace, target: Tensor, loss: Loss
    ) -> dict[str, Tensor]:
        """Per-task gradients of the minibatch loss w.r.t. the plastic weights and biases."""
        plastic = net.plastic_layers
        lowest = min(plastic)
        last = len(net.layers) - 1
        delta = loss.output_grad(trace.output, target) * get_activation(net.layers[last].activation).derivative(
            trace.pre[last]
        )
        grads = {}
        for l in range(last, lowest - 1, -1):
            if net.layers[l].plastic:
                grads[weight_key(l)] = torch.matmul(delta.transpose(-1, -2), trace.inputs[l])
                grads[bias_key(l)] = delta.sum(-2)
            if l > lowest:
                phi_prime = get_activation(net.layers[l - 1].activation).derivative(trace.pre[l - 1])
                delta = torch.matmul(delta, weights[weight_key(l)]) * phi_prime
        return grads

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
        new = {}
        for key, g in grads.items():
            layer = key.split(".")[1]
            lr = prepared["lr.global"] if self.lr_scope == "global" else prepared[f"lr.{layer}"]
            if self.first_order:
                g = g.detach()
            new[key] = weights[key] - lr * g
        return new
