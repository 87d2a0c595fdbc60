"""Exact equivalences of the rule library (credit_assignment.md, flp.md):

FA with B = W^T, DFA with one hidden layer and D = W_out and frSF with constant |W| all equal
backprop; uSF with constant |W| equals backprop up to scale; the polynomial rule with Oja's or
Hebb's coefficients equals FLPRule; SGD through ``higher`` equals the native OML rule in
values and meta-gradients.
"""

from __future__ import annotations

import pytest
import torch

from metaplastic.losses import CrossEntropyLoss, MSELoss
from metaplastic.networks import MLP, bias_key, weight_key
from metaplastic.params import select
from metaplastic.rules import BackwardPathRule, FLPRule, PolynomialRule, SGDRule, TorchOptimRule

T, B = 2, 5


def make(sizes, activation="tanh", plastic=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    net = MLP.build(sizes, activation=activation, plastic=plastic)
    weights = {k: v + 0.1 if k.endswith(".bias") else v for k, v in net.init(g, torch.float64).items()}
    x = torch.randn(T, B, sizes[0], generator=g, dtype=torch.float64)
    y = torch.randn(T, B, sizes[-1], generator=g, dtype=torch.float64)
    return net, weights, x, y, g


def step(rule, net, weights, meta, x, y, loss=None):
    loss = loss or MSELoss()
    return rule.step(net, weights, rule.prepare(net, meta), net.forward(weights, x), y, loss)


def bp_step(net, weights, x, y, lr, loss=None):
    rule = SGDRule(lr_init=lr)
    meta = rule.init(net, torch.Generator(), torch.float64)
    return step(rule, net, weights, meta, x, y, loss)


def assert_same(a, b, keys=None):
    keys = keys or sorted(b)
    assert set(a) >= set(keys)
    for k in keys:
        torch.testing.assert_close(a[k], b[k], rtol=1e-12, atol=1e-14, msg=k)


@pytest.mark.parametrize("plastic", [None, [0, 2], [1, 2]])
def test_bp_path_equals_native_sgd(plastic):
    net, weights, x, y, g = make([3, 6, 4, 2], plastic=plastic)
    rule = BackwardPathRule("bp", lr_init=0.1)
    new = step(rule, net, weights, rule.init(net, g, torch.float64), x, y)
    assert_same(new, bp_step(net, weights, x, y, 0.1))


@pytest.mark.parametrize("last_hidden_bp", [False, True])
@pytest.mark.parametrize("plastic", [None, [0, 2]])
def test_feedback_alignment_with_transposed_weights_is_backprop(plastic, last_hidden_bp):
    net, weights, x, y, g = make([3, 6, 4, 2], plastic=plastic)
    rule = BackwardPathRule("fa", lr_init=0.1, last_hidden_bp=last_hidden_bp)
    meta = rule.init(net, g, torch.float64)
    random_b = step(rule, net, weights, meta, x, y)
    # B_l has the shape of W_l here (the signal is delta_l B_l): B = W is the paper's B = W^T
    aligned = {k: weights[f"layers.{k.split('.')[1]}.weight"] if k.startswith("feedback.") else v
               for k, v in meta.items()}
    reference = bp_step(net, weights, x, y, 0.1)
    assert_same(step(rule, net, weights, aligned, x, y), reference)
    # ... and with its random B it is not backprop below the top layer
    assert not torch.allclose(random_b[weight_key(0)], reference[weight_key(0)])
    assert_same(random_b, reference, [weight_key(2), bias_key(2)])


@pytest.mark.parametrize("loss", [MSELoss(), CrossEntropyLoss()])
def test_dfa_one_hidden_layer_with_output_weights_is_backprop(loss):
    net, weights, x, y, g = make([4, 7, 3])
    if isinstance(loss, CrossEntropyLoss):
        y = torch.softmax(y, -1)
    rule = BackwardPathRule("dfa", lr_init=0.2)
    meta = rule.init(net, g, torch.float64)
    assert meta["feedback.0.weight"].shape == weights[weight_key(1)].shape  # D_0: (n_out, n_hidden)
    meta["feedback.0.weight"] = weights[weight_key(1)]
    assert_same(step(rule, net, weights, meta, x, y, loss), bp_step(net, weights, x, y, 0.2, loss))


def test_dfa_last_hidden_bp_gives_the_last_hidden_layer_true_backprop():
    net, weights, x, y, g = make([3, 6, 4, 2])
    rule = BackwardPathRule("dfa", lr_init=0.1, last_hidden_bp=True)
    meta = rule.init(net, g, torch.float64)
    assert "feedback.1.weight" not in meta and "feedback.0.weight" in meta
    new, reference = step(rule, net, weights, meta, x, y), bp_step(net, weights, x, y, 0.1)
    assert_same(new, reference, [weight_key(1), bias_key(1), weight_key(2)])
    assert not torch.allclose(new[weight_key(0)], reference[weight_key(0)])
    assert "last-hidden BP" in rule.label()


def constant_magnitude(weights, c):
    return {k: c * torch.sign(v) if k.endswith(".weight") else v for k, v in weights.items()}


def test_sign_symmetry_with_constant_magnitude_is_backprop_up_to_scale():
    net, weights, x, y, g = make([3, 6, 4, 2])
    c = 0.3
    weights = constant_magnitude(weights, c)
    rule = BackwardPathRule("usf", lr_init=0.1)
    meta = rule.init(net, g, torch.float64)
    meta = {**meta, "feedback.2.scale": torch.tensor(0.6, dtype=torch.float64),
            "feedback.1.scale": torch.tensor(0.15, dtype=torch.float64)}
    prepared, trace = rule.prepare(net, meta), net.forward(weights, x)
    usf = rule.deltas(net, weights, prepared, trace, y, MSELoss())
    bp = BackwardPathRule("bp").deltas(net, weights, {}, trace, y, MSELoss())
    k2, k1 = 0.6 / c, 0.15 / c  # scale / |W| per feedback hop
    torch.testing.assert_close(usf[2], bp[2], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(usf[1], k2 * bp[1], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(usf[0], k2 * k1 * bp[0], rtol=1e-12, atol=1e-14)
    # with scale = |W| the whole step is backprop
    equal = {k: torch.tensor(c, dtype=torch.float64) if k.startswith("feedback.") else v for k, v in meta.items()}
    assert_same(step(rule, net, weights, equal, x, y), bp_step(net, weights, x, y, 0.1))


@pytest.mark.parametrize("name", ["frsf", "brsf"])
def test_sign_symmetry_with_magnitudes_equal_to_w_is_backprop(name):
    net, weights, x, y, g = make([3, 6, 4, 2])
    rule = BackwardPathRule(name, lr_init=0.1)
    meta = rule.init(net, g, torch.float64)
    if name == "frsf":  # fixed magnitudes |R| = |W|
        meta = {k: weights[f"layers.{k.split('.')[1]}.weight"] if k.startswith("feedback.") else v
                for k, v in meta.items()}
        assert_same(step(rule, net, weights, meta, x, y), bp_step(net, weights, x, y, 0.1))
    else:  # brSF redraws |R| every step: reproducible per step, different across steps
        first = step(rule, net, weights, meta, x, y)
        assert_same(step(rule, net, weights, meta, x, y), first)
        later = step(rule, net, {**weights, "state.step": torch.tensor(5)}, meta, x, y)
        assert not torch.allclose(later[weight_key(0)], first[weight_key(0)])


def test_batch_manhattan_steps_on_the_sign_of_the_gradient():
    net, weights, x, y, g = make([3, 6, 2])
    rule = BackwardPathRule("bp", lr_init=0.01, batch_manhattan=True)
    new = step(rule, net, weights, rule.init(net, g, torch.float64), x, y)
    grads = SGDRule().gradients(net, weights, net.forward(weights, x), y, MSELoss())
    for k, gk in grads.items():
        torch.testing.assert_close(new[k], weights[k] - 0.01 * torch.sign(gk), rtol=0, atol=1e-15)
    assert rule.label() == "BP + BM"


@pytest.mark.parametrize("form", ["oja", "hebb"])
@pytest.mark.parametrize("scope", ["synapse", "neuron"])
def test_polynomial_rule_with_oja_or_hebb_coefficients_is_flp(form, scope):
    net, weights, x, y, _ = make([3, 6, 4, 2])
    flp = FLPRule(form=form, scope=scope, beta_init=0.7)
    terms = {"pre_target": scope, **({"target2_w": scope} if form == "oja" else {})}
    poly = PolynomialRule(terms=terms, beta_init=0.7)
    flp_meta = flp.init(net, torch.Generator().manual_seed(3), torch.float64)
    poly_meta = poly.init(net, torch.Generator().manual_seed(3), torch.float64)
    g = torch.Generator().manual_seed(4)
    for key in [k for k in flp_meta if k.startswith("coef.")]:
        p = 0.05 * torch.randn(flp_meta[key].shape, generator=g, dtype=torch.float64)
        flp_meta[key] = p
        poly_meta[f"coef.pre_target.{key[5:]}"] = p
        if form == "oja":
            poly_meta[f"coef.target2_w.{key[5:]}"] = -p
    for key in [k for k in flp_meta if not k.startswith("coef.")]:
        torch.testing.assert_close(poly_meta[key], flp_meta[key], rtol=0, atol=0)
    for _ in range(2):  # from shared weights, then from per-task weights
        expected = step(flp, net, weights, flp_meta, x, y)
        got = step(poly, net, weights, poly_meta, x, y)
        assert_same(got, expected, [weight_key(l) for l in range(3)])
        weights = {**weights, **expected}
        x = x.flip(1)


def run_steps(rule, net, meta, x, y, n=3):
    weights = select(meta, "init")
    prepared = rule.prepare(net, meta)
    for s in range(n):
        xs, ys = x.roll(s, 1), y.roll(s, 1)
        weights = {**weights, **rule.step(net, weights, prepared, net.forward(weights, xs), ys, MSELoss())}
    return weights


@pytest.mark.parametrize("plastic", [None, [1, 2]])
def test_higher_sgd_equals_native_sgd_in_values_and_meta_gradients(plastic):
    net, weights, x, y, g = make([3, 6, 4, 2], plastic=plastic)
    native, viahigher = SGDRule(lr_init=0.1), TorchOptimRule(optimizer="SGD", lr_init=0.1)
    lr = native.init(net, g, torch.float64)
    assert set(lr) == set(viahigher.init(net, g, torch.float64))
    results = []
    for rule in (native, viahigher):
        meta = {**{f"init.{k}": v.clone().requires_grad_(True) for k, v in weights.items()},
                **{k: (v + 0.01 * i).requires_grad_(True) for i, (k, v) in enumerate(sorted(lr.items()))}}
        final = run_steps(rule, net, meta, x, y)
        objective = MSELoss().value(net.forward(final, x * 0.5).output, y).sum()
        grads = torch.autograd.grad(objective, list(meta.values()))
        results.append(({k: final[k] for k in final if k.startswith("layers.")}, dict(zip(meta, grads))))
    (w_native, g_native), (w_higher, g_higher) = results
    assert_same(w_higher, w_native)
    assert_same(g_higher, g_native)
    assert any(float(v.abs().sum()) > 0 for k, v in g_native.items() if k.startswith("lr."))


def test_higher_adam_matches_torch_adam_per_task():
    """The differentiable Adam steps each task's copy as torch.optim.Adam would on that task alone.

    higher adds eps before the bias correction (the Adam paper's "epsilon hat" form), torch
    after it; with eps = 0 the two are the same update."""
    net, weights, x, y, g = make([3, 5, 2])
    rule = TorchOptimRule(optimizer="Adam", lr_init=0.05, options={"betas": [0.8, 0.9], "eps": 0.0})
    final = run_steps(rule, net, {**{f"init.{k}": v for k, v in weights.items()}, **rule.init(net, g, torch.float64)},
                      x, y)
    for task in range(T):
        params = {k: v.clone().requires_grad_(True) for k, v in weights.items()}
        opt = torch.optim.Adam(list(params.values()), lr=0.05, betas=(0.8, 0.9), eps=0.0)
        for s in range(3):
            opt.zero_grad()
            out = net.forward(params, x.roll(s, 1)[task : task + 1]).output
            MSELoss().value(out, y.roll(s, 1)[task : task + 1]).sum().backward()
            opt.step()
        for k in params:
            torch.testing.assert_close(final[k][task], params[k].detach(), rtol=1e-10, atol=1e-12, msg=k)


def test_batch_manhattan_ignores_rounding_noise():
    """A gradient that is zero in exact arithmetic (here: noise of 1e-18) must not become a full
    +-lr step; real gradients of the same task keep their sign steps."""
    from metaplastic.rules.step_sizes import descend

    w = {"layers.0.weight": torch.zeros(2, 3, 4), "layers.1.weight": torch.zeros(2, 1, 3)}
    g = {"layers.0.weight": torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0)) * 1e-18,
         "layers.1.weight": torch.tensor([[[0.2, -0.1, 0.0]], [[-0.3, 0.05, 0.1]]])}
    prepared = {"lr.global": torch.tensor(0.1)}
    new = descend(w, g, prepared, "global", manhattan=True)
    assert torch.equal(new["layers.0.weight"], w["layers.0.weight"])
    assert torch.allclose(new["layers.1.weight"], -0.1 * torch.sign(g["layers.1.weight"]))
