"""Backprop, feedback alignment, direct feedback alignment and sign-symmetry as ONE rule.

All of them run the same backward sweep and differ only in the matrix that carries the
teaching signal down (Lillicrap 2016; Nøkland 2016; Liao, Leibo & Poggio 2016; Xiao 2018):

    delta_L = dL/dy_hat * phi_L'(a_L)
    delta_l = (delta_{l+1} M_{l+1}) * phi_l'(a_l)        M = W (bp), B (fa),
                                                          s * sign(W) (usf), |R| * sign(W) (frsf, brsf)
    delta_l = (delta_L D_l) * phi_l'(a_l)                 (dfa: straight from the output error)
    W_l <- W_l - lr_l * delta_l^T h_{l-1}   (or - lr_l * sign(.) with Batch Manhattan)

The rule's ``name`` is the feedback path (``bp``, ``fa``, ``dfa``, ``usf``, ``frsf``, ``brsf``).
Feedback matrices B, D, R and the uSF / brSF scales s are meta-parameters of group
``feedback``: fixed as in the papers when ``meta.lr.feedback`` is null, meta-learned otherwise.
brSF redraws its magnitudes every step (seeded by ``noise_seed`` and the step index).
``last_hidden_bp`` gives the last hidden layer the true backprop signal (W instead of B / D).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from metaplastic.errors import ConfigError
from metaplastic.losses import Loss
from metaplastic.networks import MLP, Trace, bias_key, get_activation, weight_key
from metaplastic.params import prefixed, select
from metaplastic.rules.inner_state import next_step, step_index, step_normal
from metaplastic.rules.step_sizes import check_lr, descend, init_step_sizes
from metaplastic.rules.validation import check_meta_shapes

PATHS = ("bp", "fa", "dfa", "usf", "frsf", "brsf")
LABELS = {"bp": "BP", "fa": "FA", "dfa": "DFA", "usf": "uSF", "frsf": "frSF", "brsf": "brSF"}


def _uniform(shape: tuple[int, ...], bound: float, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    return ((2 * u - 1) * bound).to(dtype)


def output_delta(net: MLP, trace: Trace, target: Tensor, loss: Loss) -> Tensor:
    """dL/da_L of the output layer (per task, batch-mean loss)."""
    last = len(net.layers) - 1
    phi_prime = get_activation(net.layers[last].activation).derivative(trace.pre[last])
    return loss.output_grad(trace.output, target) * phi_prime


def layer_gradients(net: MLP, deltas: dict[int, Tensor], trace: Trace) -> dict[str, Tensor]:
    """delta_l^T h_{l-1} and sum_b delta_l for every plastic layer."""
    grads = {}
    for l in net.plastic_layers:
        grads[weight_key(l)] = torch.matmul(deltas[l].transpose(-1, -2), trace.inputs[l])
        grads[bias_key(l)] = deltas[l].sum(-2)
    return grads


@dataclass(frozen=True)
class BackwardPathRule:
    groups: ClassVar[tuple[str, ...]] = ("feedback", "lr")  # meta-parameter groups besides init
    name: str = "fa"
    lr_init: float = 0.01
    lr_scope: str = "layer"
    last_hidden_bp: bool = False
    batch_manhattan: bool = False
    feedback_init_scale: float = 1.0
    noise_seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in PATHS:
            raise ConfigError(f"unknown backward path '{self.name}' (known: {', '.join(PATHS)})")
        check_lr(self.lr_init, self.lr_scope)
        if self.feedback_init_scale <= 0:
            raise ConfigError(f"rule.feedback_init_scale must be > 0, got {self.feedback_init_scale}")

    def label(self) -> str:
        text = LABELS[self.name]
        if self.last_hidden_bp and self.name != "bp":
            text += " + last-hidden BP"
        return text + (" + BM" if self.batch_manhattan else "")

    # ---- which layers receive which feedback ----------------------------------------------
    def _true_path(self, net: MLP, layer: int) -> bool:
        """Does the signal into ``layer - 1`` (dfa: into ``layer``) use the forward weights?"""
        last = len(net.layers) - 1
        if self.name == "bp":
            return True
        if self.name == "dfa":
            return self.last_hidden_bp and layer == last - 1
        return self.last_hidden_bp and layer == last

    def _feedback_layers(self, net: MLP) -> list[int]:
        """fa/sign: layers l that send a signal to l - 1; dfa: hidden layers that receive one."""
        last = len(net.layers) - 1
        if not net.plastic_layers or self.name == "bp":
            return []
        lowest = min(net.plastic_layers)
        if self.name == "dfa":
            return [l for l in net.plastic_layers if l != last and not self._true_path(net, l)]
        return [l for l in range(lowest + 1, last + 1) if not self._true_path(net, l)]

    def init(self, net: MLP, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        feedback = {}
        for l in self._feedback_layers(net):
            spec = net.layers[l]
            if self.name == "dfa":
                shape, fan_in = (net.out_features, spec.out_features), spec.out_features
            else:
                shape, fan_in = (spec.out_features, spec.in_features), spec.in_features
            bound = self.feedback_init_scale / math.sqrt(fan_in)
            if self.name in ("fa", "dfa", "frsf"):
                feedback[f"{l}.weight"] = _uniform(shape, bound, generator, dtype)
            else:
                feedback[f"{l}.scale"] = torch.tensor(bound, dtype=dtype)
        return {**prefixed(feedback, "feedback"), **init_step_sizes(net, self.lr_init, self.lr_scope, dtype)}

    def prepare(self, net: MLP, meta: dict[str, Tensor]) -> dict[str, Tensor]:
        check_meta_shapes(self, net, meta)
        return {**prefixed(select(meta, "feedback"), "feedback"), **prefixed(select(meta, "lr"), "lr")}

    # ---- inner step -----------------------------------------------------------------------
    def backward_matrix(self, layer: int, weights: dict[str, Tensor], prepared: dict[str, Tensor], step: int) -> Tensor:
        """M_layer, which carries delta_layer down to layer - 1 (fa and the sign family)."""
        w = weights[weight_key(layer)]
        if self.name == "fa":
            return prepared[f"feedback.{layer}.weight"]
        if self.name == "usf":
            return prepared[f"feedback.{layer}.scale"] * torch.sign(w)
        if self.name == "frsf":
            return prepared[f"feedback.{layer}.weight"].abs() * torch.sign(w)
        magnitude = step_normal(self.noise_seed * 1009 + layer, step, tuple(w.shape[-2:]), w).abs()
        return prepared[f"feedback.{layer}.scale"] * magnitude * torch.sign(w)

    def deltas(
        self, net: MLP, weights: dict[str, Tensor], prepared: dict[str, Tensor], trace: Trace, target: Tensor,
        loss: Loss, step: int = 0,
    ) -> dict[int, Tensor]:
        """Teaching signals delta_l (dL/da_l for bp) of every layer down to the lowest plastic one."""
        if self.name != "dfa":
            return dict(self._chain(net, weights, prepared, trace, target, loss, step))
        last = len(net.layers) - 1
        deltas = {last: output_delta(net, trace, target, loss)}
        for l in range(last - 1, min(net.plastic_layers) - 1, -1):
            phi_prime = get_activation(net.layers[l].activation).derivative(trace.pre[l])
            if self._true_path(net, l):
                g = torch.matmul(deltas[last], weights[weight_key(last)])
            elif not net.layers[l].plastic:
                continue  # DFA needs no signal in a frozen layer
            else:
                g = torch.matmul(deltas[last], prepared[f"feedback.{l}.weight"])
            deltas[l] = g * phi_prime
        return deltas

    def _chain(
        self, net: MLP, weights: dict[str, Tensor], prepared: dict[str, Tensor], trace: Trace, target: Tensor,
        loss: Loss, step: int,
    ) -> Iterator[tuple[int, Tensor]]:
        """(l, delta_l) from the output down, each carried to l - 1 by M_l (W_l for bp) only
        after the caller has used it (the chain paths: all but dfa)."""
        last, lowest = len(net.layers) - 1, min(net.plastic_layers)
        delta = output_delta(net, trace, target, loss)
        for l in range(last, lowest - 1, -1):
            yield l, delta
            if l > lowest:
                phi_prime = get_activation(net.layers[l - 1].activation).derivative(trace.pre[l - 1])
                true = self._true_path(net, l)
                m = weights[weight_key(l)] if true else self.backward_matrix(l, weights, prepared, step)
                delta = torch.matmul(delta, m) * phi_prime

    def gradients(
        self, net: MLP, weights: dict[str, Tensor], prepared: dict[str, Tensor], trace: Trace, target: Tensor,
        loss: Loss, step: int = 0,
    ) -> dict[str, Tensor]:
        """delta_l^T h_{l-1} and sum_b delta_l of every plastic layer.

        On the chain paths each layer's gradient is taken before its signal goes further down,
        in one sweep: inner-loop SGD's backward pass (``SGDRule`` is this sweep on the bp path),
        whose order of operations the meta-gradient's float rounding follows."""
        if self.name == "dfa":
            return layer_gradients(net, self.deltas(net, weights, prepared, trace, target, loss, step), trace)
        grads = {}
        for l, delta in self._chain(net, weights, prepared, trace, target, loss, step):
            if net.layers[l].plastic:
                grads[weight_key(l)] = torch.matmul(delta.transpose(-1, -2), trace.inputs[l])
                grads[bias_key(l)] = delta.sum(-2)
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
        if not net.plastic_layers:
            return {}
        step = step_index(weights)
        grads = self.gradients(net, weights, prepared, trace, target, loss, step)
        new = descend(weights, grads, prepared, self.lr_scope, self.batch_manhattan)
        if self.name == "brsf":
            new.update(next_step(weights, trace.output.device))
        return new
