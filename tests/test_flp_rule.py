"""FLPRule.step against the flp.md formulas, written out with plain Python loops.

The reference below recomputes everything from the raw meta-parameters with Python floats:
the forward pass, the supervision signal, the feedback pathway, the target activity, the
coefficient of every synapse for every scope (with softplus / multiplier applied by hand),
and the Hebb / Oja sums over the batch. Nothing of the library is reused except the
parameter naming.
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from metaplastic.errors import ConfigError
from metaplastic.losses import MSELoss
from metaplastic.networks import MLP, bias_key, weight_key
from metaplastic.rules import FLPRule

T, B = 2, 3
SIZES = [3, 5, 4, 2]

PHI = {
    "relu": lambda v: max(v, 0.0),
    "tanh": math.tanh,
    "sigmoid": lambda v: 1.0 / (1.0 + math.exp(-v)),
    "identity": lambda v: v,
}


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


# ---- the reference -------------------------------------------------------------------------
def task_tensor(t: torch.Tensor, task: int, shared_dim: int) -> list:
    """The value of a weight for one task: shared tensors have ``shared_dim`` dimensions."""
    return (t if t.dim() == shared_dim else t[task]).tolist()


def ref_forward(net: MLP, weights: dict, x_sample: list, task: int):
    """Presynaptic inputs and postsynaptic activities of every layer for one sample."""
    h = x_sample
    inputs, posts = [], []
    for l, spec in enumerate(net.layers):
        w = task_tensor(weights[weight_key(l)], task, 2)
        b = task_tensor(weights[bias_key(l)], task, 1)
        inputs.append(h)
        a = [sum(w[o][i] * h[i] for i in range(spec.in_features)) + b[o] for o in range(spec.out_features)]
        h = [PHI[spec.activation](v) for v in a]
        posts.append(h)
    return inputs, posts


def ref_coefficients(rule: FLPRule, net: MLP, meta: dict, l: int):
    """Per-synapse coefficient P[o][i] and per-bias coefficient Pb[o] of layer l."""
    spec = net.layers[l]
    n_out, n_in = spec.out_features, spec.in_features
    if rule.scope == "synapse":
        pw = meta[f"coef.{l}.weight"].tolist()
        pb = meta[f"coef.{l}.bias"].tolist() if rule.plastic_bias else [0.0] * n_out
    elif rule.scope == "neuron":
        p = meta[f"coef.{l}"].tolist()
        pw = [[p[o][0]] * n_in for o in range(n_out)]
        pb = [p[o][0] for o in range(n_out)]
    else:
        key = f"coef.{l}" if rule.scope == "layer" else "coef.global"
        c = meta[key].item()
        pw = [[c] * n_in for _ in range(n_out)]
        pb = [c] * n_out
    transform = softplus if rule.coef_nonneg else (lambda v: v)
    mult = rule.hidden_multiplier if l != len(net.layers) - 1 else 1.0
    pw = [[mult * transform(v) for v in row] for row in pw]
    pb = [mult * transform(v) for v in pb]
    return pw, pb


def ref_feedback(rule: FLPRule, meta: dict, l: int, s: list) -> list:
    f = s
    for k in range(len(rule.feedback_hidden) + 1):
        w = meta[f"feedback.{l}.{k}.weight"].tolist()
        c = meta[f"feedback.{l}.{k}.bias"].tolist()
        f = [PHI[rule.feedback_activation](sum(w[o][j] * f[j] for j in range(len(f))) + c[o]) for o in range(len(w))]
    return f


def ref_flp_step(rule: FLPRule, net: MLP, meta: dict, weights: dict, x: torch.Tensor, y: torch.Tensor) -> dict:
    """New plastic weights (T, ...) from the flp.md formulas, sample by sample."""
    last = len(net.layers) - 1
    new = {}
    for l in net.plastic_layers:
        spec = net.layers[l]
        n_out, n_in = spec.out_features, spec.in_features
        pw, pb = ref_coefficients(rule, net, meta, l)
        per_task_w, per_task_b = [], []
        for task in range(x.shape[0]):
            w = task_tensor(weights[weight_key(l)], task, 2)
            b = task_tensor(weights[bias_key(l)], task, 1)
            targets, pres = [], []
            for sample in range(x.shape[1]):
                inputs, posts = ref_forward(net, weights, x[task, sample].tolist(), task)
                y_hat, y_true = posts[-1], y[task, sample].tolist()
                s = [yt - yh for yt, yh in zip(y_true, y_hat, strict=True)] if rule.signal == "error" else y_true
                if l == last and rule.output_target == "signal":
                    t = s
                else:
                    beta = meta[f"beta.{l}"].item()
                    beta = sigmoid(beta) if rule.beta_sigmoid else beta
                    f = ref_feedback(rule, meta, l, s)
                    t = [beta * f[o] + (1.0 - beta) * posts[l][o] for o in range(n_out)]
                targets.append(t)
                pres.append(inputs[l])
            new_w = [[0.0] * n_in for _ in range(n_out)]
            new_b = [0.0] * n_out
            for o in range(n_out):
                sq = sum(targets[bb][o] ** 2 for bb in range(len(targets)))
                for i in range(n_in):
                    hebb = sum(targets[bb][o] * pres[bb][i] for bb in range(len(targets)))
                    if rule.form == "oja":
                        hebb -= sq * w[o][i]
                    new_w[o][i] = w[o][i] + pw[o][i] * hebb
                hebb_b = sum(targets[bb][o] for bb in range(len(targets)))
                if rule.form == "oja":
                    hebb_b -= sq * b[o]
                new_b[o] = b[o] + pb[o] * hebb_b
            per_task_w.append(new_w)
            per_task_b.append(new_b)
        new[weight_key(l)] = torch.tensor(per_task_w, dtype=torch.float64)
        if rule.plastic_bias:
            new[bias_key(l)] = torch.tensor(per_task_b, dtype=torch.float64)
    return new


# ---- fixtures of the comparison --------------------------------------------------------------
def random_meta(rule: FLPRule, net: MLP, seed: int) -> dict:
    """The rule's meta-parameters with every entry redrawn at random, so that every coefficient,
    feedback bias and beta differs and a wrong index or scope shows up."""
    g = torch.Generator().manual_seed(seed)
    meta = rule.init(net, g, torch.float64)
    out = {}
    for k, v in meta.items():
        r = torch.randn(v.shape, generator=g, dtype=torch.float64)
        if k.startswith("coef."):
            # both signs (nothing is clamped unless coef_nonneg), bounded away from zero
            out[k] = torch.sign(r) * (0.05 + 0.1 * r.abs())
        elif k.startswith("beta."):
            out[k] = r if rule.beta_sigmoid else 0.5 + 0.3 * torch.tanh(r)
        elif k.endswith(".bias"):
            out[k] = 0.5 * r
        else:
            out[k] = v + 0.1 * r
    return out


VARIANTS = {
    "base": ({}, None, "tanh"),
    "relu_net": ({}, None, "relu"),
    "signal_target": ({"signal": "target"}, None, "tanh"),
    "output_signal": ({"output_target": "signal"}, None, "tanh"),
    "hidden_multiplier": ({"hidden_multiplier": 3.0}, None, "tanh"),
    "softplus_coef": ({"coef_nonneg": True, "coef_init": 0.05}, None, "tanh"),
    "sigmoid_beta": ({"beta_sigmoid": True}, None, "tanh"),
    "deep_feedback": ({"feedback_hidden": (3,)}, None, "tanh"),
    "frozen_middle": ({}, [0, 2], "tanh"),
    "output_only_signal": ({"output_target": "signal", "signal": "target"}, [-1], "relu"),
    "combined": (
        {
            "signal": "target",
            "hidden_multiplier": 0.5,
            "coef_nonneg": True,
            "coef_init": 0.1,
            "beta_sigmoid": True,
            "feedback_hidden": (3, 2),
            "feedback_activation": "tanh",
        },
        [1, 2],
        "relu",
    ),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("plastic_bias", [False, True])
@pytest.mark.parametrize("scope", ["synapse", "neuron", "layer", "global"])
@pytest.mark.parametrize("form", ["hebb", "oja"])
def test_step_matches_handwritten_formulas(form, scope, plastic_bias, variant):
    kwargs, plastic, activation = VARIANTS[variant]
    rule = FLPRule(form=form, scope=scope, plastic_bias=plastic_bias, **kwargs)
    net = MLP.build(SIZES, activation=activation, plastic=plastic)
    seed = zlib.crc32(f"{form}-{scope}-{plastic_bias}-{variant}".encode()) % 10_000
    g = torch.Generator().manual_seed(seed)
    meta = random_meta(rule, net, seed)
    prepared = rule.prepare(net, meta)
    weights = net.init(g, torch.float64)
    # positive hidden biases: no layer of a tiny ReLU net is dead, so every update is non-zero
    weights = {k: v + 0.3 if k.endswith(".bias") else v for k, v in weights.items()}
    loss = MSELoss()
    xs = torch.randn(2, T, B, SIZES[0], generator=g, dtype=torch.float64)
    ys = torch.randn(2, T, B, SIZES[-1], generator=g, dtype=torch.float64)

    expected_keys = {weight_key(l) for l in net.plastic_layers}
    if plastic_bias:
        expected_keys |= {bias_key(l) for l in net.plastic_layers}

    # Step 1 from the shared 2-D initial weights, step 2 from the per-task (T, ...) weights
    # it produced: both must follow the formulas, task by task.
    for step in range(2):
        x, y = xs[step], ys[step]
        new = rule.step(net, weights, prepared, net.forward(weights, x), y, loss)
        assert set(new) == expected_keys
        ref = ref_flp_step(rule, net, meta, weights, x, y)
        for key in expected_keys:
            assert new[key].shape == ref[key].shape
            torch.testing.assert_close(new[key], ref[key], rtol=1e-12, atol=1e-12, msg=f"{key} step {step}")
            # the update is not trivially zero
            assert (new[key] - weights[key]).abs().max() > 1e-6
        weights = {**weights, **new}


@pytest.mark.parametrize("form", ["hebb", "oja"])
@pytest.mark.parametrize("scope", ["synapse", "neuron"])
def test_shared_weights_equal_per_task_copies(form, scope):
    """Shared 2-D weights give the same step as one (T, ...) copy per task."""
    rule = FLPRule(form=form, scope=scope, plastic_bias=True)
    net = MLP.build(SIZES, activation="tanh")
    g = torch.Generator().manual_seed(3)
    meta = random_meta(rule, net, 3)
    prepared = rule.prepare(net, meta)
    shared = net.init(g, torch.float64)
    per_task = {k: v.expand(T, *v.shape).clone() for k, v in shared.items()}
    x = torch.randn(T, B, SIZES[0], generator=g, dtype=torch.float64)
    y = torch.randn(T, B, SIZES[-1], generator=g, dtype=torch.float64)
    a = rule.step(net, shared, prepared, net.forward(shared, x), y, MSELoss())
    b = rule.step(net, per_task, prepared, net.forward(per_task, x), y, MSELoss())
    assert set(a) == set(b)
    for k in a:
        assert a[k].shape[0] == T
        torch.testing.assert_close(a[k], b[k], rtol=1e-13, atol=1e-13)
    # the tasks saw different data, so their updated weights differ
    assert not torch.allclose(a[weight_key(0)][0], a[weight_key(0)][1])


@pytest.mark.parametrize("scope", ["synapse", "neuron", "layer", "global"])
@pytest.mark.parametrize("plastic_bias", [False, True])
def test_init_keys_and_shapes(scope, plastic_bias):
    rule = FLPRule(scope=scope, plastic_bias=plastic_bias, feedback_hidden=(3,), coef_init=0.2, beta_init=0.3)
    net = MLP.build(SIZES, plastic=[0, 2])
    meta = rule.init(net, torch.Generator().manual_seed(0), torch.float64)
    coef = {k: tuple(v.shape) for k, v in meta.items() if k.startswith("coef.")}
    if scope == "synapse":
        expected = {"coef.0.weight": (5, 3), "coef.2.weight": (2, 4)}
        if plastic_bias:
            expected |= {"coef.0.bias": (5,), "coef.2.bias": (2,)}
    elif scope == "neuron":
        expected = {"coef.0": (5, 1), "coef.2": (2, 1)}
    elif scope == "layer":
        expected = {"coef.0": (), "coef.2": ()}
    else:
        expected = {"coef.global": ()}
    assert coef == expected
    assert all(float(v.min()) == float(v.max()) == 0.2 for k, v in meta.items() if k.startswith("coef."))
    fb = {k: tuple(v.shape) for k, v in meta.items() if k.startswith("feedback.")}
    # the feedback pathway goes signal (2) -> 3 -> layer width, for plastic layers only
    assert fb == {
        "feedback.0.0.weight": (3, 2), "feedback.0.0.bias": (3,),
        "feedback.0.1.weight": (5, 3), "feedback.0.1.bias": (5,),
        "feedback.2.0.weight": (3, 2), "feedback.2.0.bias": (3,),
        "feedback.2.1.weight": (2, 3), "feedback.2.1.bias": (2,),
    }
    assert {k: float(v) for k, v in meta.items() if k.startswith("beta.")} == {"beta.0": 0.3, "beta.2": 0.3}


def test_output_signal_has_no_output_feedback():
    rule = FLPRule(output_target="signal")
    net = MLP.build(SIZES)
    meta = rule.init(net, torch.Generator().manual_seed(0), torch.float64)
    assert "beta.2" not in meta and not any(k.startswith("feedback.2.") for k in meta)
    assert "beta.1" in meta and "feedback.1.0.weight" in meta


def test_constrained_init_recovers_requested_values():
    rule = FLPRule(coef_nonneg=True, coef_init=0.05, beta_sigmoid=True, beta_init=0.3, scope="layer")
    net = MLP.build(SIZES)
    meta = rule.init(net, torch.Generator().manual_seed(0), torch.float64)
    prepared = rule.prepare(net, meta)
    for l in range(3):
        assert prepared[f"coef.{l}.weight"].item() == pytest.approx(0.05, rel=1e-12)
        assert prepared[f"beta.{l}"].item() == pytest.approx(0.3, rel=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"form": "anti"},
        {"signal": "both"},
        {"output_target": "nothing"},
        {"scope": "dendrite"},
        {"feedback_activation": "swish"},
        {"beta_sigmoid": True, "beta_init": 1.0},
        {"coef_nonneg": True, "coef_init": 0.0},
    ],
)
def test_invalid_hyper_parameters(kwargs):
    with pytest.raises(ConfigError):
        FLPRule(**kwargs)
