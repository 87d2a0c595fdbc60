"""Fused, memory-lean autograd for Hebbian/Oja plasticity.

    W' = W + P * (T^T H)                         (Hebb)
    W' = W + P * (T^T H - diag(sum_b T^2) W)     (Oja)

with T (tasks, B, out) the target activity, H (tasks, B, in) the presynaptic activity and P
broadcastable to W.

Two levels:

- ``hebbian_update``: one step as one autograd node. Plain autograd keeps the weight-sized
  bracket alive for every inner step; this Function saves only W (which the next forward pass
  keeps alive anyway), P and the small activities, and recomputes T^T H in the backward pass.
- ``hebbian_lifetime``: a whole lifetime as one autograd node (the fast path of the
  meta-gradient). The forward pass runs the inner loop without a graph and keeps only the
  plastic weights of every step. The backward pass walks the steps in reverse with the adjoint
  recursion of the weights, written by hand with in-place buffers,

      G_t = G_{t+1} - diag(s_t) (P * G_{t+1}) + sum over uses of W_t in the forward pass of step t
      dL/dP += G_{t+1} * (T_t^T H_t - diag(s_t) W_t)

  and differentiates everything small (forward activations, supervision signal, feedback
  pathway, target activity, plastic biases) with autograd on a one-step graph that it rebuilds
  from the saved weights. Same math as the step-by-step graph; only float roundoff differs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from metaplastic.networks import MLP, Trace, bias_key, weight_key


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


def _hebbian_forward(w: Tensor, p: Tensor, t: Tensor, h: Tensor, oja: bool) -> Tensor:
    """The new weights, computed into one fresh buffer (no graph)."""
    m = torch.matmul(t.transpose(-1, -2), h)
    if oja:
        s = (t * t).sum(-2).unsqueeze(-1)
        m.addcmul_(s, w, value=-1.0)
    return torch.addcmul(w, m, p, out=m)  # m is a fresh buffer: update it in place


class _HebbianUpdate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: Tensor, p: Tensor, t: Tensor, h: Tensor, oja: bool) -> Tensor:  # type: ignore[override]
        ctx.oja = oja
        ctx.save_for_backward(w, p, t, h)
        return _hebbian_forward(w, p, t, h, oja)

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


def hebbian_bias_update(b: Tensor, p: Tensor, t: Tensor, oja: bool) -> Tensor:
    """New biases after one step: a bias is a synapse from a constant input of 1."""
    hebb_b = t.sum(-2)
    if oja:
        hebb_b = hebb_b - (t * t).sum(-2) * b
    return b + p * hebb_b


# ---- a whole lifetime as one autograd node ------------------------------------------------
Targets = Callable[[dict[str, Tensor], Trace, Tensor], dict[int, Tensor]]


@dataclass(frozen=True)
class _LifetimeSpec:
    net: MLP
    targets: Targets
    oja: bool
    plastic_bias: bool
    weight_keys: tuple[str, ...]
    prepared_keys: tuple[str, ...]

    @property
    def plastic(self) -> list[int]:
        return self.net.plastic_layers

    @property
    def state_keys(self) -> list[str]:
        """The weights that change during the lifetime."""
        keys = []
        for l in self.plastic:
            keys.append(weight_key(l))
            if self.plastic_bias:
                keys.append(bias_key(l))
        return keys


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
) -> tuple[Tensor, Tensor]:
    """Backward of W' = update(W, P, T, H) for one layer, in place.

    ``g`` holds dL/dW' on entry and the update path's part of dL/dW on exit. ``grad_p`` (P's
    gradient accumulator, or None when P needs none) gets dL/dP added. ``d`` and ``scratch``
    (needed for Oja or dL/dP) are buffers of g's shape. Returns dL/dT and dL/dH.
    """
    torch.mul(g, p, out=d)  # dL/d(bracket)
    grad_t = torch.matmul(h, d.transpose(-1, -2))
    grad_h = torch.matmul(t, d)
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
        if grad_p.shape == g.shape[1:]:  # per-synapse coefficients: accumulate in place
            for k in range(g.shape[0]):
                grad_p.addcmul_(m[k], g[k])
        else:
            grad_p.add_(_sum_to(m.mul_(g), grad_p.shape))
    if oja:
        g.addcmul_(s, d, value=-1.0)
    return grad_t, grad_h


class _HebbianLifetime(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: _LifetimeSpec, x: Tensor, y: Tensor, *tensors: Tensor):  # type: ignore[override]
        n_w = len(spec.weight_keys)
        weights = dict(zip(spec.weight_keys, tensors[:n_w]))
        prepared = dict(zip(spec.prepared_keys, tensors[n_w:]))
        state_keys = spec.state_keys
        saved: list[Tensor] = []  # per step: pre-activations, then the state (from step 1 on)
        n_steps = x.shape[1]
        for step in range(n_steps):
            if step:
                saved.extend(weights[k] for k in state_keys)
            trace = spec.net.forward(weights, x[:, step])
            saved.extend(trace.pre)
            targets = spec.targets(prepared, trace, y[:, step])
            new = {}
            for l in spec.plastic:
                wk, t = weight_key(l), targets[l]
                new[wk] = _hebbian_forward(weights[wk], prepared[f"coef.{l}.weight"], t, trace.inputs[l], spec.oja)
                if spec.plastic_bias:
                    bk = bias_key(l)
                    new[bk] = hebbian_bias_update(weights[bk], prepared[f"coef.{l}.bias"], t, spec.oja)
            weights.update(new)
        ctx.spec = spec
        ctx.n_steps = n_steps
        ctx.save_for_backward(x, y, *tensors, *saved)
        return tuple(weights[k] for k in state_keys)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_state: Tensor | None):  # type: ignore[override]
        spec: _LifetimeSpec = ctx.spec
        net, oja = spec.net, spec.oja
        n_layers = len(net.layers)
        saved = ctx.saved_tensors
        x, y = saved[0], saved[1]
        n_w, n_p = len(spec.weight_keys), len(spec.prepared_keys)
        inputs = saved[2:2 + n_w + n_p]
        per_step = saved[2 + n_w + n_p:]
        needs = ctx.needs_input_grad[3:]
        state_keys = spec.state_keys
        n_state = len(state_keys)
        n_tasks = x.shape[0]
        init = dict(zip(spec.weight_keys, inputs[:n_w]))
        need_w = dict(zip(spec.weight_keys, needs[:n_w]))
        need_p = dict(zip(spec.prepared_keys, needs[n_w:]))
        plastic = spec.plastic
        plastic_set = set(plastic)
        coef_keys = {f"coef.{l}.weight" for l in plastic}

        def step_slices(step: int) -> tuple[dict[str, Tensor], list[Tensor]]:
            """The state before step ``step`` and that step's pre-activations."""
            begin = step * (n_layers + n_state) - n_state if step else 0
            if step:
                state = dict(zip(state_keys, per_step[begin:begin + n_state]))
                begin += n_state
            else:
                state = {k: init[k] for k in state_keys}
            return state, list(per_step[begin:begin + n_layers])

        # Leaves of the one-step graphs: small meta-parameters shared by all steps.
        shared: dict[str, Tensor] = {}
        base_weights: dict[str, Tensor] = {}
        for k, v in init.items():
            if k not in state_keys and k.endswith("bias") and need_w[k]:
                shared[k] = base_weights[k] = v.detach().requires_grad_(True)
            else:
                base_weights[k] = v.detach()
        prepared: dict[str, Tensor] = {}
        for k, v in zip(spec.prepared_keys, inputs[n_w:]):
            if k not in coef_keys and need_p[k]:
                shared[k] = prepared[k] = v.detach().requires_grad_(True)
            else:
                prepared[k] = v.detach()
        shared_grads: dict[str, Tensor | None] = dict.fromkeys(shared)

        # Adjoints of the plastic state; hand-accumulated gradients of weight-sized inputs.
        adj: dict[str, Tensor] = {}
        for k, g in zip(state_keys, grad_state):
            shape = (n_tasks, *init[k].shape)
            if g is None:
                adj[k] = init[k].new_zeros(shape)
            elif k.endswith("weight"):
                adj[k] = g.expand(shape).clone(memory_format=torch.contiguous_format)
            else:
                adj[k] = g
        scratch_d = {l: torch.empty_like(adj[weight_key(l)]) for l in plastic}
        grad_coef: dict[int, Tensor | None] = {}
        for l in plastic:
            ck = f"coef.{l}.weight"
            grad_coef[l] = torch.zeros_like(prepared[ck]) if need_p[ck] else None
        scratch_m = {
            l: torch.empty_like(adj[weight_key(l)]) for l in plastic if oja or grad_coef[l] is not None
        }
        frozen_grad = {
            weight_key(l): torch.zeros_like(init[weight_key(l)])
            for l in range(n_layers)
            if l not in plastic_set and need_w[weight_key(l)]
        }
        pre_layers = [l for l in range(n_layers) if l in plastic_set or weight_key(l) in frozen_grad]

        import time as _t
        global TIMES
        TIMES = [0.0]*5
        for step in range(ctx.n_steps - 1, -1, -1):
            _c0 = _t.perf_counter()
            state, pre = step_slices(step)
            bias_leaves: dict[str, Tensor] = {}
            with torch.enable_grad():
                weights = dict(base_weights)
                for k, v in state.items():
                    if k.endswith("bias"):
                        v = bias_leaves[k] = v.detach().requires_grad_(True)
                    weights[k] = v
                # The input as a leaf puts every pre-activation in the graph.
                trace = net.replay(weights, x[:, step].detach().requires_grad_(True), pre)
                targets = spec.targets(prepared, trace, y[:, step])
                new_bias = {}
                if spec.plastic_bias:
                    for l in plastic:
                        new_bias[bias_key(l)] = hebbian_bias_update(
                            weights[bias_key(l)], prepared[f"coef.{l}.bias"], targets[l], oja
                        )
            _c1 = _t.perf_counter()
            outs: list[Tensor] = []
            grads_out: list[Tensor] = []
            for l in plastic:
                wk, t, h = weight_key(l), targets[l], trace.inputs[l]
                grad_t, grad_h = _adjoint_step(
                    adj[wk], state[wk], prepared[f"coef.{l}.weight"], t.detach(), h.detach(), oja,
                    scratch_d[l], scratch_m.get(l), grad_coef[l],
                )
                if t.requires_grad:
                    outs.append(t)
                    grads_out.append(grad_t)
                if l > 0:
                    outs.append(h)
                    grads_out.append(grad_h)
                if spec.plastic_bias and new_bias[bias_key(l)].requires_grad:
                    outs.append(new_bias[bias_key(l)])
                    grads_out.append(adj[bias_key(l)])
            _c2 = _t.perf_counter()
            wrt = [trace.pre[l] for l in pre_layers] + list(bias_leaves.values()) + list(shared.values())
            if outs:
                grads = torch.autograd.grad(outs, wrt, grads_out, allow_unused=True)
            else:
                grads = (None,) * len(wrt)
            _c3 = _t.perf_counter()
            n_pre, n_b = len(pre_layers), len(bias_leaves)
            for l, delta in zip(pre_layers, grads[:n_pre]):
                if delta is None:
                    continue
                wk, h = weight_key(l), trace.inputs[l].detach()
                if l in plastic_set:
                    adj[wk].baddbmm_(delta.transpose(-1, -2), h)
                else:
                    frozen_grad[wk].addmm_(delta.reshape(-1, delta.shape[-1]).t(), h.reshape(-1, h.shape[-1]))
            for (k, leaf), g in zip(bias_leaves.items(), grads[n_pre:n_pre + n_b]):
                adj[k] = g if g is not None else torch.zeros_like(leaf)
            for k, g in zip(shared, grads[n_pre + n_b:]):
                if g is not None:
                    shared_grads[k] = g if shared_grads[k] is None else shared_grads[k] + g
            _c4 = _t.perf_counter()
            for _i, _v in enumerate((_c1-_c0, _c2-_c1, _c3-_c2, _c4-_c3)): TIMES[_i] += _v

        result: list[Tensor | None] = [None, None, None]
        for k, v in init.items():
            if not need_w[k]:
                result.append(None)
            elif k in adj:
                result.append(_sum_to(adj[k], v.shape))
            elif k in frozen_grad:
                result.append(frozen_grad[k])
            else:
                g = shared_grads.get(k)
                result.append(g if g is not None else torch.zeros_like(v))
        for k, v in zip(spec.prepared_keys, inputs[n_w:]):
            g = grad_coef[int(k.split(".")[1])] if k in coef_keys else shared_grads.get(k)
            if not need_p[k]:
                result.append(None)
            else:
                result.append(g if g is not None else torch.zeros_like(v))
        return tuple(result)


def hebbian_lifetime(
    net: MLP,
    targets: Targets,
    weights: dict[str, Tensor],
    prepared: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    oja: bool,
    plastic_bias: bool,
) -> dict[str, Tensor]:
    """Weights after a lifetime of Hebb/Oja steps, as one autograd node.

    ``targets(prepared, trace, y_step)`` gives the target activity of every plastic layer;
    layer l's coefficients are ``prepared["coef.{l}.weight"]`` (and ``"coef.{l}.bias"`` for
    plastic biases). ``x`` (T, S, B, n_in), ``y`` (T, S, B, n_out), S >= 1, neither requiring
    grad. Gradients flow to ``weights`` (the initial ones) and ``prepared``.
    """
    spec = _LifetimeSpec(net, targets, oja, plastic_bias, tuple(weights), tuple(prepared))
    out = _HebbianLifetime.apply(spec, x, y, *weights.values(), *prepared.values())
    return {**weights, **dict(zip(spec.state_keys, out))}
