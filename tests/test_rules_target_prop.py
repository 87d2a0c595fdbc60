"""Target propagation on a toy problem: the inverses learn (their reconstruction loss falls)
and the propagated targets move the network's output toward the label."""

from __future__ import annotations

import pytest
import torch

from metaplastic.losses import CrossEntropyLoss, MSELoss
from metaplastic.networks import MLP, weight_key
from metaplastic.params import select
from metaplastic.rules import TargetPropRule
from metaplastic.rules.inner_state import STEP_KEY


def toy(name, loss, seed=0, **options):
    g = torch.Generator().manual_seed(seed)
    net = MLP.build([4, 12, 10, 3], activation="tanh")
    rule = TargetPropRule(name, lr_init=0.05, inverse_lr_init=0.1, sigma_init=0.05, alpha_init=0.05, **options)
    meta = {**{f"init.{k}": v for k, v in net.init(g, torch.float64).items()}, **rule.init(net, g, torch.float64)}
    x = torch.randn(1, 32, 4, generator=g, dtype=torch.float64)
    if isinstance(loss, CrossEntropyLoss):
        y = torch.nn.functional.one_hot(torch.randint(0, 3, (1, 32), generator=g), 3).to(torch.float64)
    else:
        y = torch.randn(1, 32, 3, generator=g, dtype=torch.float64)
    return net, rule, meta, x, y


def reconstruction(net, rule, weights, inv, x):
    trace = net.forward(weights, x)
    return sum(float(((rule._inverse(net, inv, l, trace.post[l])[0] - trace.inputs[l]) ** 2).mean())
               for l in rule._inverted_layers(net))


def train_inverses(net, rule, meta, x, y, loss, steps):
    weights = select(meta, "init")
    prepared = rule.prepare(net, meta)
    for _ in range(steps):
        weights = {**weights, **rule.step(net, weights, prepared, net.forward(weights, x), y, loss)}
    return weights, prepared


@pytest.mark.parametrize("name", ["dtp", "sdtp"])
def test_inverse_loss_decreases_and_forward_weights_wait_their_turn(name):
    loss = MSELoss()
    net, rule, meta, x, y = toy(name, loss, schedule="alternating", alternate_every=1000)
    prepared = rule.prepare(net, meta)
    before = reconstruction(net, rule, select(meta, "init"), prepared, x)
    weights, _ = train_inverses(net, rule, meta, x, y, loss, 300)
    after = reconstruction(net, rule, weights, weights, x)
    assert after < 0.5 * before
    for l in range(3):  # inverse phase only: forward weights untouched
        assert torch.equal(weights[weight_key(l)], meta[f"init.{weight_key(l)}"])
    assert int(weights[STEP_KEY]) == 300


@pytest.mark.parametrize("loss", [MSELoss(), CrossEntropyLoss()])
@pytest.mark.parametrize("name", ["dtp", "sdtp"])
def test_targets_move_the_output_toward_the_label(name, loss):
    net, rule, meta, x, y = toy(name, loss, schedule="alternating", alternate_every=1000)
    weights, prepared = train_inverses(net, rule, meta, x, y, loss, 300)
    trace = net.forward(weights, x)
    targets = rule.targets(net, weights, weights, prepared, trace, y, loss)
    base = float(loss.value(trace.output, y).sum())
    for layer in (0, 1):  # run the rest of the network from the hidden target of this layer
        h = targets[layer]
        for l in range(layer + 1, 3):
            h = rule._layer(net, weights, l, h)
        assert float(loss.value(h, y).sum()) < base, f"target of layer {layer} does not lower the loss"


def test_parallel_schedule_learns_the_toy_problem():
    loss = MSELoss()
    net, rule, meta, x, y = toy("dtp", loss)
    meta = {**meta, **{k: torch.tensor(1.0, dtype=torch.float64) for k in meta if k.startswith("lr.")}}
    start = float(loss.value(net.forward(select(meta, "init"), x).output, y).sum())
    weights, _ = train_inverses(net, rule, meta, x, y, loss, 300)
    assert float(loss.value(net.forward(weights, x).output, y).sum()) < 0.6 * start
