"""Meta-gradients through the whole unrolled lifetime against central finite differences.

For every meta-parameter group, the directional derivative of meta_loss along a random
direction (autograd: <grad, d>) must equal (L(m + eps d) - L(m - eps d)) / (2 eps) in float64.

Two meta-gradients are checked: the one of ``meta_loss`` (whatever path ``run_lifetime``
takes when a gradient is recorded, fused or not) and the one of the step-by-step graph built
here from ``iterate_lifetime``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import tiny_config

from metaplastic.meta import Experiment, iterate_lifetime, meta_loss, run_lifetime
from metaplastic.params import group_of, select

RULES = {
    "flp_oja": ({"name": "flp", "form": "oja", "coef_init": 0.05}, None),
    "flp_hebb": ({"name": "flp", "form": "hebb", "coef_init": 0.05}, None),
    "oml_sgd": ({"name": "sgd", "lr_init": 0.05}, [1, 2]),
    # constrained parameters, neuron scope, plastic biases, deeper feedback, a frozen layer
    "flp_rich": (
        {
            "name": "flp",
            "form": "oja",
            "scope": "neuron",
            "plastic_bias": True,
            "coef_nonneg": True,
            "coef_init": 0.05,
            "beta_sigmoid": True,
            "beta_init": 0.4,
            "feedback_hidden": [3],
            "feedback_activation": "tanh",
            "hidden_multiplier": 2.0,
        },
        [1, 2],
    ),
    "oml_sgd_global": ({"name": "sgd", "lr_init": 0.05, "lr_scope": "global"}, None),
    # the reproduction study's FLP: bounded coefficients and feedback, the output from tanh(error)
    "flp_bounded": (
        {"name": "flp", "form": "oja", "coef_max": 0.2, "coef_init": 0.05, "feedback_activation": "tanh",
         "output_target": "bounded_signal", "beta_init": 0.9},
        None,
    ),
    # Oja's decay taken at the new weights (rule.oja_step: semi_implicit), the output from the raw error
    "flp_semi_implicit": (
        {"name": "flp", "form": "oja", "oja_step": "semi_implicit", "coef_max": 0.5, "coef_init": 0.1,
         "feedback_activation": "tanh", "output_target": "signal", "beta_init": 0.9},
        None,
    ),
}
GROUPS = {"flp": ["init", "feedback", "coef", "beta"], "sgd": ["init", "lr"]}


def build(rule_key, order, activation, remember=0, meta_batch=2):
    rule, plastic = RULES[rule_key]
    cfg = tiny_config(
        rule=rule,
        network={"activation": activation, "plastic": plastic},
        task={"order": order, "remember_size": remember},
        meta={"meta_batch": meta_batch},
    )
    exp = Experiment.from_config(cfg)
    meta = exp.init_meta()
    # shift hidden biases up so that no unit of a tiny ReLU net is dead for the whole episode
    meta = {k: v + 0.2 if k.startswith("init.") and k.endswith(".bias") else v for k, v in meta.items()}
    return exp, meta, exp.training_episodes(0)


def stepwise_meta_loss(net, rule, meta, ep, loss):
    """meta_loss through the step-by-step graph of iterate_lifetime."""
    weights = select(meta, "init")
    for _, new in iterate_lifetime(net, rule, meta, ep.x, ep.y, loss):
        weights = new
    qx = torch.cat([ep.query_x.flatten(1, 2), ep.remember_x], dim=1)
    qy = torch.cat([ep.query_y.flatten(1, 2), ep.remember_y], dim=1)
    return loss.value(net.forward(weights, qx).output, qy).mean()


def meta_gradients(objective, exp, meta, episodes):
    leaves = {k: v.clone().requires_grad_(True) for k, v in meta.items()}
    loss = objective(exp.net, exp.rule, leaves, episodes, exp.loss)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return float(loss.detach()), dict(zip(leaves, grads, strict=True))


def check_directional_derivatives(exp, meta, episodes, groups, eps, rtol=1e-5):
    assert set(group_of(k) for k in meta) == set(groups)
    value, library = meta_gradients(meta_loss, exp, meta, episodes)
    stepwise_value, stepwise = meta_gradients(stepwise_meta_loss, exp, meta, episodes)
    assert value == pytest.approx(stepwise_value, rel=1e-12)

    def f(m):
        with torch.no_grad():
            return float(meta_loss(exp.net, exp.rule, m, episodes, exp.loss))

    g = torch.Generator().manual_seed(123)
    for group in groups:
        keys = [k for k in meta if group_of(k) == group]
        assert keys
        direction = {k: torch.randn(meta[k].shape, generator=g, dtype=torch.float64) for k in keys}
        plus = f({**meta, **{k: meta[k] + eps * direction[k] for k in keys}})
        minus = f({**meta, **{k: meta[k] - eps * direction[k] for k in keys}})
        numeric = (plus - minus) / (2 * eps)
        for name, grads in (("meta_loss", library), ("step-by-step", stepwise)):
            for k in keys:
                assert grads[k] is not None, f"{name}: {k} gets no meta-gradient"
            norm = sum(float(grads[k].pow(2).sum()) for k in keys) ** 0.5
            assert norm > 1e-8, f"{name}: meta-gradient of group {group} is zero"
            analytic = sum(float((grads[k] * direction[k]).sum()) for k in keys)
            assert abs(numeric - analytic) <= rtol * abs(analytic) + 1e-9, (
                f"{name}, group {group}: autograd {analytic!r} vs finite differences {numeric!r}"
            )
        for k in keys:
            torch.testing.assert_close(library[k], stepwise[k], rtol=1e-9, atol=1e-12, msg=k)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("order", ["continual", "iid"])
@pytest.mark.parametrize("rule_key", ["flp_oja", "flp_hebb", "oml_sgd"])
def test_meta_gradient_matches_finite_differences(rule_key, order, activation):
    exp, meta, episodes = build(rule_key, order, activation)
    eps = 1e-6 if activation == "tanh" else 1e-7
    check_directional_derivatives(exp, meta, episodes, GROUPS[exp.rule.name], eps)


@pytest.mark.parametrize("rule_key", ["flp_rich", "oml_sgd_global", "flp_bounded", "flp_semi_implicit"])
def test_meta_gradient_constrained_and_global_variants(rule_key):
    exp, meta, episodes = build(rule_key, "continual", "tanh")
    check_directional_derivatives(exp, meta, episodes, GROUPS[exp.rule.name], 1e-6)


@pytest.mark.parametrize("rule_key", ["flp_oja", "oml_sgd"])
def test_meta_gradient_with_remember_points(rule_key):
    exp, meta, episodes = build(rule_key, "iid", "tanh", remember=3)
    assert episodes.remember_x.shape[1] == 3
    check_directional_derivatives(exp, meta, episodes, GROUPS[exp.rule.name], 1e-6)


@pytest.mark.parametrize("remember", [0, 3])
def test_meta_loss_value(remember):
    """Mean over tasks of the MSE over all query points and the remember points, by hand."""
    exp, meta, ep = build("flp_oja", "continual", "tanh", remember=remember, meta_batch=3)
    final = run_lifetime(exp.net, exp.rule, meta, ep.x, ep.y, exp.loss)
    per_task = []
    for k in range(3):
        xs = [ep.query_x[k, f, q] for f in range(ep.query_x.shape[1]) for q in range(ep.query_x.shape[2])]
        ys = [ep.query_y[k, f, q] for f in range(ep.query_y.shape[1]) for q in range(ep.query_y.shape[2])]
        xs += [ep.remember_x[k, r] for r in range(remember)]
        ys += [ep.remember_y[k, r] for r in range(remember)]
        weights = {n: (w[k] if w.dim() == (2 if n.endswith("weight") else 1) + 1 else w) for n, w in final.items()}
        sq = 0.0
        for x, y in zip(xs, ys, strict=True):
            h = x
            for l, spec in enumerate(exp.net.layers):
                a = weights[f"layers.{l}.weight"] @ h + weights[f"layers.{l}.bias"]
                h = torch.tanh(a) if spec.activation == "tanh" else a
            sq += float(((h - y) ** 2).sum())
        per_task.append(sq / len(xs))
    expected = sum(per_task) / 3
    assert float(meta_loss(exp.net, exp.rule, meta, ep, exp.loss)) == pytest.approx(expected, rel=1e-12)


def test_first_order_meta_gradient_is_gradient_at_final_weights():
    """First-order OML/MAML: d meta_loss / d W_0 = d query_loss / d W_T (dW_T/dW_0 := I)."""
    first = {"name": "sgd", "lr_init": 0.1, "first_order": True}
    cfg = tiny_config(rule=first, network={"plastic": None}, task={"remember_size": 2})
    exp = Experiment.from_config(cfg)
    meta = exp.init_meta()
    ep = exp.training_episodes(0)
    init_keys = [k for k in meta if k.startswith("init.")]

    leaves = {k: v.clone().requires_grad_(True) for k, v in meta.items()}
    first_loss = meta_loss(exp.net, exp.rule, leaves, ep, exp.loss)
    first_grads = torch.autograd.grad(first_loss, [leaves[k] for k in init_keys])

    # gradient of the query (+ remember) loss at the final weights, summed over the task copies
    final = run_lifetime(exp.net, exp.rule, meta, ep.x, ep.y, exp.loss)
    final = {k: v.detach().requires_grad_(True) for k, v in final.items()}
    qx = torch.cat([ep.query_x.flatten(1, 2), ep.remember_x], dim=1)
    qy = torch.cat([ep.query_y.flatten(1, 2), ep.remember_y], dim=1)
    query_loss = exp.loss.value(exp.net.forward(final, qx).output, qy).mean()
    final_grads = torch.autograd.grad(query_loss, [final[k[len("init."):]] for k in init_keys])
    for k, a, b in zip(init_keys, first_grads, final_grads, strict=True):
        assert b.dim() == a.dim() + 1  # every layer is plastic: final weights are per task
        torch.testing.assert_close(a, b.sum(0), rtol=1e-10, atol=1e-13, msg=k)

    # ... and it is not the exact (second-order) meta-gradient
    exact_rule = dataclasses.replace(exp.rule, first_order=False)
    leaves = {k: v.clone().requires_grad_(True) for k, v in meta.items()}
    exact = torch.autograd.grad(meta_loss(exp.net, exact_rule, leaves, ep, exp.loss), [leaves[k] for k in init_keys])
    diff = sum(float((a - b).pow(2).sum()) for a, b in zip(first_grads, exact, strict=True)) ** 0.5
    scale = sum(float(b.pow(2).sum()) for b in exact) ** 0.5
    assert diff > 1e-3 * scale
