"""FLP: feedback and local plasticity (Lindsey & Litwin-Kumar 2020), Hebb and Oja forms.

For every plastic layer l, from one forward pass on the minibatch:

    s   = y - y_hat  (signal "error"; under cross-entropy onehot(y) - softmax(y_hat))
          or  y      (signal "target")
    f_l = phi_B(B_l s + c_l)                          feedback pathway (deeper if configured)
    t_l = beta_l f_l + (1 - beta_l) h_l               target activity
    Hebb: dW_l = m_l P_l * (t_l^T h_{l-1})
    Oja:  dW_l = m_l P_l * (t_l^T h_{l-1} - diag(sum_b t_l^2) W_l)
          (``oja_step: semi_implicit``: the decay at the new weights, W' = (W + P t^T h) / (1 + P s),
          stable for every P >= 0; see ``semi_implicit_oja``)

summed over the batch; m_l is the hidden-layer multiplier (1 for the output layer). With
``output_target: signal`` the output layer uses t = s directly (classification in the paper);
``bounded_signal`` uses t = tanh(s), which keeps Oja's decay P sum_b t^2 below P * batch: with the
raw error an output layer's explicit Oja step leaves its stable region (P sum_b e^2 > 2) once the
errors are large, and the lifetime overflows (docs/reproduction.md).
Plastic biases are synapses from a constant input of 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from metaplastic.errors import ConfigError
from metaplastic.losses import Loss
from metaplastic.networks import MLP, Trace, bias_key, get_activation, weight_key
from metaplastic.params import prefixed, select
from metaplastic.rules.coefficients import check_scope, coefficient_shapes, layer_coefficients
from metaplastic.rules.hebbian_update import (
    HebbOja,
    PlasticUpdate,
    activation_vjp,
    hebbian_bias_update,
    hebbian_lifetime,
    hebbian_update,
)
from metaplastic.rules.semi_implicit_oja import (
    SemiImplicitOja,
    semi_implicit_oja_bias_update,
    semi_implicit_oja_update,
)


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def _inverse_sigmoid(y: float) -> float:
    return math.log(y / (1.0 - y))


@dataclass(frozen=True)
class FLPRule:
    groups: ClassVar[tuple[str, ...]] = ("feedback", "coef", "beta")  # meta-parameter groups besides init
    name: str = "flp"
    form: str = "oja"
    oja_step: str = "explicit"
    scope: str = "synapse"
    signal: str = "error"
    output_target: str = "feedback"
    plastic_bias: bool = False
    feedback_hidden: tuple[int, ...] = ()
    feedback_activation: str = "relu"
    feedback_init_scale: float = 1.0
    beta_init: float = 0.5
    beta_sigmoid: bool = False
    coef_init: float = 0.0
    coef_nonneg: bool = False
    coef_max: float | None = None
    hidden_multiplier: float = 1.0

    def __post_init__(self) -> None:
        if self.form not in ("oja", "hebb"):
            raise ConfigError(f"rule.form must be 'oja' or 'hebb', got '{self.form}'")
        if self.signal not in ("error", "target"):
            raise ConfigError(f"rule.signal must be 'error' or 'target', got '{self.signal}'")
        if self.output_target not in ("feedback", "signal", "bounded_signal"):
            raise ConfigError(
                f"rule.output_target must be 'feedback', 'signal' or 'bounded_signal', got '{self.output_target}'"
            )
        if self.oja_step not in ("explicit", "semi_implicit"):
            raise ConfigError(f"rule.oja_step must be 'explicit' or 'semi_implicit', got '{self.oja_step}'")
        if self.semi_implicit:
            if self.form != "oja":
                raise ConfigError("rule.oja_step 'semi_implicit' applies to rule.form 'oja' only")
            if self.coef_max is None and not self.coef_nonneg:
                raise ConfigError("rule.oja_step 'semi_implicit' needs P >= 0 (1 + P s must stay positive): "
                                  "set rule.coef_max or rule.coef_nonneg")
        check_scope(self.scope)
        get_activation(self.feedback_activation)
        if any(w < 1 for w in self.feedback_hidden):
            raise ConfigError(f"rule.feedback_hidden must list widths >= 1, got {list(self.feedback_hidden)}")
        if not self.feedback_init_scale > 0:
            raise ConfigError(f"rule.feedback_init_scale must be > 0, got {self.feedback_init_scale}")
        if not self.hidden_multiplier > 0:
            raise ConfigError(f"rule.hidden_multiplier must be > 0, got {self.hidden_multiplier}")
        if self.beta_sigmoid and not 0.0 < self.beta_init < 1.0:
            raise ConfigError("rule.beta_init must lie in (0, 1) when rule.beta_sigmoid is true")
        if self.coef_nonneg and self.coef_init <= 0.0:
            raise ConfigError("rule.coef_init must be > 0 when rule.coef_nonneg is true (softplus)")
        if self.coef_max is not None:
            if self.coef_nonneg:
                raise ConfigError("rule.coef_max and rule.coef_nonneg are two parameterisations of P: choose one")
            if not 0.0 < self.coef_init < self.coef_max:
                raise ConfigError("rule.coef_init must lie in (0, rule.coef_max) when rule.coef_max is set")

    @property
    def semi_implicit(self) -> bool:
        return self.oja_step == "semi_implicit"

    def _coef_raw(self) -> float:
        """The stored value of P's initial coefficient under the chosen parameterisation."""
        if self.coef_max is not None:
            return _inverse_sigmoid(self.coef_init / self.coef_max)
        return _inverse_softplus(self.coef_init) if self.coef_nonneg else self.coef_init

    # ---- meta-parameters -------------------------------------------------------------
    def _uses_feedback(self, net: MLP, layer: int) -> bool:
        return not (layer == len(net.layers) - 1 and self.output_target != "feedback")

    def direct_target(self, signal: Tensor) -> Tensor:
        """The output layer's target when it learns from the signal itself: s or tanh(s)."""
        return torch.tanh(signal) if self.output_target == "bounded_signal" else signal

    def direct_target_vjp(self, signal: Tensor, grad: Tensor) -> Tensor:
        """grad^T d(direct_target)/ds."""
        if self.output_target == "bounded_signal":
            return grad * (1.0 - torch.tanh(signal) ** 2)
        return grad

    def init(self, net: MLP, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        n_signal = net.out_features
        feedback, coef, beta = {}, {}, {}
        coef_raw = self._coef_raw()
        beta_raw = _inverse_sigmoid(self.beta_init) if self.beta_sigmoid else self.beta_init
        for l in net.plastic_layers:
            spec = net.layers[l]
            shapes = coefficient_shapes(self.scope, l, spec.out_features, spec.in_features, self.plastic_bias)
            for key, shape in shapes.items():
                coef[key] = torch.full(shape, coef_raw, dtype=dtype)
            if not self._uses_feedback(net, l):
                continue
            widths = [n_signal, *self.feedback_hidden, spec.out_features]
            for k in range(len(widths) - 1):
                std = self.feedback_init_scale / math.sqrt(widths[k])
                w = torch.randn(widths[k + 1], widths[k], generator=generator, dtype=torch.float64)
                feedback[f"{l}.{k}.weight"] = (w * std).to(dtype)
                feedback[f"{l}.{k}.bias"] = torch.zeros(widths[k + 1], dtype=dtype)
            beta[f"{l}"] = torch.tensor(beta_raw, dtype=dtype)
        return {**prefixed(feedback, "feedback"), **prefixed(coef, "coef"), **prefixed(beta, "beta")}

    def prepare(self, net: MLP, meta: dict[str, Tensor]) -> dict[str, Tensor]:
        """Apply constraints and the hidden multiplier once per lifetime; coefficients come out
        per layer as ``coef.{l}.weight`` / ``coef.{l}.bias``, whatever their scope."""
        coef = select(meta, "coef")
        beta = select(meta, "beta")
        if self.coef_nonneg:
            coef = {k: F.softplus(v) for k, v in coef.items()}
        elif self.coef_max is not None:
            coef = {k: self.coef_max * torch.sigmoid(v) for k, v in coef.items()}
        if self.beta_sigmoid:
            beta = {k: torch.sigmoid(v) for k, v in beta.items()}
        prepared = {**prefixed(select(meta, "feedback"), "feedback"), **prefixed(beta, "beta")}
        last = len(net.layers) - 1
        for l in net.plastic_layers:
            p_w, p_b = layer_coefficients(coef, self.scope, l)
            if l != last and self.hidden_multiplier != 1.0:
                p_w, p_b = p_w * self.hidden_multiplier, p_b * self.hidden_multiplier
            prepared[f"coef.{l}.weight"], prepared[f"coef.{l}.bias"] = p_w, p_b
        return prepared

    # ---- inner step ------------------------------------------------------------------
    def feedback(self, prepared: dict[str, Tensor], layer: int, signal: Tensor) -> Tensor:
        """f_l = phi(B_l s + c_l), stacked when the pathway is deeper."""
        phi = get_activation(self.feedback_activation).fn
        f = signal
        for k in range(len(self.feedback_hidden) + 1):
            w = prepared[f"feedback.{layer}.{k}.weight"]
            b = prepared[f"feedback.{layer}.{k}.bias"]
            f = phi(torch.matmul(f, w.t()) + b)
        return f

    def target_activity(
        self, net: MLP, prepared: dict[str, Tensor], layer: int, trace: Trace, signal: Tensor
    ) -> Tensor:
        if not self._uses_feedback(net, layer):
            return self.direct_target(signal)
        beta = prepared[f"beta.{layer}"]
        return beta * self.feedback(prepared, layer, signal) + (1.0 - beta) * trace.post[layer]

    def supervision(self, trace: Trace, target: Tensor, loss: Loss) -> Tensor:
        """The signal s: the loss's error (y - y_hat, or onehot(y) - softmax(y_hat)) or y."""
        return loss.error_signal(trace.output, target) if self.signal == "error" else target

    def targets(
        self, net: MLP, prepared: dict[str, Tensor], trace: Trace, target: Tensor, loss: Loss
    ) -> dict[int, Tensor]:
        """Target activity t_l of every plastic layer for one forward pass."""
        signal = self.supervision(trace, target, loss)
        return {l: self.target_activity(net, prepared, l, trace, signal) for l in net.plastic_layers}

    def step(
        self,
        net: MLP,
        weights: dict[str, Tensor],
        prepared: dict[str, Tensor],
        trace: Trace,
        target: Tensor,
        loss: Loss,
    ) -> dict[str, Tensor]:
        oja = self.form == "oja"
        new = {}
        for l, t in self.targets(net, prepared, trace, target, loss).items():
            w, p, h = weights[weight_key(l)], prepared[f"coef.{l}.weight"], trace.inputs[l]
            new[weight_key(l)] = (semi_implicit_oja_update(w, p, t, h) if self.semi_implicit
                                  else hebbian_update(w, p, t, h, oja))
            if self.plastic_bias:
                b, p_b = weights[bias_key(l)], prepared[f"coef.{l}.bias"]
                new[bias_key(l)] = (semi_implicit_oja_bias_update(b, p_b, t) if self.semi_implicit
                                    else hebbian_bias_update(b, p_b, t, oja))
        return new

    # ---- the whole lifetime (fast path of the meta-gradient) ---------------------------
    def fused_lifetime(
        self, net: MLP, meta: dict[str, Tensor], x: Tensor, y: Tensor, loss: Loss, segment: int = 0, start: int = 0,
        first_order: bool = False, kernels: str = "auto",
    ) -> dict[str, Tensor]:
        """Weights at the end of a lifetime, the same values as iterating ``step``, as one
        autograd node with a hand-written backward pass (see ``hebbian_lifetime``): much less
        time and memory for the meta-gradient. ``segment`` > 0 checkpoints every ``segment``
        steps; the meta-gradient goes through steps ``start`` onwards (truncation);
        ``first_order`` takes every update at detached weights; ``kernels`` (``auto``, ``native``,
        ``torch``: ``meta.unroll.kernels``) chooses the weight-sized passes."""
        return hebbian_lifetime(
            net, FLPTargets(self, net, loss), select(meta, "init"), self.prepare(net, meta), x, y,
            self.form == "oja", self.plastic_bias, segment=segment, start=start, first_order=first_order,
            kernels=kernels, update=self.update_algebra(),
        )

    def update_algebra(self) -> PlasticUpdate:
        """The fused lifetime's weight-sized algebra for this rule's form and step."""
        return SemiImplicitOja() if self.semi_implicit else HebbOja(self.form == "oja")


@dataclass(frozen=True)
class FLPTargets:
    """FLP's target activities for ``hebbian_lifetime`` (see ``TargetModel``)."""

    rule: FLPRule
    net: MLP
    loss: Loss

    def bind(self, prepared: dict[str, Tensor], wanted: set[str]) -> _BoundFLP:
        return _BoundFLP(self.rule, self.net, self.loss, prepared, wanted)


class _BoundFLP:
    """FLP's targets and their backward pass by hand, for one pass over a lifetime.

    With one-layer feedback pathways (the default) the feedback of all plastic layers is
    computed at once: one matmul with the stacked B_l, one activation, one beta mixing, on
    tensors (tasks, batch, sum of widths); gradients of the stacked parameters are accumulated
    over the lifetime and split per layer at the end. Deeper pathways go layer by layer.
    """

    def __init__(self, rule: FLPRule, net: MLP, loss: Loss, prepared: dict[str, Tensor], wanted: set[str]):
        self.rule, self.net, self.loss, self.prepared, self.wanted = rule, net, loss, prepared, wanted
        self.act = rule.feedback_activation
        self.phi = get_activation(self.act).fn
        self.through_signal = rule.signal == "error"
        self.fed = [l for l in net.plastic_layers if rule._uses_feedback(net, l)]
        self.direct = [l for l in net.plastic_layers if not rule._uses_feedback(net, l)]
        self.stacked = not rule.feedback_hidden and len(self.fed) > 1
        self.acc: dict[str, Tensor] = {}
        self.last: tuple = ()
        # which stacked gradients the backward pass accumulates (fixed for the lifetime)
        self.need_beta = any(f"beta.{l}" in wanted for l in self.fed)
        self.need_weight = any(f"feedback.{l}.0.weight" in wanted for l in self.fed)
        self.need_bias = any(f"feedback.{l}.0.bias" in wanted for l in self.fed)
        if self.stacked:
            widths = [net.layers[l].out_features for l in self.fed]
            offsets = [0]
            for w in widths:
                offsets.append(offsets[-1] + w)
            self.bounds = [(offsets[i], offsets[i + 1]) for i in range(len(widths))]
            self.weight = torch.cat([prepared[f"feedback.{l}.0.weight"] for l in self.fed])
            self.bias = torch.cat([prepared[f"feedback.{l}.0.bias"] for l in self.fed])
            self.beta = torch.cat([prepared[f"beta.{l}"].reshape(1).expand(w) for l, w in zip(self.fed, widths)])
            self.one_minus_beta = torch.cat(
                [(1.0 - prepared[f"beta.{l}"]).reshape(1).expand(w) for l, w in zip(self.fed, widths)]
            )

    def _accumulate(self, key: str, g: Tensor) -> None:
        self.acc[key] = self.acc[key] + g if key in self.acc else g

    def targets(self, trace: Trace, target: Tensor) -> dict[int, Tensor]:
        if not self.stacked:
            return self.rule.targets(self.net, self.prepared, trace, target, self.loss)
        signal = self.rule.supervision(trace, target, self.loss)
        z = torch.matmul(signal, self.weight.t()) + self.bias
        f = self.phi(z)
        h = torch.cat([trace.post[l] for l in self.fed], -1)
        t = self.beta * f + self.one_minus_beta * h
        self.last = (signal, z, f, h)
        out = {l: t[..., a:b] for l, (a, b) in zip(self.fed, self.bounds)}
        for l in self.direct:
            out[l] = self.rule.direct_target(signal)
        return out

    def backward(self, trace: Trace, target: Tensor, grad_targets: dict[int, Tensor]) -> dict[int, Tensor]:
        if not self.stacked:
            return self._backward_by_layer(trace, target, grad_targets)
        signal, z, f, h = self.last
        g = torch.cat([grad_targets[l] for l in self.fed], -1)
        if self.need_beta:
            self._accumulate("beta", (g * (f - h)).sum((0, 1)))
        g_post = self.one_minus_beta * g
        grad_post = {l: g_post[..., a:b] for l, (a, b) in zip(self.fed, self.bounds)}
        g_z = activation_vjp(self.act, self.beta * g, z, f)
        g_z2 = g_z.reshape(-1, g_z.shape[-1])
        if self.need_weight:
            self._accumulate("weight", g_z2.t() @ signal.reshape(-1, signal.shape[-1]))
        if self.need_bias:
            self._accumulate("bias", g_z2.sum(0))
        if self.through_signal:
            g_signal = torch.matmul(g_z, self.weight)
            for l in self.direct:
                g_signal = g_signal + self.rule.direct_target_vjp(signal, grad_targets[l])
            out = len(self.net.layers) - 1
            g_out = self.loss.error_signal_vjp(trace.output, g_signal)
            grad_post[out] = grad_post[out] + g_out if out in grad_post else g_out
        return grad_post

    def _backward_by_layer(self, trace: Trace, target: Tensor, grad_targets: dict[int, Tensor]) -> dict[int, Tensor]:
        prepared, wanted = self.prepared, self.wanted
        depth = len(self.rule.feedback_hidden) + 1
        signal = self.rule.supervision(trace, target, self.loss)
        grad_post: dict[int, Tensor] = {}
        grad_signal: Tensor | None = None
        for l in self.direct:
            g_direct = self.rule.direct_target_vjp(signal, grad_targets[l])
            grad_signal = g_direct if grad_signal is None else grad_signal + g_direct
        for l in self.fed:
            grad_t = grad_targets[l]
            beta = prepared[f"beta.{l}"]
            f, f_in, z_pre = signal, [], []
            for k in range(depth):
                f_in.append(f)
                z = torch.matmul(f, prepared[f"feedback.{l}.{k}.weight"].t()) + prepared[f"feedback.{l}.{k}.bias"]
                z_pre.append(z)
                f = self.phi(z)
            if f"beta.{l}" in wanted:
                self._accumulate(f"beta.{l}", (grad_t * (f - trace.post[l])).sum())
            grad_post[l] = (1.0 - beta) * grad_t
            g = beta * grad_t
            for k in range(depth - 1, -1, -1):
                wk, bk = f"feedback.{l}.{k}.weight", f"feedback.{l}.{k}.bias"
                g_z = activation_vjp(self.act, g, z_pre[k])
                g_z2 = g_z.reshape(-1, g_z.shape[-1])
                if wk in wanted:
                    self._accumulate(wk, g_z2.t() @ f_in[k].reshape(-1, f_in[k].shape[-1]))
                if bk in wanted:
                    self._accumulate(bk, g_z2.sum(0))
                if k or self.through_signal:
                    g = torch.matmul(g_z, prepared[wk])
            if self.through_signal:
                grad_signal = g if grad_signal is None else grad_signal + g
        if self.through_signal and grad_signal is not None:
            out = len(self.net.layers) - 1
            g_out = self.loss.error_signal_vjp(trace.output, grad_signal)
            grad_post[out] = grad_post[out] + g_out if out in grad_post else g_out
        return grad_post

    def grads(self) -> dict[str, Tensor]:
        if not self.stacked:
            return dict(self.acc)
        grads = {}
        for l, (a, b) in zip(self.fed, self.bounds):
            for key, name in ((f"beta.{l}", "beta"), (f"feedback.{l}.0.weight", "weight"),
                              (f"feedback.{l}.0.bias", "bias")):
                if key in self.wanted and name in self.acc:
                    g = self.acc[name][a:b]
                    grads[key] = g.sum() if name == "beta" else g
        return grads
