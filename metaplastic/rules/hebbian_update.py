"""Fused, memory-lean autograd for Hebbian/Oja plasticity.

    W' = W + P * (T^T H)                         (Hebb)
    W' = W + P * (T^T H - diag(sum_b T^2) W)     (Oja)

with T (tasks, B, out) the target activity, H (tasks, B, in) the presynaptic activity and P
broadcastable to W.

Two levels:

- ``hebbian_update``: one step as one autograd node. Plain autograd keeps the weight-sized
  bracket alive for every inner step; this Function saves only W (which the next forward pass
  keeps alive anyway), P and the small activities, and recomputes T^T H in the backward pass.
- ``hebbian_lifetime``: a whole lifetime as one autograd node, with a hand-written backward
  pass (the fast path of the meta-gradient; ``FLPRule.fused_lifetime``). The forward pass runs
  the inner loop without a graph and keeps only the plastic weights and the pre-activations of
  every step. The backward pass walks the steps in reverse. The weight-sized part is the
  adjoint recursion of the weights, with in-place buffers,

      D   = P * G_{t+1}
      dL/dT_t = H_t D^T - 2 T_t diag(rowsum(D * W_t)),   dL/dH_t = T_t D          (Oja terms)
      dL/dP  += G_{t+1} * (T_t^T H_t - diag(s_t) W_t)
      G_t     = G_{t+1} - diag(s_t) D + delta_t^T h_t    (delta_t: dL/d pre-activation, step t)

  done for all plastic layers of one shape at once (stacked: one GEMM / elementwise call per
  group instead of per layer). The small part (activations, supervision signal, feedback
  pathway, target activity, plastic biases) is differentiated by hand as well: the network by
  this module, the rule's target activities by the rule (``TargetModel``). Same math as the
  step-by-step graph; only float roundoff differs (tests/test_fast_paths.py checks it against
  plain autograd in float64).

The weight-sized algebra is a slot (``PlasticUpdate``): ``HebbOja`` above (with the native
kernels), or any pool of polynomial terms (``term_pool.TermPool``, ``PolynomialRule``); the
memory modes (checkpoint, truncation, first order) live in the lifetime machinery, not in it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from metaplastic.kernels import native, selection
from metaplastic.networks import MLP, Trace, bias_key, get_activation, weight_key


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


def _hebbian_forward(
    w: Tensor, p: Tensor, t: Tensor, h: Tensor, oja: bool, kernels: native.HebbianKernels | None = None
) -> Tensor:
    """The new weights, computed into one fresh buffer (no graph); ``kernels``: the native
    kernels that may do the elementwise pass where it applies (None: torch ops)."""
    m = torch.matmul(t.transpose(-1, -2), h)
    s = (t * t).sum(-2).unsqueeze(-1) if oja else None
    if kernels is not None and kernels.forward(m, w, p, s):
        return m
    if s is not None:
        m.addcmul_(s, w, value=-1.0)
    return torch.addcmul(w, m, p, out=m)  # m is a fresh buffer: update it in place


class _HebbianUpdate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: Tensor, p: Tensor, t: Tensor, h: Tensor, oja: bool) -> Tensor:  # type: ignore[override]
        ctx.oja = oja
        ctx.save_for_backward(w, p, t, h)
        return _hebbian_forward(w, p, t, h, oja, native.bind(w.dtype, w.device))

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
                grad_t.addcmul_(t, d_s.unsqueeze(-2), value=-2.0)
            grad_t = _sum_to(grad_t, t.shape)
        if need_h:
            grad_h = _sum_to(torch.matmul(t, d_m), h.shape)
        return grad_w, grad_p, grad_t, grad_h, None


def hebbian_update(w: Tensor, p: Tensor, t: Tensor, h: Tensor, oja: bool) -> Tensor:
    """New weights after one Hebb (``oja=False``) or Oja (``oja=True``) step."""
    return _HebbianUpdate.apply(w, p, t, h, oja)


def hebbian_bias_update(b: Tensor, p: Tensor, t: Tensor, oja: bool) -> Tensor:
    """New biases after one step: a bias is a synapse from a constant input of 1."""
    hebb_b = t.sum(-2)
    if oja:
        hebb_b = hebb_b - (t * t).sum(-2) * b
    return b + p * hebb_b


# ---- a whole lifetime as one autograd node ------------------------------------------------
class BoundTargets(Protocol):
    """A rule's target activities with its parameters bound for one pass over a lifetime."""

    def targets(self, trace: Trace, target: Tensor) -> dict[int, Tensor]:
        """t_l of every plastic layer for one forward pass."""
        ...

    def backward(self, trace: Trace, target: Tensor, grad_targets: dict[int, Tensor]) -> dict[int, Tensor]:
        """Given dL/dt_l (for the step whose ``targets`` was called last), return dL/d(post-
        activation) per layer (the output is ``trace.post[-1]``) and add this step's share to
        the gradients of the bound parameters."""
        ...

    def grads(self) -> dict[str, Tensor]:
        """The accumulated gradients of the wanted parameters."""
        ...


class TargetModel(Protocol):
    def bind(self, prepared: dict[str, Tensor], wanted: set[str]) -> BoundTargets:
        """Bind the prepared parameters (all but the coefficients); ``wanted`` names those
        whose gradients ``grads`` must give."""
        ...


def activation_vjp(name: str, grad: Tensor, pre: Tensor, post: Tensor | None = None) -> Tensor:
    """dL/da from dL/dphi(a) for a named activation, given the pre-activation a (and, where it
    saves recomputing phi, the output phi(a): tanh' = 1 - phi^2)."""
    if name == "relu":
        return torch.ops.aten.threshold_backward(grad, pre, 0)
    if name == "identity":
        return grad
    if name == "tanh" and post is not None:
        return torch.ops.aten.tanh_backward(grad, post)
    return grad * get_activation(name).derivative(pre)


def _add(a: Tensor | None, b: Tensor) -> Tensor:
    return b if a is None else a + b


def _backprop(acc: Tensor | None, delta: Tensor, w: Tensor) -> Tensor:
    """acc + delta W (dL/d input of a layer), one batched GEMM where the shapes allow."""
    if acc is not None and w.dim() == 3 and delta.dim() == 3 and w.shape[0] == delta.shape[0]:
        return torch.baddbmm(acc, delta, w)
    return _add(acc, torch.matmul(delta, w))


class PlasticUpdate(Protocol):
    """The weight-sized algebra of a rule's update W' = W + u(W, x, h, t; c), for a group of
    layers stacked on the leading dimension (see ``HebbOja`` and ``term_pool.TermPool``)."""

    native_kernels: ClassVar[bool]  # whether passing ``kernels`` can change anything (the run log says it)
    @property
    def reads_post(self) -> bool:
        """Whether it reads the postsynaptic activity ``h`` (else the lifetime passes None)."""
        ...

    def coef_keys(self, layer: int) -> tuple[str, ...]:
        """The prepared keys of layer ``layer``'s weight coefficients, in ``coefs`` order."""
        ...

    def forward(
        self, w: Tensor, coefs: list[Tensor], t: Tensor, x: Tensor, h: Tensor | None,
        kernels: native.HebbianKernels | None,
    ) -> Tensor:
        """W' as a fresh buffer, no graph (x: presynaptic, h: postsynaptic, t: target activity);
        ``kernels``: the native kernels bound for this lifetime, or None (torch ops)."""
        ...

    def adjoint(
        self, g: Tensor, w: Tensor, coefs: list[Tensor], t: Tensor, x: Tensor, h: Tensor | None, d: Tensor,
        scratch: Tensor, grad_coefs: list[Tensor | None], first_order: bool, kernels: native.HebbianKernels | None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """In place: ``g`` from dL/dW' to the update path's dL/dW, dL/dc added to ``grad_coefs``;
        returns dL/dt, dL/dx and dL/dh (None where there is none)."""
        ...

    # Plastic biases (synapses from a constant input of 1), only called with ``plastic_bias``:
    def bias_forward(self, b: Tensor, p: Tensor, t: Tensor) -> Tensor:
        """b' of one layer: b (tasks|1, out), p broadcastable to b, t (tasks, B, out)."""
        ...

    def bias_adjoint(
        self, g: Tensor, b: Tensor, p: Tensor, t: Tensor, grad_t: Tensor, first_order: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """From g = dL/db' and the weights' dL/dt: (dL/dt with the bias path added, the update
        path's dL/db, dL/dp before summing to p's shape)."""
        ...


@dataclass(frozen=True)
class HebbOja:
    """FLP's Hebb / Oja update with one coefficient ``coef.{l}.weight`` (native kernels)."""

    oja: bool
    native_kernels: ClassVar[bool] = True  # metaplastic.kernels implements its weight-sized passes
    reads_post: ClassVar[bool] = False

    def coef_keys(self, layer: int) -> tuple[str, ...]:
        return (f"coef.{layer}.weight",)

    def forward(
        self, w: Tensor, coefs: list[Tensor], t: Tensor, x: Tensor, h: Tensor | None,
        kernels: native.HebbianKernels | None,
    ) -> Tensor:
        return _hebbian_forward(w, coefs[0], t, x, self.oja, kernels)

    def adjoint(
        self, g: Tensor, w: Tensor, coefs: list[Tensor], t: Tensor, x: Tensor, h: Tensor | None, d: Tensor,
        scratch: Tensor, grad_coefs: list[Tensor | None], first_order: bool, kernels: native.HebbianKernels | None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        grad_t, grad_x = _adjoint_step(g, w, coefs[0], t, x, self.oja, d, scratch, grad_coefs[0], first_order, kernels)
        return grad_t, grad_x, None

    def bias_forward(self, b: Tensor, p: Tensor, t: Tensor) -> Tensor:
        return hebbian_bias_update(b, p, t, self.oja)

    def bias_adjoint(
        self, g: Tensor, b: Tensor, p: Tensor, t: Tensor, grad_t: Tensor, first_order: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        g_hebb = g * p  # dL/d(hebb_b)
        grad_t = grad_t + g_hebb.unsqueeze(-2)
        hebb_b, g_b = t.sum(-2), g
        if self.oja:
            s = (t * t).sum(-2)
            grad_t.addcmul_(t, (g_hebb * b).unsqueeze(-2), value=-2.0)
            hebb_b = hebb_b - s * b
            if not first_order:
                g_b = g - g_hebb * s
        return grad_t, g_b, g * hebb_b


@dataclass(frozen=True)
class _LifetimeSpec:
    net: MLP
    model: TargetModel
    oja: bool
    plastic_bias: bool
    weight_keys: tuple[str, ...]
    prepared_keys: tuple[str, ...]
    groups: tuple[tuple[int, ...], ...]  # plastic layers with weights and coefficients of one shape
    segment: int = 0  # > 0: keep the state every `segment` steps, recompute the rest backward
    start: int = 0  # the first step the meta-gradient goes through (truncation)
    first_order: bool = False  # updates taken at detached weights: W' = W + u(stopgrad W)
    kernels: native.HebbianKernels | None = None  # bound once per lifetime (meta.unroll.kernels); None: torch
    update: PlasticUpdate | None = None  # the weights' update algebra (None: HebbOja(oja))

    @property
    def algebra(self) -> PlasticUpdate:
        return self.update if self.update is not None else HebbOja(self.oja)

    def coefficients(self, prepared: dict[str, Tensor], group: tuple[int, ...]) -> list[Tensor]:
        """Each weight coefficient of a group, stacked (layers, 1, out|1, in|1)."""
        keys = zip(*(self.algebra.coef_keys(l) for l in group))
        return [_stack([_coef_2d(prepared[k]) for k in per_layer]).unsqueeze(1) for per_layer in keys]

    def keeps_state(self, step: int) -> bool:
        """Whether the forward pass saves the state before ``step`` (step 0's is the input)."""
        in_window = 0 < step and step >= self.start
        return in_window and (not self.segment or (step - self.start) % self.segment == 0)

    def segment_begin(self, step: int) -> int:
        """The first step of the checkpointed segment holding ``step``."""
        return step - (step - self.start) % self.segment

    @property
    def bias_keys(self) -> list[str]:
        """The biases that change during the lifetime."""
        return [bias_key(l) for l in self.net.plastic_layers] if self.plastic_bias else []


def _coef_2d(p: Tensor) -> Tensor:
    return p.reshape((1,) * (2 - p.dim()) + tuple(p.shape))


def _stack(tensors: list[Tensor]) -> Tensor:
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)


def _native_adjoint_step(
    g: Tensor, w: Tensor, p: Tensor, t: Tensor, h: Tensor, oja: bool, d: Tensor, scratch: Tensor | None,
    grad_p: Tensor | None, kernels: native.HebbianKernels,
) -> tuple[bool, Tensor | None]:
    """``_adjoint_step``'s weight-sized passes as one native pass (see metaplastic.kernels)."""
    if grad_p is not None and grad_p.shape[-2:] != g.shape[-2:]:
        return False, None  # coefficients broadcast over synapses: the torch path sums them
    s = (t * t).sum(-2).unsqueeze(-1) if oja else None
    d_s = g.new_empty(g.shape[:-1] + (1,)) if oja else None
    m = None
    if grad_p is not None:
        assert scratch is not None
        m = torch.matmul(t.transpose(-1, -2), h, out=scratch)
    return kernels.adjoint(g, d, d_s, grad_p, p, w, m, s), d_s


def _adjoint_step(
    g: Tensor,
    w: Tensor,
    p: Tensor,
    t: Tensor,
    h: Tensor,
    oja: bool,
    d: Tensor,
    scratch: Tensor | None,
    grad_p: Tensor | None,
    first_order: bool = False,
    kernels: native.HebbianKernels | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Backward of W' = update(W, P, T, H) for a group of layers (leading dimension), in place.

    ``g`` (layers, tasks, out, in) holds dL/dW' on entry and the update path's part of dL/dW on
    exit. ``grad_p`` (P's gradient accumulator, shaped like ``p``: (layers, 1, out|1, in|1), or
    None when P needs none) gets dL/dP added. ``d`` and ``scratch`` (needed for Oja or dL/dP)
    are buffers of g's shape. Returns dL/dT and dL/dH. ``first_order``: W inside the update is
    a constant, so ``g`` passes through unchanged (identity path only), and the activities are
    constants too (dL/dH is None). ``kernels``: the native kernels that may do the weight-sized
    passes (None: torch ops).
    """
    done, d_s = (False, None)
    if kernels is not None and not first_order:
        done, d_s = _native_adjoint_step(g, w, p, t, h, oja, d, scratch, grad_p, kernels)
    if done:
        grad_t = torch.matmul(h, d.transpose(-1, -2))
        if d_s is not None:
            grad_t.addcmul_(t, d_s.transpose(-1, -2), value=-2.0)
        return grad_t, torch.matmul(t, d)
    torch.mul(g, p, out=d)  # dL/d(bracket)
    grad_t = torch.matmul(h, d.transpose(-1, -2))
    grad_h = None if first_order else torch.matmul(t, d)
    s = None
    if oja:
        assert scratch is not None
        s = (t * t).sum(-2).unsqueeze(-1)
        d_s = torch.mul(d, w, out=scratch).sum(-1)  # = -dL/ds
        grad_t.addcmul_(t, d_s.unsqueeze(-2), value=-2.0)
    if grad_p is not None:
        assert scratch is not None
        m = torch.matmul(t.transpose(-1, -2), h, out=scratch)
        if oja:
            m.addcmul_(s, w, value=-1.0)
        if grad_p.shape[-2:] == g.shape[-2:]:  # per-synapse coefficients: accumulate in place
            for k in range(g.shape[-3]):
                grad_p.addcmul_(m.narrow(-3, k, 1), g.narrow(-3, k, 1))
        else:
            grad_p.add_(_sum_to(m.mul_(g), grad_p.shape))
    if oja and not first_order:
        g.addcmul_(s, d, value=-1.0)
    return grad_t, grad_h


def _initial_state(spec: _LifetimeSpec, weights: dict[str, Tensor]) -> list[Tensor]:
    """The plastic weights of every group, stacked (layers, 1, out, in)."""
    return [_stack([weights[weight_key(l)] for l in group]).unsqueeze(1) for group in spec.groups]


def _run_steps(
    spec: _LifetimeSpec, prepared: dict[str, Tensor], weights: dict[str, Tensor], state: list[Tensor], x: Tensor,
    y: Tensor, steps: range, record: Callable[[int, list[Tensor], list[Tensor], list[Tensor]], None],
) -> None:
    """Inner steps without a graph, updating ``weights`` and ``state`` in place; ``record(step,
    state, biases, pre-activations)`` sees every step's inputs before its update. The forward
    pass and the recomputation of checkpointed segments both run this, so they agree exactly."""
    bound = spec.model.bind(prepared, set())
    algebra = spec.algebra
    coefs = [spec.coefficients(prepared, group) for group in spec.groups]
    for step in steps:
        trace = spec.net.forward(weights, x[:, step])
        record(step, list(state), [weights[k] for k in spec.bias_keys], trace.pre)
        targets = bound.targets(trace, y[:, step])
        for g, group in enumerate(spec.groups):
            t = _stack([targets[l] for l in group])
            h = _stack([trace.inputs[l] for l in group])
            post = _stack([trace.post[l] for l in group]) if algebra.reads_post else None
            state[g] = algebra.forward(state[g], coefs[g], t, h, post, spec.kernels)
        new_bias = {
            bias_key(l): algebra.bias_forward(weights[bias_key(l)], prepared[f"coef.{l}.bias"], targets[l])
            for l in spec.net.plastic_layers
        } if spec.plastic_bias else {}
        for g, group in enumerate(spec.groups):
            for j, l in enumerate(group):
                weights[weight_key(l)] = state[g][j]
        weights.update(new_bias)


class _Records:
    """Each step's state, plastic biases and pre-activations for the backward pass.

    Saved layout, steps ``start`` .. S-1 in order: without checkpointing, per step the state
    and biases (not for step 0: they are the initial weights) then the pre-activations; with
    checkpointing, only the state and biases at the first step of every segment (not at 0), and
    a segment is recomputed from there when the backward pass reaches it."""

    def __init__(
        self, spec: _LifetimeSpec, init: dict[str, Tensor], prepared: dict[str, Tensor], x: Tensor, y: Tensor,
        saved: tuple[Tensor, ...], n_steps: int,
    ):
        self.spec, self.init, self.prepared, self.x, self.y, self.saved = spec, init, prepared, x, y, saved
        self.cache: dict[int, tuple[list[Tensor], dict[str, Tensor], list[Tensor]]] = {}
        n_state = len(spec.groups) + len(spec.bias_keys)
        n_pre = 0 if spec.segment else len(spec.net.layers)
        self.where: dict[int, int] = {}  # step -> offset of its record in ``saved``
        pos = 0
        for step in range(spec.start, n_steps):
            if not spec.segment or spec.segment_begin(step) == step:
                self.where[step] = pos
            pos += (n_state if spec.keeps_state(step) else 0) + n_pre

    def _state_at(self, step: int) -> tuple[list[Tensor], dict[str, Tensor], int]:
        n_groups, bias_keys = len(self.spec.groups), self.spec.bias_keys
        pos = self.where[step]
        if not step:
            return [], {k: self.init[k] for k in bias_keys}, pos
        state = list(self.saved[pos:pos + n_groups])
        biases = dict(zip(bias_keys, self.saved[pos + n_groups:pos + n_groups + len(bias_keys)]))
        return state, biases, pos + n_groups + len(bias_keys)

    def pop(self, step: int) -> tuple[list[Tensor], dict[str, Tensor], list[Tensor]]:
        spec = self.spec
        if not spec.segment:
            state, biases, pos = self._state_at(step)
            return state, biases, list(self.saved[pos:pos + len(spec.net.layers)])
        if step not in self.cache:
            self.cache.clear()
            begin = spec.segment_begin(step)
            state, biases, _ = self._state_at(begin)
            weights = dict(self.init)
            weights.update(biases)
            if begin:
                for g, group in enumerate(spec.groups):
                    for j, l in enumerate(group):
                        weights[weight_key(l)] = state[g][j]
            else:
                state = _initial_state(spec, self.init)

            def keep(i: int, state_in: list[Tensor], biases_in: list[Tensor], pre: list[Tensor]) -> None:
                self.cache[i] = (state_in, dict(zip(spec.bias_keys, biases_in)), pre)

            _run_steps(spec, self.prepared, weights, state, self.x, self.y, range(begin, step + 1), keep)
        return self.cache.pop(step)


class _HebbianLifetime(torch.autograd.Function):
    """Outputs: the final weights of every group, stacked (layers, tasks, out, in), then the
    final plastic biases (tasks, out)."""

    @staticmethod
    def forward(ctx, spec: _LifetimeSpec, x: Tensor, y: Tensor, *tensors: Tensor):  # type: ignore[override]
        n_w = len(spec.weight_keys)
        weights = dict(zip(spec.weight_keys, tensors[:n_w]))
        prepared = dict(zip(spec.prepared_keys, tensors[n_w:]))
        state = _initial_state(spec, weights)
        saved: list[Tensor] = []  # see _Records

        def record(step: int, state_in: list[Tensor], biases: list[Tensor], pre: list[Tensor]) -> None:
            if spec.keeps_state(step):
                saved.extend(state_in)
                saved.extend(biases)
            if not spec.segment and step >= spec.start:
                saved.extend(pre)

        _run_steps(spec, prepared, weights, state, x, y, range(x.shape[1]), record)
        ctx.spec = spec
        ctx.n_steps = x.shape[1]
        ctx.save_for_backward(x, y, *tensors, *saved)
        return (*state, *(weights[k] for k in spec.bias_keys))

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_out: Tensor | None):  # type: ignore[override]
        spec: _LifetimeSpec = ctx.spec
        net, groups = spec.net, spec.groups
        n_layers = len(net.layers)
        last = n_layers - 1
        saved = ctx.saved_tensors
        x, y = saved[0], saved[1]
        n_w, n_p = len(spec.weight_keys), len(spec.prepared_keys)
        inputs = saved[2:2 + n_w + n_p]
        per_step = saved[2 + n_w + n_p:]
        needs = ctx.needs_input_grad[3:]
        bias_keys = spec.bias_keys
        n_tasks = x.shape[0]
        init = dict(zip(spec.weight_keys, inputs[:n_w]))
        prepared = dict(zip(spec.prepared_keys, inputs[n_w:]))
        need_w = dict(zip(spec.weight_keys, needs[:n_w]))
        need_p = dict(zip(spec.prepared_keys, needs[n_w:]))
        plastic = net.plastic_layers
        plastic_set = set(plastic)
        where = {l: (g, j) for g, group in enumerate(groups) for j, l in enumerate(group)}
        acts = [layer.activation for layer in net.layers]
        algebra = spec.algebra
        coef_keys = {k for l in plastic for k in (*algebra.coef_keys(l), f"coef.{l}.bias")}
        wanted = {k for k in spec.prepared_keys if need_p[k] and k not in coef_keys}
        bound = spec.model.bind(prepared, wanted)

        # Adjoints of the plastic state (dL/d state after the step being processed).
        adj: list[Tensor] = []
        for group, g in zip(groups, grad_out):
            shape = (len(group), n_tasks, *init[weight_key(group[0])].shape)
            ref = init[weight_key(group[0])]
            adj.append(g.expand(shape).clone(memory_format=torch.contiguous_format) if g is not None
                       else ref.new_zeros(shape))
        adj_bias: dict[str, Tensor] = {}
        for k, g in zip(bias_keys, grad_out[len(groups):]):
            shape = (n_tasks, *init[k].shape)
            adj_bias[k] = g.expand(shape).clone() if g is not None else init[k].new_zeros(shape)
        # Gradients accumulated over the lifetime.
        grads: dict[str, Tensor | None] = dict.fromkeys(spec.weight_keys + spec.prepared_keys)
        coefs = [spec.coefficients(prepared, group) for group in groups]
        grad_coefs: list[list[Tensor | None]] = []
        for group, stacked in zip(groups, coefs):
            per_coef = zip(*(algebra.coef_keys(l) for l in group))
            grad_coefs.append([torch.zeros_like(c) if any(need_p[k] for k in keys) else None
                               for keys, c in zip(per_coef, stacked)])
        for l in range(n_layers):
            if l not in plastic_set and need_w[weight_key(l)]:
                grads[weight_key(l)] = torch.zeros_like(init[weight_key(l)])
        # Scratch buffers, shared by all groups.
        largest = max((a.numel() for a in adj), default=0)
        buf_d = x.new_empty(largest)
        buf_m = x.new_empty(largest)
        init_state = _initial_state(spec, init)
        lowest = min(
            [*plastic, *(l for l in range(n_layers) if need_w[weight_key(l)] or need_w[bias_key(l)])],
            default=n_layers,
        )

        # Loop invariants: each group's scratch views and each plastic layer's view of its adjoint
        # (both updated in place), the activations.
        scratch = [(buf_d[:a.numel()].view(a.shape), buf_m[:a.numel()].view(a.shape)) for a in adj]
        adj_of = {l: adj[g][j] for l, (g, j) in where.items()}
        activation_fns = [get_activation(a).fn for a in acts]
        weight_keys = [weight_key(l) for l in range(n_layers)]
        bias_keys_all = [bias_key(l) for l in range(n_layers)]
        delta_sums: dict[int, Tensor] = {}  # per frozen bias: its deltas summed over steps
        records = _Records(spec, init, prepared, x, y, per_step, ctx.n_steps)
        for step in range(ctx.n_steps - 1, spec.start - 1, -1):
            state_in, biases, pre = records.pop(step)
            state = state_in if step else init_state
            weights = dict(init)
            weights.update(biases)
            for g, group in enumerate(groups):
                for j, l in enumerate(group):
                    weights[weight_keys[l]] = state[g][j] if step else init[weight_keys[l]]
            post = [activation_fns[l](pre[l]) for l in range(n_layers)]
            trace = Trace(post[-1], [x[:, step], *post[:-1]], list(pre), post)
            y_step = y[:, step]
            targets = bound.targets(trace, y_step)

            # Weight-sized part, by hand, group by group.
            grad_post: dict[int, Tensor] = {}
            grad_targets: dict[int, Tensor] = {}
            for g, group in enumerate(groups):
                t = _stack([targets[l] for l in group])
                h = _stack([trace.inputs[l] for l in group])
                h_post = _stack([trace.post[l] for l in group]) if algebra.reads_post else None
                grad_t, grad_h, grad_h_post = algebra.adjoint(
                    adj[g], state[g], coefs[g], t, h, h_post, *scratch[g], grad_coefs[g], spec.first_order,
                    spec.kernels,
                )
                for j, l in enumerate(group):
                    grad_targets[l] = grad_t[j]
                    if l > 0 and grad_h is not None:
                        grad_post[l - 1] = _add(grad_post.get(l - 1), grad_h[j])
                    if grad_h_post is not None:
                        grad_post[l] = _add(grad_post.get(l), grad_h_post[j])
            # The biases' update path.
            if spec.plastic_bias:
                for l in plastic:
                    bk, pk = bias_key(l), f"coef.{l}.bias"
                    grad_targets[l], adj_bias[bk], grad_p_b = algebra.bias_adjoint(
                        adj_bias[bk], biases[bk], prepared[pk], targets[l], grad_targets[l], spec.first_order
                    )
                    if need_p[pk]:
                        grads[pk] = _add(grads[pk], _sum_to(grad_p_b, prepared[pk].shape))

            # Small part: the rule's target activities, then the network, by hand.
            to_network = bound.backward(trace, y_step, grad_targets)
            if spec.first_order:
                continue  # the activities come from detached weights: no path into the network
            for l, g in to_network.items():
                grad_post[l] = _add(grad_post.get(l), g)
            for l in range(last, lowest - 1, -1):
                g = grad_post.get(l)
                if g is None:
                    continue
                delta = activation_vjp(acts[l], g, pre[l])
                wk, bk, h = weight_keys[l], bias_keys_all[l], trace.inputs[l]
                if bk in adj_bias:
                    adj_bias[bk] = adj_bias[bk] + delta.sum(-2)
                elif need_w[bk]:  # summed over the batch once, after the loop
                    if l in delta_sums:
                        delta_sums[l].add_(delta)
                    else:
                        delta_sums[l] = delta.clone()
                if l in plastic_set:
                    adj_of[l].baddbmm_(delta.transpose(-1, -2), h)
                elif need_w[wk]:
                    grads[wk].addmm_(delta.reshape(-1, delta.shape[-1]).t(), h.reshape(-1, h.shape[-1]))
                if l > lowest:
                    grad_post[l - 1] = _backprop(grad_post.get(l - 1), delta, weights[wk])

        for l, total in delta_sums.items():  # the frozen biases: sum over steps and batch
            grads[bias_keys_all[l]] = _add(grads[bias_keys_all[l]], total.sum((0, 1)))

        grads.update(bound.grads())
        truncated = spec.start > 0  # the state before the window is a constant: no gradient
        for g, group in enumerate(groups):
            for j, l in enumerate(group):
                wk = weight_key(l)
                grads[wk] = torch.zeros_like(init[wk]) if truncated else _sum_to(adj[g][j], init[wk].shape)
                for key, grad_c in zip(algebra.coef_keys(l), grad_coefs[g]):
                    if grad_c is not None:
                        grads[key] = _add(grads[key], grad_c[j, 0])
        for k, g in adj_bias.items():
            grads[k] = torch.zeros_like(init[k]) if truncated else _sum_to(g, init[k].shape)
        result: list[Tensor | None] = [None, None, None]
        for k, v in [*init.items(), *prepared.items()]:
            needed = need_w[k] if k in need_w else need_p[k]
            g = grads[k]
            result.append(None if not needed else g.reshape(v.shape) if g is not None else torch.zeros_like(v))
        return tuple(result)


def _groups(
    net: MLP, weights: dict[str, Tensor], prepared: dict[str, Tensor], algebra: PlasticUpdate
) -> tuple[tuple[int, ...], ...]:
    """Plastic layers whose weights and coefficients have one shape, to be updated together."""
    by_shape: dict[tuple, list[int]] = {}
    for l in net.plastic_layers:
        coef_shapes = tuple(tuple(_coef_2d(prepared[k]).shape) for k in algebra.coef_keys(l))
        key = (tuple(weights[weight_key(l)].shape), coef_shapes)
        by_shape.setdefault(key, []).append(l)
    return tuple(tuple(group) for group in by_shape.values())


def _measured_native(
    spec: _LifetimeSpec, prepared: dict[str, Tensor], x: Tensor, kernels: native.HebbianKernels
) -> bool:
    """Whether ``auto`` runs the native kernels for this lifetime (``kernels.selection``): the
    probe is one inner step's weight-sized passes, forward and reverse, at the lifetime's shapes
    (random activities, the real coefficients)."""
    tasks, batch = x.shape[0], x.shape[2]
    coefs = [[c.detach() for c in spec.coefficients(prepared, group)] for group in spec.groups]
    shapes = tuple(
        (len(group), tasks, batch, spec.net.layers[group[0]].out_features, spec.net.layers[group[0]].in_features,
         tuple(tuple(c.shape) for c in cs))
        for group, cs in zip(spec.groups, coefs)
    )
    what = f"{spec.algebra!r} first_order {spec.first_order} groups {shapes}"

    def make_probe() -> selection.Probe:
        algebra, gen = spec.algebra, torch.Generator().manual_seed(0)

        def rand(*shape: int) -> Tensor:
            return torch.randn(*shape, generator=gen, dtype=x.dtype)

        cases = []
        for (layers, _, _, n_out, n_in, _), cs in zip(shapes, coefs):
            w = rand(layers, tasks, n_out, n_in)
            t, h = rand(layers, tasks, batch, n_out), rand(layers, tasks, batch, n_in)
            post = rand(layers, tasks, batch, n_out) if algebra.reads_post else None
            g0 = rand(*w.shape)
            cases.append((w, cs, t, h, post, g0, torch.empty_like(w), torch.empty_like(w), torch.empty_like(w),
                          [torch.zeros_like(c) for c in cs]))

        def probe(use: native.HebbianKernels | None) -> None:
            for w, cs, t, h, post, g0, g, d, scratch, grads in cases:
                algebra.forward(w, cs, t, h, post, use)
                algebra.adjoint(g.copy_(g0), w, cs, t, h, post, d, scratch, grads, spec.first_order, use)

        return probe

    return selection.choose(kernels, what, make_probe).native


def hebbian_lifetime(
    net: MLP,
    model: TargetModel,
    weights: dict[str, Tensor],
    prepared: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    oja: bool,
    plastic_bias: bool,
    segment: int = 0,
    start: int = 0,
    first_order: bool = False,
    kernels: str = "auto",
    update: PlasticUpdate | None = None,
) -> dict[str, Tensor]:
    """Weights after a lifetime of Hebb/Oja steps (or of ``update``'s algebra, e.g. a
    ``TermPool``), as one autograd node.

    ``segment`` > 0 keeps the state only every ``segment`` steps and recomputes each segment in
    the backward pass (the same gradients, bitwise; memory ~ S/segment + segment weight copies
    instead of S). ``start`` > 0 truncates the meta-gradient to steps ``start`` .. S-1: the
    state before is a constant, so the plastic layers' initial weights get zero gradient.
    ``first_order`` computes every update at detached weights (W' = W + u(stopgrad W)).
    ``kernels`` (``meta.unroll.kernels``): ``native`` runs the native kernels where they apply,
    ``torch`` keeps them out, ``auto`` runs whichever ``kernels.selection`` measured faster on
    this CPU at this lifetime's shapes.

    ``model`` gives the target activity of every plastic layer and its backward pass (see
    ``TargetModel``) from the prepared parameters other than the coefficients. Layer l's
    coefficients are ``prepared["coef.{l}.weight"]`` (and ``"coef.{l}.bias"`` for plastic biases).
    ``x`` (T, S, B, n_in), ``y`` (T, S, B, n_out), S >= 1, neither requiring grad. Gradients
    flow to ``weights`` (the initial ones) and ``prepared``.
    """
    algebra = update if update is not None else HebbOja(oja)
    groups = _groups(net, weights, prepared, algebra)
    first = next(iter(weights.values()))
    bound = native.bind(first.dtype, first.device) if kernels != "torch" and algebra.native_kernels else None
    spec = _LifetimeSpec(
        net, model, oja, plastic_bias, tuple(weights), tuple(prepared), groups, segment, start, first_order, bound,
        update,
    )
    if bound is not None and kernels == "auto" and not _measured_native(spec, prepared, x, bound):
        spec = dataclasses.replace(spec, kernels=None)
    out = _HebbianLifetime.apply(spec, x, y, *weights.values(), *prepared.values())
    final = dict(weights)
    for stacked, group in zip(out, groups):
        for j, l in enumerate(group):
            final[weight_key(l)] = stacked[j]
    final.update(zip(spec.bias_keys, out[len(groups):]))
    return final
