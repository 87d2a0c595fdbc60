"""The polynomial rule's fused lifetime (PolynomialRule.fused_lifetime over a TermPool) against
the step-by-step graph of ``PolynomialRule.step`` (written independently, from ``TERMS``).

float64 throughout: random term pools and coefficient scopes, every unroll mode, the value and
the meta-gradient of every group; checkpoint equal to full bitwise; finite differences
(``gradcheck``) on a two-layer net; Oja and Hebb written as pools equal to FLP's fused path.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from metaplastic.config import UnrollConfig, config_from_dict, load_config
from metaplastic.meta import Experiment
from metaplastic.meta.lifetime import run_lifetime
from metaplastic.meta.objective import meta_loss
from metaplastic.params import group_of
from metaplastic.rules.coefficients import SCOPES
from metaplastic.rules.polynomial import TERMS

MODES = {
    "full": {"mode": "full"},
    "checkpoint": {"mode": "checkpoint", "segment": 2},
    "truncate": {"mode": "truncate", "last_steps": 3},
    "first_order": {"mode": "first_order"},
}


def make_experiment(rule: dict, hidden=(6, 6, 5), plastic=None, meta_batch: int = 2, steps: int = 3,
                    activation: str = "tanh") -> Experiment:
    network = {"hidden": list(hidden), "activation": activation}
    if plastic is not None:
        network["plastic"] = plastic
    return Experiment.from_config(config_from_dict({
        "name": "poly_fused",
        "seed": 5,
        "dtype": "float64",
        "task": {"name": "sine", "n_functions": 2, "steps_per_function": steps, "batch_size": 4,
                 "query_per_function": 3},
        "network": network,
        "rule": rule,
        "meta": {"meta_batch": meta_batch},
    }))


def random_pool(seed: int) -> dict[str, str]:
    """Three to six terms with random scopes; always one with the target activity in it."""
    rng = random.Random(seed)
    names = rng.sample(sorted(TERMS), rng.randint(3, 6))
    if not {"pre_target", "target", "pre_signal", "signal", "target2_w"} & set(names):
        names.append("pre_target")
    return {name: rng.choice(SCOPES) for name in names}


def perturbed_meta(exp: Experiment, seed: int = 11, coef_scale: float = 0.02) -> dict[str, torch.Tensor]:
    """Meta-parameters off their init: random coefficients of both signs, small enough that
    the inner loop stays tame."""
    g = torch.Generator().manual_seed(seed)
    meta = {}
    for k, v in exp.init_meta().items():
        noise = torch.randn(v.shape, generator=g, dtype=v.dtype)
        v = coef_scale * noise if group_of(k) == "coef" else v + 0.2 * noise
        if k.startswith("init.") and k.endswith(".bias"):
            v = v + 0.5  # no ReLU unit dead for a whole episode
        meta[k] = v.requires_grad_(True)
    return meta


def loss_and_grads(exp: Experiment, meta: dict, **unroll) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    loss = meta_loss(exp.net, exp.rule, meta, exp.training_episodes(0), exp.loss, UnrollConfig(**unroll))
    keys = [k for k, v in meta.items() if v.requires_grad]
    grads = torch.autograd.grad(loss, [meta[k] for k in keys], allow_unused=True)
    return loss.detach(), {k: torch.zeros_like(meta[k]) if g is None else g for k, g in zip(keys, grads)}


def assert_close(got: dict, want: dict, rtol: float = 1e-10) -> None:
    assert got.keys() == want.keys()
    scale = max(float(v.abs().max()) for v in want.values())  # relative to the largest gradient
    for k in want:
        err = float((got[k] - want[k]).abs().max())
        assert err <= rtol * max(float(want[k].abs().max()), 1e-3 * scale), f"{k}: error {err:.3g}"


def fused_node(tensor: torch.Tensor) -> bool:
    frontier = [tensor.grad_fn]
    for _ in range(3):
        if any(type(f).__name__ == "_HebbianLifetimeBackward" for f in frontier):
            return True
        frontier = [n for f in frontier if f is not None for n, _ in f.next_functions]
    return False


def check_fused_against_step(exp: Experiment, meta: dict, mode: str) -> None:
    fused = loss_and_grads(exp, meta, path="fused", **MODES[mode])
    step = loss_and_grads(exp, meta, path="step", **MODES[mode])
    assert torch.isclose(fused[0], step[0], rtol=1e-12, atol=0), (fused[0], step[0])
    for group in ("init", "feedback", "beta", "coef"):  # the comparison means something
        if mode == "truncate" and group == "init":
            continue
        assert any(float(g.abs().max()) > 0 for k, g in step[1].items() if group_of(k) == group), group
    assert_close(fused[1], step[1])


# ---- the cases -----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("seed", range(6))
def test_random_pools_fused_equals_step(seed: int, mode: str) -> None:
    exp = make_experiment({"name": "poly", "terms": random_pool(seed)}, steps=3)
    check_fused_against_step(exp, perturbed_meta(exp, seed), mode)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_term_at_every_scope(mode: str) -> None:
    """All twelve terms at once, scopes rotating; frozen layers in between, one task."""
    terms = {name: SCOPES[i % len(SCOPES)] for i, name in enumerate(sorted(TERMS))}
    exp = make_experiment({"name": "poly", "terms": terms}, plastic=[0, 2, 3], meta_batch=1)
    check_fused_against_step(exp, perturbed_meta(exp, coef_scale=0.01), mode)


@pytest.mark.parametrize("options", [
    {"output_target": "bounded_signal", "beta_sigmoid": True, "beta_init": 0.4},
    {"feedback_hidden": [3], "feedback_activation": "tanh", "signal": "target"},
])
def test_rule_options(options: dict) -> None:
    exp = make_experiment({"name": "poly", "terms": {"pre_signal": "synapse", "post2_w": "neuron",
                                                     "pre": "layer", "target": "global"}, **options},
                          activation="sigmoid")
    check_fused_against_step(exp, perturbed_meta(exp), "full")


def test_shipped_config_takes_the_fused_path() -> None:
    cfg = load_config(Path(__file__).resolve().parents[1] / "experiments" / "quick_poly.yaml",
                      ["task.steps_per_function=2", "task.n_functions=2", "network.hidden=[6,6]", "dtype=float64"])
    exp = Experiment.from_config(cfg)
    assert exp.lifetime_path().fused
    meta = perturbed_meta(exp)
    x, y = exp.training_episodes(0)[:2]
    weights = run_lifetime(exp.net, exp.rule, meta, x, y, exp.loss)
    assert fused_node(weights[f"layers.{exp.net.plastic_layers[0]}.weight"])
    check_fused_against_step(exp, meta, "full")


def test_checkpoint_equals_full_bitwise() -> None:
    exp = make_experiment({"name": "poly", "terms": random_pool(3)}, steps=4)
    meta = perturbed_meta(exp)
    full = loss_and_grads(exp, meta, path="fused")
    for segment in (1, 3):
        ckpt = loss_and_grads(exp, meta, path="fused", mode="checkpoint", segment=segment)
        assert torch.equal(full[0], ckpt[0])
        for k in full[1]:
            assert torch.equal(full[1][k], ckpt[1][k]), k


def test_gradcheck_two_layers() -> None:
    terms = {name: SCOPES[i % len(SCOPES)] for i, name in enumerate(sorted(TERMS))}
    exp = make_experiment({"name": "poly", "terms": terms}, hidden=(3,), meta_batch=2, steps=1)
    meta = perturbed_meta(exp, coef_scale=0.05)
    keys = list(meta)
    ep = exp.training_episodes(0)

    def f(*values: torch.Tensor) -> torch.Tensor:
        return meta_loss(exp.net, exp.rule, dict(zip(keys, values)), ep, exp.loss, UnrollConfig(path="fused"))

    assert torch.autograd.gradcheck(f, tuple(meta.values()), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("form", ["oja", "hebb"])
@pytest.mark.parametrize("scope", ["synapse", "neuron", "global"])
def test_hebb_and_oja_pools_equal_flp_fused(form: str, scope: str) -> None:
    """Oja as {pre_target: P, target2_w: -P}, Hebb as {pre_target: P}: FLP's values, and
    dL/dP = dL/dc_pre_target - dL/dc_target2_w."""
    terms = {"pre_target": scope, **({"target2_w": scope} if form == "oja" else {})}
    flp = make_experiment({"name": "flp", "form": form, "scope": scope})
    poly = make_experiment({"name": "poly", "terms": terms})
    flp_meta = perturbed_meta(flp)
    poly_meta = {k: v for k, v in flp_meta.items() if group_of(k) != "coef"}
    for k, v in flp_meta.items():
        if group_of(k) == "coef":
            rest = k[len("coef."):]
            poly_meta[f"coef.pre_target.{rest}"] = v.detach().clone().requires_grad_(True)
            if form == "oja":
                poly_meta[f"coef.target2_w.{rest}"] = (-v.detach()).requires_grad_(True)
    assert set(poly_meta) == set(poly.init_meta())
    want = loss_and_grads(flp, flp_meta, path="fused")
    got = loss_and_grads(poly, poly_meta, path="fused")
    assert torch.isclose(got[0], want[0], rtol=1e-12, atol=0)
    merged = {k: g for k, g in got[1].items() if group_of(k) != "coef"}
    for k in flp_meta:
        if group_of(k) == "coef":
            rest = k[len("coef."):]
            g = got[1][f"coef.pre_target.{rest}"]
            merged[k] = g - got[1][f"coef.target2_w.{rest}"] if form == "oja" else g
    assert_close(merged, want[1])


def test_a_pool_without_postsynaptic_terms_is_not_given_h() -> None:
    """``TermPool.reads_post`` per pool: only terms of h, e = t - h or h^2 read the postsynaptic
    activity; a pool of target / presynaptic terms runs fused without it, same values as the step path."""
    no_h = {"pre_target": "synapse", "target": "neuron", "pre": "layer"}
    exp = make_experiment({"name": "poly", "terms": no_h}, steps=3)
    assert not exp.rule.update_algebra().reads_post
    with_e = make_experiment({"name": "poly", "terms": {**no_h, "pre_signal": "synapse"}})
    assert with_e.rule.update_algebra().reads_post
    check_fused_against_step(exp, perturbed_meta(exp), "full")
