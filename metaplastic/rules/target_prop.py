"""Difference target propagation (DTP) and simplified DTP (SDTP), Lee et al. 2015 and
Bartunov et al. 2018, as an inner-loop rule.

Every layer l >= 1 (SDTP) or 1 <= l < L (DTP) has an approximate inverse g_l(h_l) = psi_{l-1}(V_l h_l + c_l) ~ h_{l-1}
(psi = the activation of layer l - 1), trained each step on noise-corrupted inputs
h~ = h_{l-1} + sigma * eps:

    DTP:  || h~      - g_l(f_l(h~)) ||^2        SDTP: || h_{l-1} - g_l(f_l(h~)) ||^2

Targets, top down (L = output layer; y_hat its prediction, softmax for cross-entropy):

    DTP:  t_{L-1} = h_{L-1} - alpha * dL/dh_{L-1}      (per-example gradient)
    SDTP: t_{L-1} = h_{L-1} - g_L(y_hat) + g_L(y)        (no gradient: y is the label)
    both: t_{l-1} = g_l(t_l) + h_{l-1} - g_l(h_l)        (difference correction)

A hidden layer descends || f_l(h_{l-1}) - t_l ||^2 (batch mean) with h_{l-1} and t_l held
constant; the output layer uses the delta rule. Schedules: ``parallel`` trains inverses and
forward weights every step; ``alternating`` spends ``alternate_every`` steps on the inverses,
then as many on the forward weights, and so on.

Meta-parameters: initial inverses ``inverse.{l}.weight/bias`` (group ``inverse``), step sizes
``lr.{l}`` and ``lr.inverse`` (group ``lr``), and ``tp.sigma``, ``tp.alpha`` (DTP only; group ``tp``);
each group is fixed when its ``meta.lr`` entry is null. The inverses being trained travel in
the ``weights`` dict under ``inverse.*``, the step count under ``state.step``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from metaplastic.errors import ConfigError
from metaplastic.losses import CrossEntropyLoss, Loss
from metaplastic.networks import MLP, Trace, bias_key, get_activation, weight_key
from metaplastic.params import prefixed, select
from metaplastic.rules.backward_paths import output_delta
from metaplastic.rules.inner_state import next_step, step_index, step_normal
from metaplastic.rules.step_sizes import check_lr, descend, init_step_sizes
from metaplastic.rules.validation import check_meta_shapes

SCHEDULES = ("parallel", "alternating")


@dataclass(frozen=True)
class TargetPropRule:
    groups: ClassVar[tuple[str, ...]] = ("lr", "inverse", "tp")  # meta-parameter groups besides init
    name: str = "dtp"
    lr_init: float = 0.01
    lr_scope: str = "layer"
    inverse_lr_init: float = 0.01
    alpha_init: float = 0.1
    sigma_init: float = 0.1
    schedule: str = "parallel"
    alternate_every: int = 1
    noise_seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in ("dtp", "sdtp"):
            raise ConfigError(f"rule.name must be 'dtp' or 'sdtp' for target propagation, got '{self.name}'")
        check_lr(self.lr_init, self.lr_scope)
        if self.inverse_lr_init < 0 or self.sigma_init < 0:
            raise ConfigError("rule.inverse_lr_init and rule.sigma_init must be >= 0")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"rule.schedule must be one of {', '.join(SCHEDULES)}, got '{self.schedule}'")
        if self.alternate_every < 1:
            raise ConfigError(f"rule.alternate_every must be >= 1, got {self.alternate_every}")

    def label(self) -> str:
        return f"{self.name.upper()} ({self.schedule})"

    def init(self, net: MLP, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        if len(net.layers) < 2:
            raise ConfigError("target propagation needs at least one hidden layer")
        inverse = {}
        for l in self._inverted_layers(net):
            spec = net.layers[l]
            bound = 1.0 / math.sqrt(spec.out_features)
            u = torch.rand(spec.in_features, spec.out_features, generator=generator, dtype=torch.float64)
            inverse[f"{l}.weight"] = ((2 * u - 1) * bound).to(dtype)
            inverse[f"{l}.bias"] = torch.zeros(spec.in_features, dtype=dtype)
        lr = init_step_sizes(net, self.lr_init, self.lr_scope, dtype)
        lr["lr.inverse"] = torch.tensor(self.inverse_lr_init, dtype=dtype)
        tp = {"sigma": torch.tensor(self.sigma_init, dtype=dtype)}
        if self.name == "dtp":  # SDTP takes no gradient step, so it has no alpha
            tp["alpha"] = torch.tensor(self.alpha_init, dtype=dtype)
        return {**prefixed(inverse, "inverse"), **lr, **prefixed(tp, "tp")}

    def prepare(self, net: MLP, meta: dict[str, Tensor]) -> dict[str, Tensor]:
        check_meta_shapes(self, net, meta)
        return {**prefixed(select(meta, "inverse"), "inverse"), **prefixed(select(meta, "lr"), "lr"),
                **prefixed(select(meta, "tp"), "tp")}

    # ---- pieces ---------------------------------------------------------------------------
    def _inverted_layers(self, net: MLP) -> range:
        """Layers with an inverse: DTP reaches the penultimate layer by a gradient step, so it
        has no use for an inverse of the output layer; SDTP has."""
        return range(1, len(net.layers) if self.name == "sdtp" else len(net.layers) - 1)

    def _phases(self, step: int) -> tuple[bool, bool]:
        """(train the inverses, train the forward weights) at this step."""
        if self.schedule == "parallel":
            return True, True
        inverse_phase = (step // self.alternate_every) % 2 == 0
        return inverse_phase, not inverse_phase

    @staticmethod
    def _inverse(net: MLP, inv: dict[str, Tensor], layer: int, h: Tensor) -> tuple[Tensor, Tensor]:
        """(g_l(h), its pre-activation)."""
        v, c = inv[f"inverse.{layer}.weight"], inv[f"inverse.{layer}.bias"]
        z = torch.matmul(h, v.transpose(-1, -2)) + c.unsqueeze(-2)
        return get_activation(net.layers[layer - 1].activation).fn(z), z

    @staticmethod
    def _prediction(output: Tensor, loss: Loss) -> Tensor:
        """What the label is compared with: probabilities for cross-entropy, else the output."""
        return torch.softmax(output, -1) if isinstance(loss, CrossEntropyLoss) else output

    @staticmethod
    def _layer(net: MLP, weights: dict[str, Tensor], layer: int, h: Tensor) -> Tensor:
        w, b = weights[weight_key(layer)], weights[bias_key(layer)]
        a = torch.matmul(h, w.transpose(-1, -2)) + b.unsqueeze(-2)
        return get_activation(net.layers[layer].activation).fn(a)

    def targets(
        self, net: MLP, weights: dict[str, Tensor], inv: dict[str, Tensor], prepared: dict[str, Tensor],
        trace: Trace, target: Tensor, loss: Loss,
    ) -> dict[int, Tensor]:
        """Target activity t_l of every hidden layer l (its post-activation)."""
        last = len(net.layers) - 1
        h = trace.post
        if self.name == "dtp":
            per_example = torch.matmul(output_delta(net, trace, target, loss), weights[weight_key(last)])
            t = {last - 1: h[last - 1] - prepared["tp.alpha"] * per_example * trace.output.shape[-2]}
        else:
            pred = self._prediction(trace.output, loss)
            g_pred, g_label = self._inverse(net, inv, last, pred)[0], self._inverse(net, inv, last, target)[0]
            t = {last - 1: h[last - 1] - g_pred + g_label}
        for l in range(last - 1, 0, -1):
            t[l - 1] = self._inverse(net, inv, l, t[l])[0] + h[l - 1] - self._inverse(net, inv, l, h[l])[0]
        return t

    def inverse_gradients(
        self, net: MLP, weights: dict[str, Tensor], inv: dict[str, Tensor], prepared: dict[str, Tensor],
        trace: Trace, loss: Loss, step: int,
    ) -> dict[str, Tensor]:
        """Gradients of the batch-mean reconstruction losses w.r.t. every inverse."""
        grads = {}
        for l in self._inverted_layers(net):
            clean = trace.inputs[l]
            noise = step_normal(self.noise_seed * 1009 + l, step, tuple(clean.shape), clean)
            noisy = clean + prepared["tp.sigma"] * noise
            f = self._layer(net, weights, l, noisy)
            if l == len(net.layers) - 1:  # SDTP inverts the prediction, where the label lives
                f = self._prediction(f, loss)
            r, z = self._inverse(net, inv, l, f)
            aim = noisy if self.name == "dtp" else clean
            g_z = 2.0 * (r - aim) / clean.shape[-2] * get_activation(net.layers[l - 1].activation).derivative(z)
            grads[f"inverse.{l}.weight"] = torch.matmul(g_z.transpose(-1, -2), f)
            grads[f"inverse.{l}.bias"] = g_z.sum(-2)
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
        step = step_index(weights)
        train_inverse, train_forward = self._phases(step)
        inv = {k: weights.get(k, v) for k, v in prepared.items() if k.startswith("inverse.")}
        new = next_step(weights, trace.output.device)
        if train_forward:
            last = len(net.layers) - 1
            t = self.targets(net, weights, inv, prepared, trace, target, loss)
            deltas = {last: output_delta(net, trace, target, loss)}
            for l in range(last):
                phi_prime = get_activation(net.layers[l].activation).derivative(trace.pre[l])
                deltas[l] = (trace.post[l] - t[l]) / trace.output.shape[-2] * phi_prime
            grads = {}
            for l in net.plastic_layers:
                grads[weight_key(l)] = torch.matmul(deltas[l].transpose(-1, -2), trace.inputs[l])
                grads[bias_key(l)] = deltas[l].sum(-2)
            new.update(descend(weights, grads, prepared, self.lr_scope))
        if train_inverse:
            grads = self.inverse_gradients(net, weights, inv, prepared, trace, loss, step)
            lr = prepared["lr.inverse"]
            new.update({k: inv[k] - lr * g for k, g in grads.items()})
        elif step == 0:
            new.update(inv)
        return new
