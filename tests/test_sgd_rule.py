"""SGDRule.step is exactly one SGD step with torch.autograd gradients, per task."""

from __future__ import annotations

import pytest
import torch

from metaplastic.errors import ConfigError
from metaplastic.losses import CrossEntropyLoss, MSELoss
from metaplastic.meta import run_lifetime
from metaplastic.networks import MLP, bias_key, weight_key
from metaplastic.params import prefixed
from metaplastic.rules import SGDRule

T, B = 2, 4
SIZES = [3, 5, 4, 2]


def setup(plastic, activation, output_activation="identity", scope="layer", seed=0, first_order=False):
    g = torch.Generator().manual_seed(seed)
    net = MLP.build(SIZES, activation=activation, output_activation=output_activation, plastic=plastic)
    rule = SGDRule(lr_scope=scope, first_order=first_order)
    meta = rule.init(net, g, torch.float64)
    # a distinct step size per layer, so that a layer picking another layer's lr shows up
    meta = {k: torch.tensor(0.1 + 0.05 * i, dtype=torch.float64) for i, k in enumerate(sorted(meta))}
    weights = {k: v + 0.2 if k.endswith(".bias") else v for k, v in net.init(g, torch.float64).items()}
    x = torch.randn(T, B, SIZES[0], generator=g, dtype=torch.float64)
    y = torch.randn(T, B, SIZES[-1], generator=g, dtype=torch.float64)
    return net, rule, meta, weights, x, y


def autograd_step(net, rule, meta, weights, x, y, loss):
    """Per-task SGD step: each task gets its own copy of the plastic weights, so the gradient
    of the summed per-task losses w.r.t. copy k is the gradient of task k's loss."""
    plastic_keys = [f(l) for l in net.plastic_layers for f in (weight_key, bias_key)]
    copies = {}
    for k in plastic_keys:
        w = weights[k]
        shared_dim = 2 if k.endswith(".weight") else 1
        copies[k] = (w.expand(T, *w.shape) if w.dim() == shared_dim else w).clone().requires_grad_(True)
    out = net.forward({**weights, **copies}, x).output
    per_task = loss.value(out, y)
    assert per_task.shape == (T,)
    grads = torch.autograd.grad(per_task.sum(), [copies[k] for k in plastic_keys])
    new = {}
    for k, g in zip(plastic_keys, grads, strict=True):
        lr = meta["lr.global"] if rule.lr_scope == "global" else meta[f"lr.{k.split('.')[1]}"]
        new[k] = copies[k].detach() - lr * g
    return new


PLASTIC = {"all": None, "top_two": [1, 2], "frozen_middle": [0, 2], "output_only": [-1]}


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("plastic", sorted(PLASTIC))
def test_step_equals_autograd_sgd(plastic, scope, activation):
    net, rule, meta, weights, x, y = setup(PLASTIC[plastic], activation, scope=scope)
    prepared = rule.prepare(net, meta)
    loss = MSELoss()
    plastic_keys = {f(l) for l in net.plastic_layers for f in (weight_key, bias_key)}
    for _ in range(2):  # from shared 2-D weights, then from per-task weights
        new = rule.step(net, weights, prepared, net.forward(weights, x), y, loss)
        assert set(new) == plastic_keys
        ref = autograd_step(net, rule, meta, weights, x, y, loss)
        for k in plastic_keys:
            torch.testing.assert_close(new[k], ref[k], rtol=1e-12, atol=1e-13)
            assert (new[k] - weights[k]).abs().max() > 1e-8
        weights = {**weights, **new}
        x, y = x.flip(1), y + 0.5  # new data for the second step


@pytest.mark.parametrize("plastic", ["top_two", "frozen_middle"])
def test_step_with_cross_entropy_and_sigmoid_output(plastic):
    net, rule, meta, weights, x, _ = setup(PLASTIC[plastic], "tanh", output_activation="sigmoid", seed=4)
    labels = torch.randint(0, SIZES[-1], (T, B), generator=torch.Generator().manual_seed(1))
    y = torch.nn.functional.one_hot(labels, SIZES[-1]).to(torch.float64)
    loss = CrossEntropyLoss()
    new = rule.step(net, weights, rule.prepare(net, meta), net.forward(weights, x), y, loss)
    ref = autograd_step(net, rule, meta, weights, x, y, loss)
    assert set(new) == set(ref)
    for k in ref:
        torch.testing.assert_close(new[k], ref[k], rtol=1e-12, atol=1e-13)


def test_lr_keys():
    net = MLP.build(SIZES, plastic=[0, 2])
    g = torch.Generator().manual_seed(0)
    assert set(SGDRule(lr_scope="layer", lr_init=0.2).init(net, g, torch.float64)) == {"lr.0", "lr.2"}
    meta = SGDRule(lr_scope="global", lr_init=0.2).init(net, g, torch.float64)
    assert set(meta) == {"lr.global"} and float(meta["lr.global"]) == pytest.approx(0.2)


@pytest.mark.parametrize("plastic", ["top_two", "frozen_middle", "output_only"])
def test_lifetime_changes_only_plastic_layers(plastic):
    net, rule, meta, weights, _, _ = setup(PLASTIC[plastic], "tanh", seed=2)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(T, 3, B, SIZES[0], generator=g, dtype=torch.float64)
    y = torch.randn(T, 3, B, SIZES[-1], generator=g, dtype=torch.float64)
    full_meta = {**prefixed(weights, "init"), **meta}
    final = run_lifetime(net, rule, full_meta, x, y, MSELoss())
    assert set(final) == set(weights)
    for l in range(len(net.layers)):
        for key in (weight_key(l), bias_key(l)):
            if l in net.plastic_layers:
                assert final[key].shape[0] == T
                assert (final[key] - weights[key]).abs().min() > 0
            else:
                assert final[key] is weights[key] or torch.equal(final[key], weights[key])
                assert final[key].shape == weights[key].shape


def test_first_order_step_has_same_value():
    net, _, meta, weights, x, y = setup([1, 2], "tanh", seed=6)
    second = SGDRule(first_order=False)
    first = SGDRule(first_order=True)
    trace = net.forward(weights, x)
    a = second.step(net, weights, second.prepare(net, meta), trace, y, MSELoss())
    b = first.step(net, weights, first.prepare(net, meta), trace, y, MSELoss())
    for k in a:
        assert torch.equal(a[k], b[k])


@pytest.mark.parametrize("kwargs", [{"lr_scope": "synapse"}, {"lr_init": -0.1}])
def test_invalid_hyper_parameters(kwargs):
    with pytest.raises(ConfigError):
        SGDRule(**kwargs)
