"""FLP: feedback and local plasticity (Lindsey & Litwin-Kumar 2020), Hebb and Oja forms.

For every plastic layer l, from one forward pass on the minibatch:

    s   = y - y_hat  (signal "error")   or   y  (signal "target")
    f_l = phi_B(B_l s + c_l)                          feedback pathway (deeper if configured)
    t_l = beta_l f_l + (1 - beta_l) h_l               target activity
    Hebb: dW_l = m_l P_l * (t_l^T h_{l-1})
    Oja:  dW_l = m_l P_l * (t_l^T h_{l-1} - diag(sum_b t_l^2) W_l)

summed over the batch; m_l is the hidden-layer multiplier (1 for the output layer). With
``output_target: signal`` the output layer uses t = s directly (classification in the paper).
Plastic biases are synapses from a constant input of 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from metaplastic.errors import ConfigError
from metaplastic.losses import Loss
from metaplastic.networks import MLP, Trace, bias_key, get_activation, weight_key
from metaplastic.params import prefixed, select
from metaplastic.rules.coefficients import check_scope, coefficient_shapes, layer_coefficients
from metaplastic.rules.hebbian_update import activation_vjp, hebbian_bias_update, hebbian_lifetime, hebbian_update


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def _inverse_sigmoid(y: float) -> float:
    return math.log(y / (1.0 - y))


@dataclass(frozen=True)
class FLPRule:
    name: str = "flp"
    form: str = "oja"
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
    hidden_multiplier: float = 1.0

    def __post_init__(self) -> None:
        if self.form not in ("oja", "hebb"):
            raise ConfigError(f"rule.form must be 'oja' or 'hebb', got '{self.form}'")
        if self.signal not in ("error", "target"):
            raise ConfigError(f"rule.signal must be 'error' or 'target', got '{self.signal}'")
        if self.output_target not in ("feedback", "signal"):
            raise ConfigError(f"rule.output_target must be 'feedback' or 'signal', got '{self.output_target}'")
        check_scope(self.scope)
        get_activation(self.feedback_activation)
        if self.beta_sigmoid and not 0.0 < self.beta_init < 1.0:
            raise ConfigError("rule.beta_init must lie in (0, 1) when rule.beta_sigmoid is true")
        if self.coef_nonneg and self.coef_init <= 0.0:
            raise ConfigError("rule.coef_init must be > 0 when rule.coef_nonneg is true (softplus)")

    # ---- meta-parameters -------------------------------------------------------------
    def _uses_feedback(self, net: MLP, layer: int) -> bool:
        return not (layer == len(net.layers) - 1 and self.output_target == "signal")

    def init(self, net: MLP, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        n_signal = net.out_features
        feedback, coef, beta = {}, {}, {}
        coef_raw = _inverse_softplus(self.coef_init) if self.coef_nonneg else self.coef_init
        beta_raw = _inverse_sigmoid(self.beta_init) if self.beta_sigmoid else self.beta_init
        for l in net.plastic_layers:
            spec = net.layers[l]
            for key, shape in coefficient_shapes(self.scope, l, spec.out_features, spec.in_features, self.plastic_bias).items():
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

    def target_activity(self, net: MLP, prepared: dict[str, Tensor], layer: int, trace: Trace, signal: Tensor) -> Tensor:
        if not self._uses_feedback(net, layer):
            return signal
        beta = prepared[f"beta.{layer}"]
        return beta * self.feedback(prepared, layer, signal) + (1.0 - beta) * trace.post[layer]

    def targets(self, net: MLP, prepared: dict[str, Tensor], trace: Trace, target: Tensor) -> dict[int, Tensor]:
        """Target activity t_l of every plastic layer for one forward pass."""
        signal = target - trace.output if self.signal == "error" else target
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
        for l, t in self.targets(net, prepared, trace, target).items():
            w = weights[weight_key(l)]
            new[weight_key(l)] = hebbian_update(w, prepared[f"coef.{l}.weight"], t, trace.inputs[l], oja)
            if self.plastic_bias:
                b = weights[bias_key(l)]
                new[bias_key(l)] = hebbian_bias_update(b, prepared[f"coef.{l}.bias"], t, oja)
        return new

    # ---- the whole lifetime (fast path of the meta-gradient) ---------------------------
    def targets_vjp(
        self,
        net: MLP,
        prepared: dict[str, Tensor],
        trace: Trace,
        target: Tensor,
        grad_targets: dict[int, Tensor],
        wanted: set[str],
    ) -> tuple[dict[int, Tensor], dict[str, Tensor]]:
        """Backward of ``targets`` by hand. Given dL/dt_l, returns dL/d(post-activation) per layer
        (the output is ``trace.post[-1]``) and the gradients of the prepared feedback and beta
        parameters named in ``wanted``."""
        act = self.feedback_activation
        phi = get_activation(act).fn
        depth = len(self.feedback_hidden) + 1
        signal = target - trace.output if self.signal == "error" else target
        through_signal = self.signal == "error"
        grad_post: dict[int, Tensor] = {}
        grads: dict[str, Tensor] = {}
        grad_signal: Tensor | None = None
        for l, grad_t in grad_targets.items():
            if not self._uses_feedback(net, l):
                grad_signal = grad_t if grad_signal is None else grad_signal + grad_t
                continue
            beta = prepared[f"beta.{l}"]
            f, f_in, z_pre = signal, [], []
            for k in range(depth):
                f_in.append(f)
                z = torch.matmul(f, prepared[f"feedback.{l}.{k}.weight"].t()) + prepared[f"feedback.{l}.{k}.bias"]
                z_pre.append(z)
                f = phi(z)
            if f"beta.{l}" in wanted:
                grads[f"beta.{l}"] = (grad_t * (f - trace.post[l])).sum()
            grad_post[l] = (1.0 - beta) * grad_t
            g = beta * grad_t
            for k in range(depth - 1, -1, -1):
                wk, bk = f"feedback.{l}.{k}.weight", f"feedback.{l}.{k}.bias"
                g_z = activation_vjp(act, g, z_pre[k])
                if wk in wanted:
                    grads[wk] = g_z.reshape(-1, g_z.shape[-1]).t() @ f_in[k].reshape(-1, f_in[k].shape[-1])
                if bk in wanted:
                    grads[bk] = g_z.reshape(-1, g_z.shape[-1]).sum(0)
                if k or through_signal:
                    g = torch.matmul(g_z, prepared[wk])
            if through_signal:
                grad_signal = g if grad_signal is None else grad_signal + g
        if through_signal and grad_signal is not None:
            out = len(net.layers) - 1
            grad_post[out] = -grad_signal if out not in grad_post else grad_post[out] - grad_signal
        return grad_post, grads

    def fused_lifetime(
        self, net: MLP, meta: dict[str, Tensor], x: Tensor, y: Tensor, loss: Loss
    ) -> dict[str, Tensor]:
        """Weights at the end of a lifetime, the same values as iterating ``step``, as one
        autograd node with a hand-written backward (see ``hebbian_lifetime``): much less time
        and memory for the meta-gradient."""
        def targets(prepared: dict[str, Tensor], trace: Trace, target: Tensor) -> dict[int, Tensor]:
            return self.targets(net, prepared, trace, target)

        def targets_vjp(prepared, trace, target, grad_targets, wanted):  # type: ignore[no-untyped-def]
            return self.targets_vjp(net, prepared, trace, target, grad_targets, wanted)

        return hebbian_lifetime(
            net, targets, targets_vjp, select(meta, "init"), self.prepare(net, meta), x, y,
            self.form == "oja", self.plastic_bias,
        )
