"""Fused, memory-lean autograd for the Hebb/Oja weight update.

    W' = W + P * (T^T H)                         (Hebb)
    W' = W + P * (T^T H - diag(sum_b T^2) W)     (Oja)

with T (tasks, B, out) the target activity, H (tasks, B, in) the presynaptic activity and P
broadcastable to W. Plain autograd keeps the weight-sized bracket alive for every inner step;
this Function saves only W (which the next forward pass keeps alive anyway), P and the small
activities, and recomputes T^T H in the backward pass. That halves the memory of a full
unroll and removes several weight-sized passes per step.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _sum_to(grad: Tensor, shape: torch.Size) -> Tensor:
    """Sum a broadcast gradient back to ``shape``."""
    if grad.shape == shape:
        return grad
    lead = grad.dim() - len(shape)
    if lead:
        if all(n == 1 for n in grad.shape[:lead]):
            grad = grad.reshape(grad.shape[lead:])
        else:
            grad = grad.sum(dim=tuple(range(lead)))
    dims = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if dims:
        grad = grad.sum(dim=dims, keepdim=True)
    return grad


class _HebbianUpdate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: Tensor, p: Tensor, t: Tensor, h: Tensor, oja: bool) -> Tensor:  # type: ignore[override]
        m = torch.matmul(t.transpose(-1, -2), h)
        if oja:
            s = (t * t).sum(-2).unsqueeze(-1)
            m.addcmul_(s, w, value=-1.0)
        ctx.oja = oja
        ctx.save_for_backward(w, p, t, h)
        return m.mul_(p).add_(w)  # m is a fresh buffer: update it in place

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        w, p, t, h = ctx.saved_tensors
        need_w, need_p, need_t, need_h, _ = ctx.needs_input_grad
        grad_w = grad_p = grad_t = grad_h = None
        d_m = grad * p
        s = (t * t).sum(-2).unsqueeze(-1) if ctx.oja else None
        if need_w:
            grad_w = torch.addcmul(grad, s, d_m, value=-1.0) if ctx.oja else grad
            grad_w = _sum_to(grad_w, w.shape)
        if need_p:
            m = torch.matmul(t.transpose(-1, -2), h)
            if ctx.oja:
                m.addcmul_(s, w, value=-1.0)
            grad_p = _sum_to(m.mul_(grad), p.shape)
        if need_t:
            grad_t = torch.matmul(h, d_m.transpose(-1, -2))
            if ctx.oja:
                d_s = torch.linalg.vecdot(d_m, w.expand_as(d_m))
                grad_t = grad_t - 2.0 * t * d_s.unsqueeze(-2)
            grad_t = _sum_to(grad_t, t.shape)
        if need_h:
            grad_h = _sum_to(torch.matmul(t, d_m), h.shape)
        return grad_w, grad_p, grad_t, grad_h, None


def hebbian_update(w: Tensor, p: Tensor, t: Tensor, h: Tensor, oja: bool) -> Tensor:
    """New weights after one Hebb (``oja=False``) or Oja (``oja=True``) step."""
    return _HebbianUpdate.apply(w, p, t, h, oja)
