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
TargetsVJP = Callable[
    [dict[str, Tensor], Trace, Tensor, dict[int, Tensor], set[str]],
    tuple[dict[int, Tensor], dict[str, Tensor]],
]


def activation_vjp(name: str, grad: Tensor, pre: Tensor) -> Tensor:
    """dL/da from dL/dphi(a) for a named activation, given the pre-activation a."""
    if name == "relu":
        return torch.ops.aten.threshold_backward(grad, pre, 0)
    if name == "identity":
        return grad
    return grad * get_activation(name).derivative(pre)


def _add(a: Tensor | None, b: Tensor) -> Tensor:
    return b if a is None else a + b


@dataclass(frozen=True)
class _LifetimeSpec:
    net: MLP
    targets: Targets
    targets_vjp: TargetsVJP
    oja: bool
    plastic_bias: bool
    weight_keys: tuple[str, ...]
    prepared_keys: tuple[str, ...]

    @property
    def state_keys(self) -> list[str]:
        """The weights that change during the lifetime."""
        keys = []
        for l in self.net.plastic_layers:
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
        saved: list[Tensor] = []  # per step: the state (from step 1 on), then the pre-activations
        n_steps = x.shape[1]
        for step in range(n_steps):
            if step:
                saved.extend(weights[k] for k in state_keys)
            trace = spec.net.forward(weights, x[:, step])
            saved.extend(trace.pre)
            targets = spec.targets(prepared, trace, y[:, step])
            new = {}
            for l in spec.net.plastic_layers:
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
        last = n_layers - 1
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
        prepared = dict(zip(spec.prepared_keys, inputs[n_w:]))
        need_w = dict(zip(spec.weight_keys, needs[:n_w]))
        need_p = dict(zip(spec.prepared_keys, needs[n_w:]))
        plastic = net.plastic_layers
        plastic_set = set(plastic)
        acts = [spec.activation for spec in net.layers]
        coef_keys = {f"coef.{l}.{kind}" for l in plastic for kind in ("weight", "bias")}
        wanted = {k for k in spec.prepared_keys if need_p[k] and k not in coef_keys}

        # Adjoints of the plastic state (dL/d state after the step being processed).
        adj: dict[str, Tensor] = {}
        for k, g in zip(state_keys, grad_state):
            shape = (n_tasks, *init[k].shape)
            if g is None:
                adj[k] = init[k].new_zeros(shape)
            else:
                adj[k] = g.expand(shape).clone(memory_format=torch.contiguous_format)
        # Gradients accumulated over the lifetime.
        grads: dict[str, Tensor | None] = dict.fromkeys(spec.weight_keys + spec.prepared_keys)
        for l in plastic:
            ck = f"coef.{l}.weight"
            if need_p[ck]:
                grads[ck] = torch.zeros_like(prepared[ck])
        for l in range(n_layers):
            if l not in plastic_set and need_w[weight_key(l)]:
                grads[weight_key(l)] = torch.zeros_like(init[weight_key(l)])
        # Scratch buffers, shared by all layers.
        largest = max(init[weight_key(l)].numel() for l in plastic) if plastic else 0
        buf_d = init[state_keys[0]].new_empty(n_tasks * largest) if plastic else None
        buf_m = init[state_keys[0]].new_empty(n_tasks * largest) if plastic else None

        def scratch(buf: Tensor, l: int) -> Tensor:
            shape = (n_tasks, *init[weight_key(l)].shape)
            return buf[: n_tasks * init[weight_key(l)].numel()].view(shape)

        lowest = min(
            [*plastic, *(l for l in range(n_layers) if need_w[weight_key(l)] or need_w[bias_key(l)])],
            default=n_layers,
        )

        for step in range(ctx.n_steps - 1, -1, -1):
            begin = step * (n_state + n_layers) - n_state if step else 0
            if step:
                state = dict(zip(state_keys, per_step[begin:begin + n_state]))
                begin += n_state
            else:
                state = {k: init[k] for k in state_keys}
            weights = {**init, **state}
            pre = per_step[begin:begin + n_layers]
            post = [get_activation(acts[l]).fn(pre[l]) for l in range(n_layers)]
            trace = Trace(post[-1], [x[:, step], *post[:-1]], list(pre), post)
            y_step = y[:, step]
            targets = spec.targets(prepared, trace, y_step)

            # Weight-sized part, by hand, and the biases' update path.
            grad_post: dict[int, Tensor] = {}
            grad_targets: dict[int, Tensor] = {}
            for l in plastic:
                wk, t, h = weight_key(l), targets[l], trace.inputs[l]
                grad_t, grad_h = _adjoint_step(
                    adj[wk], state[wk], prepared[f"coef.{l}.weight"], t, h, oja,
                    scratch(buf_d, l), scratch(buf_m, l), grads[f"coef.{l}.weight"],
                )
                if spec.plastic_bias:
                    bk, pk = bias_key(l), f"coef.{l}.bias"
                    g_b, p_b, b = adj[bk], prepared[pk], state[bk]
                    g_hebb = g_b * p_b  # dL/d(hebb_b)
                    grad_t.add_(g_hebb.unsqueeze(-2))
                    hebb_b = t.sum(-2)
                    if oja:
                        s_b = (t * t).sum(-2)
                        grad_t.addcmul_(t, (g_hebb * b).unsqueeze(-2), value=-2.0)
                        hebb_b = hebb_b - s_b * b
                        adj[bk] = g_b - g_hebb * s_b
                    if need_p[pk]:
                        grads[pk] = _add(grads[pk], _sum_to(g_b * hebb_b, p_b.shape))
                grad_targets[l] = grad_t
                if l > 0:
                    grad_post[l - 1] = grad_h

            # Small part: the rule's target activities, then the network, by hand.
            grad_rule_post, grad_rule = spec.targets_vjp(prepared, trace, y_step, grad_targets, wanted)
            for l, g in grad_rule_post.items():
                grad_post[l] = _add(grad_post.get(l), g)
            for k, g in grad_rule.items():
                grads[k] = _add(grads[k], g)
            for l in range(last, lowest - 1, -1):
                g = grad_post.get(l)
                if g is None:
                    continue
                delta = activation_vjp(acts[l], g, pre[l])
                wk, bk, h = weight_key(l), bias_key(l), trace.inputs[l]
                if spec.plastic_bias and l in plastic_set:
                    adj[bk] = adj[bk] + delta.sum(-2)
                elif need_w[bk]:
                    grads[bk] = _add(grads[bk], delta.sum((0, 1)))
                if l in plastic_set:
                    adj[wk].baddbmm_(delta.transpose(-1, -2), h)
                elif need_w[wk]:
                    grads[wk].addmm_(delta.reshape(-1, delta.shape[-1]).t(), h.reshape(-1, h.shape[-1]))
                if l > lowest:
                    grad_post[l - 1] = _add(grad_post.get(l - 1), torch.matmul(delta, weights[wk]))

        result: list[Tensor | None] = [None, None, None]
        for k, v in [*init.items(), *prepared.items()]:
            needed = need_w[k] if k in need_w else need_p[k]
            if not needed:
                result.append(None)
                continue
            g = _sum_to(adj[k], v.shape) if k in adj else grads[k]
            result.append(g.reshape(v.shape) if g is not None else torch.zeros_like(v))
        return tuple(result)


def hebbian_lifetime(
    net: MLP,
    targets: Targets,
    targets_vjp: TargetsVJP,
    weights: dict[str, Tensor],
    prepared: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    oja: bool,
    plastic_bias: bool,
) -> dict[str, Tensor]:
    """Weights after a lifetime of Hebb/Oja steps, as one autograd node.

    ``targets(prepared, trace, y_step)`` gives the target activity of every plastic layer and
    ``targets_vjp(prepared, trace, y_step, grad_targets, wanted)`` its backward: the gradients
    w.r.t. the post-activations ``trace.post[l]`` (the output is ``post[-1]``) and w.r.t. the
    prepared parameters named in ``wanted`` (all but the coefficients). Layer l's coefficients are ``prepared["coef.{l}.weight"]`` (and ``"coef.{l}.bias"`` for
    plastic biases). ``x`` (T, S, B, n_in), ``y`` (T, S, B, n_out), S >= 1, neither requiring
    grad. Gradients flow to ``weights`` (the initial ones) and ``prepared``.
    """
    spec = _LifetimeSpec(net, targets, targets_vjp, oja, plastic_bias, tuple(weights), tuple(prepared))
    out = _HebbianLifetime.apply(spec, x, y, *weights.values(), *prepared.values())
    return {**weights, **dict(zip(spec.state_keys, out))}
