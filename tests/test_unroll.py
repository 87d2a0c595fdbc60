"""Memory modes of the meta-gradient (``meta.unroll``): checkpointing gives exactly the full
gradients, truncation equals its definition, first order equals its definition; on the fused
FLP path and on the generic step-by-step path."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import tiny_config_dict
from test_fast_paths import GROUPS, fused_node, make_experiment, perturbed_meta

from metaplastic.config import UnrollConfig, config_from_dict
from metaplastic.errors import ConfigError
from metaplastic.meta import Experiment
from metaplastic.meta.lifetime import run_lifetime
from metaplastic.meta.objective import meta_loss
from metaplastic.meta.trainer import MetaTrainer
from metaplastic.params import select

N_STEPS = 6  # make_experiment: 2 functions x 3 steps


def grads_of(loss: torch.Tensor, meta: dict) -> dict[str, torch.Tensor]:
    """Gradients of every trainable meta-parameter (zeros where the loss does not reach it)."""
    keys = [k for k, v in meta.items() if v.requires_grad]
    grads = torch.autograd.grad(loss, [meta[k] for k in keys], allow_unused=True, materialize_grads=True)
    return dict(zip(keys, grads))


def loss_and_grads(exp: Experiment, meta: dict, unroll: UnrollConfig, fused: bool = True):
    unroll = dataclasses.replace(unroll, path="auto" if fused else "step")
    loss = meta_loss(exp.net, exp.rule, meta, exp.training_episodes(0), exp.loss, unroll)
    return loss.detach(), grads_of(loss, meta)


def assert_identical(a, b) -> None:
    assert torch.equal(a[0], b[0])
    assert a[1].keys() == b[1].keys()
    for k in a[1]:
        assert torch.equal(a[1][k], b[1][k]), k


def assert_close(a, b, rtol: float = 1e-10) -> None:
    torch.testing.assert_close(a[0], b[0], rtol=rtol, atol=0)
    assert a[1].keys() == b[1].keys()
    for k in a[1]:
        scale = float(b[1][k].abs().max().clamp_min(1e-12))
        assert float((a[1][k] - b[1][k]).abs().max()) <= rtol * scale, k


def reference_loss(exp: Experiment, meta: dict, first_graph_step: int = 0, first_order: bool = False):
    """The definitions, written out: the state before ``first_graph_step`` detached
    (truncation); every update computed at detached weights and added to the live ones (first
    order)."""
    ep = exp.training_episodes(0)
    net, rule = exp.net, exp.rule
    weights = select(meta, "init")
    prepared = rule.prepare(net, meta)
    for step in range(ep.x.shape[1]):
        if step == first_graph_step and step > 0:
            weights = {k: v if v is meta.get(f"init.{k}") else v.detach() for k, v in weights.items()}
        inputs = {k: v.detach() for k, v in weights.items()} if first_order else weights
        trace = net.forward(inputs, ep.x[:, step])
        new = rule.step(net, inputs, prepared, trace, ep.y[:, step], exp.loss)
        if first_order:
            new = {k: weights[k] + (v - inputs[k]) if k in weights else v for k, v in new.items()}
        weights = {**weights, **new}
    out = net.forward(weights, ep.query_x.flatten(1, 2)).output
    loss = exp.loss.value(out, ep.query_y.flatten(1, 2)).mean()
    return loss.detach(), grads_of(loss, meta)


FLP_CASES = [
    {"form": "oja"},
    {"form": "hebb"},
    {"form": "oja", "plastic_bias": True},
    {"form": "oja", "scope": "neuron", "plastic_bias": True},
    {"form": "oja", "oja_step": "semi_implicit", "coef_max": 0.2, "coef_init": 0.05, "plastic_bias": True},
]


@pytest.mark.parametrize("rule", FLP_CASES, ids=lambda r: "-".join(str(v) for v in r.values()))
@pytest.mark.parametrize("segment", [1, 2, 4, N_STEPS, 50])
@pytest.mark.parametrize("tasks", [1, 2])
def test_fused_checkpointing_gives_exactly_the_full_gradients(rule, segment, tasks) -> None:
    exp = make_experiment(rule, meta_batch=tasks)
    meta = perturbed_meta(exp)
    full = loss_and_grads(exp, meta, UnrollConfig())
    assert {k.split(".")[0] for k, g in full[1].items() if g.abs().max() > 0} == set(GROUPS)
    assert_identical(loss_and_grads(exp, meta, UnrollConfig(mode="checkpoint", segment=segment)), full)


@pytest.mark.parametrize("rule", FLP_CASES, ids=lambda r: "-".join(str(v) for v in r.values()))
@pytest.mark.parametrize("last_steps", [1, 4, N_STEPS, 10])
def test_fused_truncation_equals_its_definition(rule, last_steps) -> None:
    exp = make_experiment(rule, meta_batch=2)
    meta = perturbed_meta(exp)
    unroll = UnrollConfig(mode="truncate", last_steps=last_steps)
    want = reference_loss(exp, meta, first_graph_step=max(0, N_STEPS - last_steps))
    got = loss_and_grads(exp, meta, unroll)
    assert_close(got, want)
    assert_close(loss_and_grads(exp, meta, unroll, fused=False), want, rtol=1e-12)
    plastic_init = [f"init.layers.{l}.weight" for l in exp.net.plastic_layers]
    if last_steps < N_STEPS:
        assert all(float(got[1][k].abs().max()) == 0 for k in plastic_init)
        assert any(float(g.abs().max()) > 0 for k, g in got[1].items() if k.startswith("coef."))
        # and it is a different gradient from the full one
        full = loss_and_grads(exp, meta, UnrollConfig())
        assert not torch.allclose(full[1][plastic_init[0]], got[1][plastic_init[0]])
    else:
        assert_close(got, loss_and_grads(exp, meta, UnrollConfig()))
    # truncation plus checkpointing of the window (fused path)
    both = loss_and_grads(exp, meta, UnrollConfig(mode="checkpoint", segment=2))
    assert_identical(both, loss_and_grads(exp, meta, UnrollConfig()))


@pytest.mark.parametrize("rule", FLP_CASES, ids=lambda r: "-".join(str(v) for v in r.values()))
@pytest.mark.parametrize("tasks", [1, 2])
def test_fused_first_order_equals_its_definition(rule, tasks) -> None:
    exp = make_experiment(rule, meta_batch=tasks)
    meta = perturbed_meta(exp)
    unroll = UnrollConfig(mode="first_order")
    weights = run_lifetime(exp.net, exp.rule, meta, *exp.training_episodes(0)[:2], exp.loss, unroll)
    assert fused_node(weights[f"layers.{exp.net.plastic_layers[0]}.weight"])  # the fused path ran
    got = loss_and_grads(exp, meta, unroll)
    want = reference_loss(exp, meta, first_order=True)
    assert_close(got, want)
    assert_close(loss_and_grads(exp, meta, unroll, fused=False), want, rtol=1e-12)
    full = loss_and_grads(exp, meta, UnrollConfig())
    assert any(not torch.allclose(got[1][k], full[1][k], rtol=1e-6, atol=0) for k in full[1])
    assert {k.split(".")[0] for k, g in got[1].items() if g.abs().max() > 0} == set(GROUPS)


STEP_PATH_RULES = [  # with updates large enough that first order differs from full
    {"name": "flp", "form": "oja", "coef_init": 0.05},
    {"name": "sgd", "lr_init": 0.1},
    {"name": "fa"},
    {"name": "poly", "coef_init": {"pre_target": 0.05, "target2_w": -0.05}},
    {"name": "dtp"},
]


def step_path_experiment(rule: dict) -> tuple[Experiment, dict]:
    data = tiny_config_dict(rule=rule, task={"steps_per_function": 3})
    data["rule"] = rule
    exp = Experiment.from_config(config_from_dict(data))
    meta = {k: v.clone().requires_grad_(True) for k, v in exp.init_meta().items()}
    return exp, meta


@pytest.mark.parametrize("rule", STEP_PATH_RULES, ids=lambda r: r["name"])
@pytest.mark.parametrize("segment", [1, 2, 5])
def test_step_path_checkpointing_gives_exactly_the_full_gradients(rule, segment) -> None:
    exp, meta = step_path_experiment(rule)
    full = loss_and_grads(exp, meta, UnrollConfig(), fused=False)
    assert any(float(g.abs().max()) > 0 for g in full[1].values())
    got = loss_and_grads(exp, meta, UnrollConfig(mode="checkpoint", segment=segment), fused=False)
    assert_identical(got, full)


@pytest.mark.parametrize("rule", STEP_PATH_RULES, ids=lambda r: r["name"])
def test_step_path_truncation_and_first_order_equal_their_definitions(rule) -> None:
    exp, meta = step_path_experiment(rule)
    n_steps = exp.training_episodes(0).x.shape[1]
    got = loss_and_grads(exp, meta, UnrollConfig(mode="truncate", last_steps=2), fused=False)
    assert_close(got, reference_loss(exp, meta, first_graph_step=n_steps - 2), rtol=1e-12)
    got = loss_and_grads(exp, meta, UnrollConfig(mode="first_order"))
    want = reference_loss(exp, meta, first_order=True)
    assert_close(got, want, rtol=1e-12)
    full = loss_and_grads(exp, meta, UnrollConfig())
    torch.testing.assert_close(got[0], full[0], rtol=1e-12, atol=0)  # same lifetime, other gradient
    assert any(not torch.allclose(got[1][k], full[1][k], rtol=1e-9, atol=0) for k in full[1])


def test_first_order_sgd_is_the_rules_own_first_order_option() -> None:
    exp, meta = step_path_experiment({"name": "sgd"})
    got = loss_and_grads(exp, meta, UnrollConfig(mode="first_order"))
    exp_fo, _ = step_path_experiment({"name": "sgd", "first_order": True})
    assert_close(got, loss_and_grads(exp_fo, meta, UnrollConfig()), rtol=1e-12)


@pytest.mark.parametrize(
    ("unroll", "message"),
    [
        ({"mode": "sometimes"}, "meta.unroll.mode must be one of full, checkpoint, truncate, first_order"),
        ({"mode": "truncate"}, "needs meta.unroll.last_steps"),
        ({"mode": "checkpoint", "segment": 0}, "meta.unroll.segment must be >= 1"),
        ({"segmnt": 3}, "unknown key 'meta.unroll.segmnt'"),
    ],
)
def test_bad_unroll_configs_are_rejected(unroll, message) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(tiny_config_dict(meta={"unroll": unroll}))


@pytest.mark.parametrize("rule", [{"name": "flp", "form": "oja"}, {"name": "sgd"}], ids=["flp", "sgd"])
def test_checkpointed_meta_training_follows_the_same_trajectory(rule) -> None:
    """Three meta-steps with checkpointing land on exactly the meta-parameters of full mode."""
    results = []
    for unroll in ({"mode": "full"}, {"mode": "checkpoint", "segment": 2}):
        data = tiny_config_dict(meta={"steps": 3, "unroll": unroll})
        data["rule"] = rule
        trainer = MetaTrainer(Experiment.from_config(config_from_dict(data)))
        for _ in range(3):
            trainer.meta_step()
        results.append(trainer.meta)
    assert results[0].keys() == results[1].keys()
    for k in results[0]:
        assert torch.equal(results[0][k], results[1][k]), k


def test_compiled_inner_step_gives_the_same_numbers() -> None:
    """meta.unroll.compile: torch.compile of the step-by-step path, against eager (float64)."""
    exp, meta = step_path_experiment({"name": "sgd", "lr_init": 0.1})
    eager = loss_and_grads(exp, meta, UnrollConfig(), fused=False)
    compiled = loss_and_grads(exp, meta, UnrollConfig(compile=True), fused=False)
    assert_close(compiled, eager, rtol=1e-9)
