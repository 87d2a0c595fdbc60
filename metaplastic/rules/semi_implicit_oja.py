"""Oja's rule with the decay taken semi-implicitly: a step that is stable for every P >= 0.

FLP's Oja step (``rule.oja_step: explicit``) is explicit Euler,

    W' = W + P (T^T H - diag(s) W),        s_i = sum_b t_bi^2,

so every step multiplies W by 1 - P s; once P s > 2 that factor is below -1 and the lifetime
overflows. That is what ended the study's FLP-Oja runs (docs/reproduction.md: the output layer,
whose target is the raw error, crossed P s = 2 at meta-step 1230). The semi-implicit step
(``rule.oja_step: semi_implicit``) takes the decay at the new weights and the Hebbian drive at
the old ones:

    W' = W + P (T^T H - diag(s) W')   =>   W' = (W + P T^T H) / (1 + P s)

elementwise, with q = 1 / (1 + P s) in (0, 1] for P >= 0 whatever the activities: the old
weights are only ever shrunk. Both steps agree to first order in P (W' = W + P (T^T H - s W)
+ O(P^2)), so small coefficients learn the same rule.

Reverse pass of one step (the fused lifetime's ``adjoint``), G = dL/dW', M = T^T H:

    A = q G,  D = P A
    dL/dW = A                          (the update path; unchanged G under first order)
    dL/dM = D        ->  dL/dT = H D^T,  dL/dH = T D
    dL/ds_i = -sum_j D_ij W'_ij       ->  dL/dT += 2 T diag(dL/ds)
    dL/dP = A (M - s W')              summed to P's shape

A plastic bias is a synapse from a constant input of 1: b' = (b + p sum_b t) / (1 + p s).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from metaplastic.kernels.native import HebbianKernels
from metaplastic.rules.term_pool import _sum_to


def semi_implicit_oja_update(w: Tensor, p: Tensor, t: Tensor, h: Tensor) -> Tensor:
    """W' = (W + P T^T H) / (1 + P s), s = sum_b T^2 per output (plain autograd ops): the step
    path's update. ``t`` (..., B, out), ``h`` (..., B, in), ``p`` broadcastable to W."""
    m = torch.matmul(t.transpose(-1, -2), h)
    s = (t * t).sum(-2).unsqueeze(-1)
    return (w + p * m) / (1.0 + p * s)


def semi_implicit_oja_bias_update(b: Tensor, p: Tensor, t: Tensor) -> Tensor:
    """b' = (b + p sum_b t) / (1 + p s): the bias as a synapse from a constant input of 1."""
    return (b + p * t.sum(-2)) / (1.0 + p * (t * t).sum(-2))


@dataclass(frozen=True)
class SemiImplicitOja:
    """The semi-implicit Oja step as the fused lifetime's weight-sized algebra (``PlasticUpdate``
    in ``hebbian_update``), one coefficient ``coef.{l}.weight`` per layer; torch ops only (the
    native kernels are the explicit step's)."""

    native_kernels: ClassVar[bool] = False
    reads_post: ClassVar[bool] = False

    def coef_keys(self, layer: int) -> tuple[str, ...]:
        return (f"coef.{layer}.weight",)

    def forward(
        self, w: Tensor, coefs: list[Tensor], t: Tensor, x: Tensor, h: Tensor | None, kernels: HebbianKernels | None
    ) -> Tensor:
        p = coefs[0]
        m = torch.matmul(t.transpose(-1, -2), x)  # a fresh (L, T, out, in) buffer: updated in place
        s = (t * t).sum(-2).unsqueeze(-1)
        return m.mul_(p).add_(w).div_(torch.mul(p, s).add_(1.0))

    def adjoint(
        self, g: Tensor, w: Tensor, coefs: list[Tensor], t: Tensor, x: Tensor, h: Tensor | None, d: Tensor,
        scratch: Tensor, grad_coefs: list[Tensor | None], first_order: bool, kernels: HebbianKernels | None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        p, grad_p = coefs[0], grad_coefs[0]
        s = (t * t).sum(-2).unsqueeze(-1)  # (L, T, out, 1)
        m = torch.matmul(t.transpose(-1, -2), x, out=scratch)
        q = torch.mul(p, s).add_(1.0).reciprocal_()
        new = torch.addcmul(w, p, m).mul_(q)  # W' of this step
        a = torch.mul(g, q, out=d)
        if grad_p is not None:  # m is not needed after this
            grad_p.add_(_sum_to(m.addcmul_(s, new, value=-1.0).mul_(a).sum(1, keepdim=True), grad_p.shape))
        if not first_order:
            g.copy_(a)
        dmat = a.mul_(p)  # D, in d's buffer
        grad_s = torch.linalg.vecdot(dmat, new).unsqueeze(-1).neg_()  # (L, T, out, 1)
        grad_t = torch.matmul(x, dmat.transpose(-1, -2))
        grad_t.addcmul_(t, grad_s.transpose(-1, -2), value=2.0)
        grad_x = None if first_order else torch.matmul(t, dmat)
        return grad_t, grad_x, None

    def bias_forward(self, b: Tensor, p: Tensor, t: Tensor) -> Tensor:
        return semi_implicit_oja_bias_update(b, p, t)

    def bias_adjoint(
        self, g: Tensor, b: Tensor, p: Tensor, t: Tensor, grad_t: Tensor, first_order: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        s, drive = (t * t).sum(-2), t.sum(-2)
        q = (1.0 + p * s).reciprocal()
        new = (b + p * drive) * q
        a = g * q
        dmat = a * p
        grad_t = (grad_t + dmat.unsqueeze(-2)).addcmul_(t, (dmat * new).unsqueeze(-2), value=-2.0)
        return grad_t, g if first_order else a, a * (drive - s * new)
