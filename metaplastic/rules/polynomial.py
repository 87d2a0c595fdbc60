"""A learnable polynomial plasticity rule: dW = sum_k c_k * term_k over a configurable pool.

Every term is local: it uses only the presynaptic activity x = h_{l-1}, the postsynaptic
activity h = h_l, the FLP target activity t (feedback pathway and beta, taken from
:class:`FLPRule` by composition), the local signal e = t - h and the weight itself; products
are summed over the minibatch. Each term has its own coefficient scope (synapse, neuron,
layer, global). Hebb and Oja are special cases:

    Hebb: {pre_target: c}          Oja: {pre_target: c, target2_w: -c}

Coefficients are meta-parameters ``coef.{term}.{...}`` (group ``coef``); the feedback pathway
and beta are FLP's (groups ``feedback`` and ``beta``). Biases are not plastic.

``fused_lifetime`` runs every pool fused (``hebbian_lifetime`` with the rule's terms as a
``term_pool.TermPool``, whose reverse pass is derived once for the term algebra); ``TERMS``
stays the step path's own, independent statement of the terms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from metaplastic.errors import ConfigError
from metaplastic.losses import Loss
from metaplastic.networks import MLP, Trace, weight_key
from metaplastic.params import group_of, prefixed, select
from metaplastic.rules.coefficients import check_scope, coefficient_shapes, layer_coefficients
from metaplastic.rules.flp import FLPRule, FLPTargets
from metaplastic.rules.hebbian_update import hebbian_lifetime
from metaplastic.rules.term_pool import Term, TermPool
from metaplastic.rules.validation import check_meta_shapes


def _outer(post: Tensor, pre: Tensor) -> Tensor:
    return torch.matmul(post.transpose(-1, -2), pre)


def _rows(v: Tensor) -> Tensor:
    return v.sum(-2).unsqueeze(-1)  # (.., out, 1)


def _cols(v: Tensor) -> Tensor:
    return v.sum(-2).unsqueeze(-2)  # (.., 1, in)


# term(x, h, t, w) with x (T,B,in), h and t (T,B,out), w (out,in) or (T,out,in)
TERMS: dict[str, Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]] = {
    "pre_post": lambda x, h, t, w: _outer(h, x),
    "pre_target": lambda x, h, t, w: _outer(t, x),
    "pre_signal": lambda x, h, t, w: _outer(t - h, x),
    "post": lambda x, h, t, w: _rows(h),
    "target": lambda x, h, t, w: _rows(t),
    "signal": lambda x, h, t, w: _rows(t - h),
    "pre": lambda x, h, t, w: _cols(x),
    "w": lambda x, h, t, w: w,
    "post2_w": lambda x, h, t, w: _rows(h * h) * w,
    "target2_w": lambda x, h, t, w: _rows(t * t) * w,
    "pre2_w": lambda x, h, t, w: _cols(x * x) * w,
    "one": lambda x, h, t, w: torch.ones_like(w),
}

# The same terms in the fused lifetime's algebra (metaplastic.rules.term_pool).
POOL_TERMS: dict[str, Term] = {
    "pre_post": Term("outer", "h"),
    "pre_target": Term("outer", "t"),
    "pre_signal": Term("outer", "e"),
    "post": Term("rows", "h"),
    "target": Term("rows", "t"),
    "signal": Term("rows", "e"),
    "pre": Term("cols", "x"),
    "w": Term("const", None, with_w=True),
    "post2_w": Term("rows", "h2", with_w=True),
    "target2_w": Term("rows", "t2", with_w=True),
    "pre2_w": Term("cols", "x2", with_w=True),
    "one": Term("const"),
}


@dataclass(frozen=True)
class PolynomialRule:
    groups: ClassVar[tuple[str, ...]] = ("feedback", "coef", "beta")  # meta-parameter groups besides init
    name: str = "poly"
    terms: dict[str, str] = field(default_factory=lambda: {"pre_target": "synapse", "target2_w": "synapse"})
    coef_init: dict[str, float] = field(default_factory=dict)
    signal: str = "error"
    output_target: str = "feedback"
    feedback_hidden: tuple[int, ...] = ()
    feedback_activation: str = "relu"
    feedback_init_scale: float = 1.0
    beta_init: float = 0.5
    beta_sigmoid: bool = False

    def __post_init__(self) -> None:
        if not self.terms:
            raise ConfigError("rule.terms must name at least one plasticity term")
        for term, scope in self.terms.items():
            if term not in TERMS:
                raise ConfigError(f"unknown plasticity term '{term}' (known: {', '.join(sorted(TERMS))})")
            check_scope(scope)
        extra = sorted(set(self.coef_init) - set(self.terms))
        if extra:
            raise ConfigError(f"rule.coef_init.{extra[0]} names a term that is not in rule.terms")
        self.targets_rule()  # validates the FLP target options

    def targets_rule(self) -> FLPRule:
        """The FLP rule whose feedback pathway and beta give the target activity t."""
        return FLPRule(
            signal=self.signal,
            output_target=self.output_target,
            feedback_hidden=tuple(self.feedback_hidden),
            feedback_activation=self.feedback_activation,
            feedback_init_scale=self.feedback_init_scale,
            beta_init=self.beta_init,
            beta_sigmoid=self.beta_sigmoid,
            scope="layer",
        )

    def label(self) -> str:
        return "poly(" + " + ".join(self.terms) + ")"

    def init(self, net: MLP, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        flp = self.targets_rule().init(net, generator, dtype)
        meta = {k: v for k, v in flp.items() if group_of(k) in ("feedback", "beta")}
        for term, scope in self.terms.items():
            value = float(self.coef_init.get(term, 0.0))
            for l in net.plastic_layers:
                spec = net.layers[l]
                for key, shape in coefficient_shapes(scope, l, spec.out_features, spec.in_features, False).items():
                    meta[f"coef.{term}.{key}"] = torch.full(shape, value, dtype=dtype)
        return meta

    def prepare(self, net: MLP, meta: dict[str, Tensor]) -> dict[str, Tensor]:
        check_meta_shapes(self, net, meta)
        beta = select(meta, "beta")
        if self.beta_sigmoid:
            beta = {k: torch.sigmoid(v) for k, v in beta.items()}
        prepared = {**prefixed(select(meta, "feedback"), "feedback"), **prefixed(beta, "beta")}
        coef = select(meta, "coef")
        for term, scope in self.terms.items():
            for l in net.plastic_layers:
                prepared[f"coef.{term}.{l}"] = layer_coefficients(select(coef, term), scope, l)[0]
        return prepared

    def step(
        self,
        net: MLP,
        weights: dict[str, Tensor],
        prepared: dict[str, Tensor],
        trace: Trace,
        target: Tensor,
        loss: Loss,
    ) -> dict[str, Tensor]:
        new = {}
        for l, t in self.targets_rule().targets(net, prepared, trace, target, loss).items():
            w = weights[weight_key(l)]
            x, h = trace.inputs[l], trace.post[l]
            dw = sum(prepared[f"coef.{term}.{l}"] * TERMS[term](x, h, t, w) for term in self.terms)
            new[weight_key(l)] = w + dw
        return new

    # ---- the whole lifetime (fast path of the meta-gradient) ---------------------------
    def term_pool(self) -> TermPool:
        """The rule's terms as the fused lifetime's update algebra."""
        return TermPool(tuple((term, POOL_TERMS[term]) for term in self.terms))

    def update_algebra(self) -> TermPool:
        return self.term_pool()

    def fused_lifetime(
        self, net: MLP, meta: dict[str, Tensor], x: Tensor, y: Tensor, loss: Loss, segment: int = 0, start: int = 0,
        first_order: bool = False, kernels: str = "auto",
    ) -> dict[str, Tensor]:
        """Weights at the end of a lifetime, the values of iterating ``step``, as one autograd
        node with a hand-written reverse pass (``hebbian_lifetime`` over ``term_pool``); the
        options are ``FLPRule.fused_lifetime``'s. Every term of ``TERMS`` has it."""
        flp = self.targets_rule()
        return hebbian_lifetime(
            net, FLPTargets(flp, net, loss), select(meta, "init"), self.prepare(net, meta), x, y, oja=False,
            plastic_bias=False, segment=segment, start=start, first_order=first_order, kernels=kernels,
            update=self.term_pool(),
        )
