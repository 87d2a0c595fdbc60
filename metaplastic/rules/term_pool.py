"""The weight-sized algebra of a pool of plasticity terms, forward and reverse, by hand.

    W' = W + sum_k c_k * M_k(x, h, t, W)

Every term of the polynomial rule is one of four shapes, built from a post-side feature u
(h, t, e = t - h, h^2, t^2) or a pre-side one v (x, x^2), summed over the minibatch:

    outer   u^T x                (out, in)
    rows    sum_b u              (out, 1), broadcast over the inputs
    cols    sum_b v              (1, in), broadcast over the outputs
    const   1

optionally times W (``with_w``: Oja-like decays). Coefficients broadcast against W: synapse
(out, in), neuron (out, 1), layer / global (1, 1).

Reverse pass of one step, G = dL/dW' (the derivation; tests/test_poly_fused.py checks it):

- outer, per-synapse c:  D = c * G;  dL/du = x D^T,  dL/dx += u D,  dL/dc += G * (u^T x).
- outer, broadcast c (one GEMM A = x G^T shared by all such terms):  dL/du = A * c^T,
  dL/dc = sum_b u * A (no weight-sized temporary),  dL/dx += (sum_k c_k^T * u_k) G.
- rows / cols / const with R = G (or G * W for a W term):  dL/du = rowsum(c * R) broadcast over
  the batch (columns for cols),  dL/dc = R * M summed to c's shape.
- a W term adds (sum_k c_k q_k) * G to dL/dW (q_k its rows / cols / 1 factor).
- features: dL/dt += dL/de + 2 t dL/d(t^2),  dL/dh += -dL/de + 2 h dL/d(h^2),  dL/dx += 2 x dL/d(x^2).

Used by ``PolynomialRule.fused_lifetime`` through ``hebbian_lifetime``'s ``update`` slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from metaplastic.kernels.native import HebbianKernels

POST_FEATURES = ("h", "t", "e", "h2", "t2")
POST_READING = frozenset({"h", "e", "h2"})  # the features that read the postsynaptic activity h
PRE_FEATURES = ("x", "x2")
KINDS = ("outer", "rows", "cols", "const")


@dataclass(frozen=True)
class Term:
    """One term's shape: ``kind`` (see the module docstring), its feature and W factor."""

    kind: str
    feature: str | None = None
    with_w: bool = False

    def __post_init__(self) -> None:
        assert self.kind in KINDS
        if self.kind in ("outer", "rows"):
            assert self.feature in POST_FEATURES
        elif self.kind == "cols":
            assert self.feature in PRE_FEATURES
        else:
            assert self.feature is None


def _features(names: set[str], t: Tensor, x: Tensor, h: Tensor | None) -> dict[str, Tensor]:
    """The activities the pool uses, each (layers, tasks, batch, width)."""
    out: dict[str, Tensor] = {"t": t, "x": x, "h": h}
    if "e" in names:
        out["e"] = t - h
    if "h2" in names:
        out["h2"] = h * h
    if "t2" in names:
        out["t2"] = t * t
    if "x2" in names:
        out["x2"] = x * x
    return out


def _sum_to(grad: Tensor, shape: torch.Size) -> Tensor:
    """Sum ``grad`` over the dimensions where ``shape`` (same rank) has size 1."""
    dims = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    return grad.sum(dim=dims, keepdim=True) if dims else grad


def _factor(term: Term, f: dict[str, Tensor]) -> Tensor | None:
    """M_k without its W factor for rows / cols (summed over the batch), None for const."""
    if term.kind == "rows":
        return f[term.feature].sum(-2).unsqueeze(-1)  # (L, T, out, 1)
    if term.kind == "cols":
        return f[term.feature].sum(-2).unsqueeze(-2)  # (L, T, 1, in)
    return None


@dataclass(frozen=True)
class TermPool:
    """A pool of terms ``(name, Term)``; layer l's coefficient of term k is ``coef.{name}.{l}``."""

    terms: tuple[tuple[str, Term], ...]
    native_kernels: ClassVar[bool] = False  # torch ops only (issue 13: a native kernel for term pools)

    @property
    def reads_post(self) -> bool:
        """Whether a term uses the postsynaptic activity (h, e = t - h, h^2): else the lifetime
        does not stack it (and passes None)."""
        return bool(self._names & POST_READING)

    def coef_keys(self, layer: int) -> tuple[str, ...]:
        return tuple(f"coef.{name}.{layer}" for name, _ in self.terms)

    @property
    def _names(self) -> set[str]:
        return {term.feature for _, term in self.terms if term.feature is not None}

    # ---- forward --------------------------------------------------------------------------
    def forward(
        self, w: Tensor, coefs: list[Tensor], t: Tensor, x: Tensor, h: Tensor | None, kernels: HebbianKernels | None
    ) -> Tensor:
        """W' for a group of layers: w (L, 1|T, out, in), coefs (L, 1, out|1, in|1), activities
        (L, T, B, width); a fresh (L, T, out, in) buffer, no graph."""
        f = _features(self._names, t, x, h)
        shape = (w.shape[0], t.shape[1], w.shape[-2], w.shape[-1])
        out = w.expand(shape).clone(memory_format=torch.contiguous_format)
        folded: Tensor | None = None  # sum_k c_k^T * u_k over outer terms with broadcast c
        w_factor: Tensor | None = None
        for (_, term), c in zip(self.terms, coefs):
            if term.kind == "outer":
                u = f[term.feature]
                if c.shape[-2:] == w.shape[-2:]:
                    out.addcmul_(torch.matmul(u.transpose(-1, -2), x), c)
                else:
                    part = c.transpose(-1, -2) * u
                    folded = part if folded is None else folded.add_(part)
                continue
            q = _factor(term, f)
            cq = c if q is None else c * q
            if term.with_w:
                w_factor = cq if w_factor is None else w_factor + cq
            else:
                out.add_(cq)
        if folded is not None:
            out.view(-1, *shape[-2:]).baddbmm_(folded.flatten(0, 1).transpose(-1, -2), x.flatten(0, 1))
        if w_factor is not None:
            out.addcmul_(w_factor, w)
        return out

    # ---- reverse --------------------------------------------------------------------------
    def adjoint(
        self, g: Tensor, w: Tensor, coefs: list[Tensor], t: Tensor, x: Tensor, h: Tensor | None, d: Tensor,
        scratch: Tensor, grad_coefs: list[Tensor | None], first_order: bool, kernels: HebbianKernels | None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Backward of ``forward``, in place: ``g`` holds dL/dW' on entry and the update path's
        part of dL/dW on exit (unchanged under ``first_order``: W inside the update is a
        constant); ``grad_coefs`` (None where not needed) get dL/dc_k added; ``d`` and
        ``scratch`` are buffers of g's shape. Returns dL/dt, dL/dx and dL/dh (the last two None
        under ``first_order``: the activities come from detached weights)."""
        f = _features(self._names, t, x, h)
        grad_f: dict[str, Tensor] = {}

        def add(name: str, v: Tensor) -> None:
            grad_f[name] = grad_f[name] + v if name in grad_f else v

        grad_x: Tensor | None = None
        gw = g * w if any(term.with_w for _, term in self.terms) else None
        sums: dict[tuple[bool, int], Tensor] = {}  # (with_w, dim) -> R summed over dim

        def summed(with_w: bool, dim: int) -> Tensor:
            if (with_w, dim) not in sums:
                sums[with_w, dim] = (gw if with_w else g).sum(dim, keepdim=True)
            return sums[with_w, dim]

        folded: list[tuple[Tensor, Tensor, Tensor | None, str]] = []
        w_factor: Tensor | None = None
        for (_, term), c, grad_c in zip(self.terms, coefs, grad_coefs):
            full = c.shape[-2:] == g.shape[-2:]
            if term.kind == "outer":
                u = f[term.feature]
                if not full:
                    folded.append((c, u, grad_c, term.feature))
                    continue
                torch.mul(g, c, out=d)
                add(term.feature, torch.matmul(x, d.transpose(-1, -2)))
                if not first_order:
                    grad_x = _plus(grad_x, torch.matmul(u, d))
                if grad_c is not None:
                    m = torch.matmul(u.transpose(-1, -2), x, out=scratch)
                    grad_c.add_(m.mul_(g).sum(1, keepdim=True))
                continue
            r = gw if term.with_w else g
            assert r is not None
            q = _factor(term, f)
            if term.with_w:
                cq = c if q is None else c * q
                w_factor = cq if w_factor is None else w_factor + cq
            if term.kind == "rows":
                s = (c * r).sum(-1, keepdim=True) if full else c * summed(term.with_w, -1)  # (L, T, out, 1)
                add(term.feature, s.transpose(-1, -2))
                if grad_c is not None:
                    grad_c.add_(_sum_to((r * q).sum(1, keepdim=True) if full else summed(term.with_w, -1) * q,
                                        grad_c.shape))
            elif term.kind == "cols":
                if full:
                    s = (c * r).sum(-2, keepdim=True)
                elif c.shape[-2] > 1:  # per neuron
                    s = torch.matmul(c.transpose(-1, -2), r)
                else:
                    s = c * summed(term.with_w, -2)
                add(term.feature, s)  # (L, T, 1, in)
                if grad_c is not None:
                    if full:
                        part = (r * q).sum(1, keepdim=True)
                    elif c.shape[-2] > 1:
                        part = torch.matmul(r, q.transpose(-1, -2))
                    else:
                        part = summed(term.with_w, -2) * q
                    grad_c.add_(_sum_to(part, grad_c.shape))
            elif grad_c is not None:  # const
                grad_c.add_(_sum_to(r.sum(1, keepdim=True) if full else r, grad_c.shape))
        if folded:
            a = torch.matmul(x, g.transpose(-1, -2))  # (L, T, B, out)
            combined: Tensor | None = None
            for c, u, grad_c, name in folded:
                c_row = c.transpose(-1, -2)
                add(name, a * c_row)
                if grad_c is not None:
                    grad_c.add_(_sum_to((u * a).sum(-2).unsqueeze(-1), grad_c.shape))
                if not first_order:
                    part = c_row * u
                    combined = part if combined is None else combined.add_(part)
            if combined is not None:
                grad_x = _plus(grad_x, torch.matmul(combined, g))
        if w_factor is not None and not first_order:
            g.add_(g * w_factor)
        return self._activity_grads(grad_f, f, grad_x, first_order)

    @staticmethod
    def _activity_grads(
        grad_f: dict[str, Tensor], f: dict[str, Tensor], grad_x: Tensor | None, first_order: bool
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """dL/dt, dL/dx, dL/dh from the features' gradients (broadcast over the batch)."""
        t, x, h = f["t"], f["x"], f["h"]
        grad_t = torch.zeros_like(t)
        for name, sign in (("t", 1.0), ("e", 1.0)):
            if name in grad_f:
                grad_t.add_(grad_f[name], alpha=sign)
        if "t2" in grad_f:
            grad_t.addcmul_(t, grad_f["t2"], value=2.0)
        if first_order:
            return grad_t, None, None
        grad_h: Tensor | None = None
        if any(k in grad_f for k in ("h", "e", "h2")):
            grad_h = torch.zeros_like(h)
            if "h" in grad_f:
                grad_h.add_(grad_f["h"])
            if "e" in grad_f:
                grad_h.sub_(grad_f["e"])
            if "h2" in grad_f:
                grad_h.addcmul_(h, grad_f["h2"], value=2.0)
        if "x" in grad_f:
            grad_x = _plus(grad_x, grad_f["x"].expand_as(x).contiguous())
        if "x2" in grad_f:
            grad_x = _plus(grad_x, 2.0 * x * grad_f["x2"])
        return grad_t, grad_x, grad_h


def _plus(a: Tensor | None, b: Tensor) -> Tensor:
    return b if a is None else a + b
