"""The fused lifetime (FLPRule.fused_lifetime -> hebbian_lifetime, a hand-written backward pass
over the whole inner loop) against a straightforward reference.

The reference below is plain autograd over the flp.md formulas, written from scratch: the
forward pass with per-task weights, the supervision signal, the feedback pathway, the target
activity, the Hebb / Oja update of weights and plastic biases, the coefficient scopes and
constraints, and the post-lifetime MSE on the query points. Nothing of the library's inner loop
is reused; only the experiment builder (for shapes, names and seeded data) is.

Everything runs in float64 and compares the meta-loss and the meta-gradient of every group
(init, feedback, coef, beta). The default network (3 -> 8 -> 8 -> 8 -> 6 -> 1) has two layers
of one shape, which the fused path updates together.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from metaplastic.config import UnrollConfig, config_from_dict
from metaplastic.meta import Experiment
from metaplastic.meta.lifetime import run_lifetime
from metaplastic.meta.objective import meta_loss

ACT = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "identity": lambda v: v}
GROUPS = ("init", "feedback", "coef", "beta")


def make_experiment(rule: dict, hidden=(8, 8, 8, 6), plastic=None, meta_batch: int = 1, activation: str = "relu",
                    dtype: str = "float64"):
    network = {"hidden": list(hidden), "activation": activation}
    if plastic is not None:
        network["plastic"] = plastic
    cfg = config_from_dict({
        "name": "fast",
        "seed": 3,
        "dtype": dtype,
        "task": {"name": "sine", "n_functions": 2, "steps_per_function": 3, "batch_size": 4, "query_per_function": 3},
        "network": network,
        "rule": {"name": "flp", **rule},
        "meta": {"meta_batch": meta_batch},
    })
    return Experiment.from_config(cfg)


def perturbed_meta(exp: Experiment, trainable=GROUPS, scale: float = 0.2) -> dict[str, torch.Tensor]:
    """Initial meta-parameters moved off their init (P != 0 and varied, beta != 0.5 ...)."""
    g = torch.Generator().manual_seed(11)
    meta = {}
    for k, v in exp.init_meta().items():
        v = v + scale * torch.randn(v.shape, generator=g, dtype=v.dtype)
        if k.startswith("coef."):
            v = v.abs() * 0.005 + 0.001  # keep the inner loop tame
            if exp.rule.coef_nonneg:  # raw values under a softplus
                v = torch.log(torch.expm1(v))
        meta[k] = v.requires_grad_(k.split(".")[0] in trainable)
    return meta


# ---- the reference -------------------------------------------------------------------------------
def ref_coefficients(rule: dict, meta: dict, layer: int, last: int, out_f: int):
    scope = rule.get("scope", "synapse")
    coef = {k[len("coef."):]: v for k, v in meta.items() if k.startswith("coef.")}
    if rule.get("coef_nonneg", False):
        coef = {k: F.softplus(v) for k, v in coef.items()}
    if rule.get("coef_max") is not None:
        coef = {k: rule["coef_max"] * torch.sigmoid(v) for k, v in coef.items()}
    if scope == "synapse":
        p_w = coef[f"{layer}.weight"]
        p_b = coef.get(f"{layer}.bias", torch.zeros(out_f, dtype=p_w.dtype))
    elif scope == "neuron":
        p_w = coef[f"{layer}"]
        p_b = p_w[:, 0]
    elif scope == "layer":
        p_w = p_b = coef[f"{layer}"]
    else:
        p_w = p_b = coef["global"]
    mult = rule.get("hidden_multiplier", 1.0)
    if layer != last:
        p_w, p_b = p_w * mult, p_b * mult
    return p_w, p_b


def ref_forward(exp: Experiment, weights: dict, x: torch.Tensor):
    hs, h = [x], x
    for l, spec in enumerate(exp.net.layers):
        w, b = weights[l]
        a = torch.matmul(h, w.transpose(-1, -2)) + b.unsqueeze(-2)
        h = ACT[spec.activation](a)
        hs.append(h)
    return hs


def ref_meta_loss(exp: Experiment, rule: dict, meta: dict) -> torch.Tensor:
    ep = exp.training_episodes(0)
    net = exp.net
    last = len(net.layers) - 1
    oja = rule.get("form", "oja") == "oja"
    fb_act = ACT[rule.get("feedback_activation", "relu")]
    depth = len(rule.get("feedback_hidden", ())) + 1
    uses_signal_as_target = rule.get("output_target", "feedback") != "feedback"
    bounded = rule.get("output_target") == "bounded_signal"
    weights = {l: (meta[f"init.layers.{l}.weight"], meta[f"init.layers.{l}.bias"]) for l in range(len(net.layers))}
    for step in range(ep.x.shape[1]):
        x, y = ep.x[:, step], ep.y[:, step]
        hs = ref_forward(exp, weights, x)
        signal = y - hs[-1] if rule.get("signal", "error") == "error" else y
        new = {}
        for l in net.plastic_layers:
            w, b = weights[l]
            if l == last and uses_signal_as_target:
                t = torch.tanh(signal) if bounded else signal
            else:
                f = signal
                for k in range(depth):
                    f = fb_act(torch.matmul(f, meta[f"feedback.{l}.{k}.weight"].t()) + meta[f"feedback.{l}.{k}.bias"])
                beta = meta[f"beta.{l}"]
                if rule.get("beta_sigmoid", False):
                    beta = torch.sigmoid(beta)
                t = beta * f + (1 - beta) * hs[l + 1]
            p_w, p_b = ref_coefficients(rule, meta, l, last, net.layers[l].out_features)
            hebb = torch.matmul(t.transpose(-1, -2), hs[l])
            sq = (t ** 2).sum(-2)
            if rule.get("oja_step") == "semi_implicit":  # W' = W + P (hebb - s W'), solved for W'
                dw = (w + p_w * hebb) / (1 + p_w * sq.unsqueeze(-1)) - w
            else:
                dw = p_w * (hebb - sq.unsqueeze(-1) * w) if oja else p_w * hebb
            new_b = b
            if rule.get("plastic_bias", False) and rule.get("oja_step") == "semi_implicit":
                new_b = (b + p_b * t.sum(-2)) / (1 + p_b * sq)
            elif rule.get("plastic_bias", False):
                db = t.sum(-2) - sq * b if oja else t.sum(-2)
                new_b = b + p_b * db
            new[l] = (w + dw, new_b)
        weights.update(new)
    qx, qy = ep.query_x.flatten(1, 2), ep.query_y.flatten(1, 2)
    out = ref_forward(exp, weights, qx)[-1]
    return ((out - qy) ** 2).mean(dim=(-2, -1)).mean()


# ---- comparison helpers --------------------------------------------------------------------------
def grads_of(loss: torch.Tensor, meta: dict) -> dict[str, torch.Tensor]:
    keys = [k for k, v in meta.items() if v.requires_grad]
    return dict(zip(keys, torch.autograd.grad(loss, [meta[k] for k in keys])))


def assert_close(got: dict, want: dict, rtol: float = 1e-9) -> None:
    assert got.keys() == want.keys()
    for k in want:
        scale = want[k].abs().max().clamp_min(1e-12)
        err = (got[k] - want[k]).abs().max() / scale
        assert err < rtol, f"{k}: relative error {float(err):.3g}"


STEP = UnrollConfig(path="step")  # the step-by-step graph, the reference of the fused path


def library_loss(exp: Experiment, meta: dict, fused: bool = True) -> torch.Tensor:
    unroll = UnrollConfig(path="fused") if fused else STEP
    return meta_loss(exp.net, exp.rule, meta, exp.training_episodes(0), exp.loss, unroll)


def fused_node(tensor: torch.Tensor) -> bool:
    """Whether the fused lifetime's node is at most two graph steps behind ``tensor``."""
    frontier = [tensor.grad_fn]
    for _ in range(3):
        if any(type(f).__name__ == "_HebbianLifetimeBackward" for f in frontier):
            return True
        frontier = [n for f in frontier if f is not None for n, _ in f.next_functions]
    return False


def check_against_reference(rule: dict, trainable=GROUPS, **kw) -> None:
    exp = make_experiment(rule, **kw)
    meta = perturbed_meta(exp, trainable)
    # the fused path must really be the one taken
    weights = run_lifetime(exp.net, exp.rule, meta, *exp.training_episodes(0)[:2], exp.loss)
    plastic_key = f"layers.{exp.net.plastic_layers[0]}.weight"
    assert fused_node(weights[plastic_key])

    loss = library_loss(exp, meta)
    ref = ref_meta_loss(exp, rule, meta)
    assert torch.isclose(loss, ref, rtol=1e-11, atol=0), (loss.item(), ref.item())
    assert ref.item() > 0
    want = grads_of(ref, meta)
    for group in trainable:  # the comparison means something: every group gets a gradient
        assert any(g.abs().max() > 0 for k, g in want.items() if k.startswith(group + ".")), group
    assert_close(grads_of(loss, meta), want)


# ---- the cases -----------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["oja", "hebb"])
@pytest.mark.parametrize("scope", ["synapse", "neuron", "layer", "global"])
@pytest.mark.parametrize("tasks", [1, 2])
def test_forms_scopes_tasks(form, scope, tasks):
    check_against_reference({"form": form, "scope": scope}, meta_batch=tasks)


@pytest.mark.parametrize("form", ["oja", "hebb"])
@pytest.mark.parametrize("scope", ["synapse", "neuron", "global"])
@pytest.mark.parametrize("tasks", [1, 2])
def test_plastic_bias(form, scope, tasks):
    check_against_reference({"form": form, "scope": scope, "plastic_bias": True}, meta_batch=tasks)


SEMI_IMPLICIT = {"form": "oja", "oja_step": "semi_implicit", "coef_max": 0.02, "coef_init": 0.005}


@pytest.mark.parametrize("scope", ["synapse", "neuron", "layer", "global"])
@pytest.mark.parametrize("tasks", [1, 2])
def test_semi_implicit_oja(scope, tasks):
    check_against_reference({**SEMI_IMPLICIT, "scope": scope}, meta_batch=tasks)


@pytest.mark.parametrize("options", [{"output_target": "signal"}, {"coef_max": None, "coef_nonneg": True},
                                     {"feedback_hidden": [3], "signal": "target"}, {"plastic_bias": True},
                                     {"plastic_bias": True, "scope": "neuron"}])
def test_semi_implicit_oja_options(options):
    check_against_reference({**SEMI_IMPLICIT, **options}, plastic=[1, 2, 4], meta_batch=2)


@pytest.mark.parametrize("plastic", [[1, 2], [1, 3], [0], [4], [2, 3, 4]])
@pytest.mark.parametrize("tasks", [1, 2])
def test_frozen_layers(plastic, tasks):
    check_against_reference({"form": "oja", "plastic_bias": True}, plastic=plastic, meta_batch=tasks)


@pytest.mark.parametrize(
    "options",
    [
        {"feedback_hidden": [3], "feedback_activation": "tanh"},
        {"feedback_hidden": [3, 2], "scope": "neuron", "plastic_bias": True},
        {"signal": "target"},
        {"output_target": "signal"},
        {"output_target": "bounded_signal"},
        {"output_target": "bounded_signal", "feedback_hidden": [3], "plastic_bias": True},
        {"signal": "target", "output_target": "signal", "form": "hebb"},
        {"beta_sigmoid": True, "beta_init": 0.3, "coef_nonneg": True, "coef_init": 0.1},
        {"hidden_multiplier": 3.0, "scope": "layer", "plastic_bias": True},
        {"feedback_activation": "sigmoid", "feedback_init_scale": 2.0},
    ],
)
@pytest.mark.parametrize("tasks", [1, 2])
def test_rule_options(options, tasks):
    check_against_reference(options, meta_batch=tasks)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "identity"])
def test_network_activations(activation):
    check_against_reference({"form": "oja", "plastic_bias": True}, activation=activation, meta_batch=2)


@pytest.mark.parametrize("trainable", [("init",), ("feedback",), ("coef",), ("beta",), ("feedback", "coef")])
def test_partly_frozen_meta_parameters(trainable):
    check_against_reference({"form": "oja", "plastic_bias": True}, trainable=trainable, plastic=[1, 2, 4])


def test_general_path_agrees():
    """The step-by-step graph (the general path) gives the same meta-gradient too."""
    rule = {"form": "oja", "scope": "synapse", "plastic_bias": True}
    exp = make_experiment(rule, plastic=[1, 2, 4], meta_batch=2)
    meta = perturbed_meta(exp)
    assert_close(grads_of(library_loss(exp, meta, fused=False), meta), grads_of(library_loss(exp, meta), meta))


def test_float32_matches_float64():
    rule = {"form": "oja"}
    exp64 = make_experiment(rule, meta_batch=2)
    exp32 = make_experiment(rule, meta_batch=2, dtype="float32")
    meta64 = perturbed_meta(exp64)
    meta32 = {k: v.detach().float().requires_grad_(True) for k, v in meta64.items()}
    g64 = grads_of(library_loss(exp64, meta64), meta64)
    g32 = grads_of(library_loss(exp32, meta32), meta32)
    assert_close({k: v.double() for k, v in g32.items()}, g64, rtol=1e-4)


def test_same_final_weights_without_grad():
    """The fused path returns the weights iterating ``step`` gives (it is only taken for grad)."""
    exp = make_experiment({"form": "oja", "plastic_bias": True}, meta_batch=2)
    meta = perturbed_meta(exp)
    x, y = exp.training_episodes(0)[:2]
    fused = run_lifetime(exp.net, exp.rule, meta, x, y, exp.loss)
    with torch.no_grad():
        plain = run_lifetime(exp.net, exp.rule, meta, x, y, exp.loss)
    assert fused.keys() == plain.keys()
    for k in plain:
        torch.testing.assert_close(fused[k].detach(), plain[k], rtol=1e-12, atol=1e-14)


def test_dispatch():
    exp = make_experiment({"form": "oja"})
    meta = perturbed_meta(exp)
    x, y = exp.training_episodes(0)[:2]
    key = f"layers.{exp.net.plastic_layers[0]}.weight"

    assert fused_node(run_lifetime(exp.net, exp.rule, meta, x, y, exp.loss)[key])
    assert fused_node(run_lifetime(exp.net, exp.rule, meta, x, y, exp.loss, UnrollConfig(path="fused"))[key])
    assert not fused_node(run_lifetime(exp.net, exp.rule, meta, x, y, exp.loss, STEP)[key])
    # data that needs a gradient takes the general path
    x_grad = x.clone().requires_grad_(True)
    assert not fused_node(run_lifetime(exp.net, exp.rule, meta, x_grad, y, exp.loss)[key])
    # nothing to differentiate: no graph at all
    frozen = {k: v.detach() for k, v in meta.items()}
    assert run_lifetime(exp.net, exp.rule, frozen, x, y, exp.loss)[key].grad_fn is None


def test_second_backward_needs_retain_graph():
    exp = make_experiment({"form": "oja"})
    meta = perturbed_meta(exp)
    loss = library_loss(exp, meta)
    keys = [k for k, v in meta.items() if v.requires_grad]
    g1 = torch.autograd.grad(loss, [meta[k] for k in keys], retain_graph=True)
    g2 = torch.autograd.grad(loss, [meta[k] for k in keys])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(loss, [meta[k] for k in keys])


def test_meta_trainer_step_uses_fused_path():
    """One MetaTrainer step, fused vs general path: same updated meta-parameters."""
    from metaplastic.meta import MetaTrainer

    cfg = make_experiment({"form": "oja", "plastic_bias": True}, meta_batch=2).config
    results = []
    for path in ("fused", "step"):
        changed = cfg.replace(meta=dataclasses.replace(cfg.meta, unroll=UnrollConfig(path=path)))
        trainer = MetaTrainer(Experiment.from_config(copy.deepcopy(changed)))
        assert trainer.lifetime is not None and trainer.lifetime.fused == (path == "fused")
        metrics = trainer.meta_step()
        results.append((metrics, {k: v.detach().clone() for k, v in trainer.meta.items()}))
    (m1, p1), (m2, p2) = results
    assert m1["meta_loss"] == pytest.approx(m2["meta_loss"], rel=1e-12)
    for k in p1:
        torch.testing.assert_close(p1[k], p2[k], rtol=1e-10, atol=1e-12)
