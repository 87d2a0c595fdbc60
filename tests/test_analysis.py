"""metaplastic.analysis against formulas: alignment, interference, overlap, forgetting."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import torch
from conftest import tiny_config

from metaplastic.analysis import analyze_rule, format_summary, loss_change, matched_sgd_update, record
from metaplastic.analysis.forgetting import forgetting
from metaplastic.analysis.overlap import unit_jaccard, update_cosines
from metaplastic.analysis.vectors import flat
from metaplastic.errors import ConfigError
from metaplastic.meta.experiment import Experiment, seeded_generator
from metaplastic.rules import SGDRule


def _setup(**sections):
    exp = Experiment.from_config(tiny_config(**sections))
    episodes = exp.task.sample(3, seeded_generator(1, 2)).to("cpu", torch.float64)
    return exp, exp.init_meta(), episodes


def test_sgd_rule_alignment_is_one_at_every_step_and_layer():
    exp, meta, episodes = _setup(rule={"name": "sgd", "lr_init": 0.1})
    traj = record(exp.net, exp.rule, meta, exp.loss, episodes)
    assert traj.keys == [f"layers.{l}.{p}" for l in range(3) for p in ("bias", "weight")]
    for step in traj.alignment:
        for layer, cos in step["cos"].items():
            torch.testing.assert_close(cos, torch.ones_like(cos), rtol=0, atol=1e-12, msg=layer)
        # projection onto -g of dW = -lr g is lr |g|
        assert bool((step["proj"]["all"] > 0).all())


def _fa_setup(feedback_is_transpose: bool):
    """Linear network, FLP-Hebb with error signal and beta = 1 (pure feedback alignment)."""
    exp, meta, episodes = _setup(
        network={"hidden": [5, 4], "activation": "identity"},
        rule={"name": "flp", "form": "hebb", "signal": "error", "feedback_activation": "identity",
              "beta_init": 1.0, "coef_init": 0.05},
    )
    if feedback_is_transpose:
        w1, w2 = meta["init.layers.1.weight"], meta["init.layers.2.weight"]
        # B_l maps the output error to layer l: the transpose of the forward path above l.
        meta["feedback.0.0.weight"] = (w2 @ w1).t().clone()
        meta["feedback.1.0.weight"] = w2.t().clone()
        meta["feedback.2.0.weight"] = torch.ones(1, 1, dtype=torch.float64)
    return exp, meta, episodes


def test_feedback_alignment_with_transposed_weights_is_gradient_descent():
    exp, meta, episodes = _fa_setup(True)
    first = record(exp.net, exp.rule, meta, exp.loss, episodes).alignment[0]
    for layer, cos in first["cos"].items():
        torch.testing.assert_close(cos, torch.ones_like(cos), rtol=0, atol=1e-12, msg=layer)


def test_feedback_alignment_with_random_feedback_is_not():
    exp, meta, episodes = _fa_setup(False)
    first = record(exp.net, exp.rule, meta, exp.loss, episodes).alignment[0]
    assert float(first["cos"]["0"].abs().min()) < 0.99


def test_interference_of_an_update_with_itself_is_its_first_order_form_for_a_tiny_step():
    exp, meta, episodes = _setup(rule={"name": "flp", "form": "oja", "coef_init": 0.05})
    traj = record(exp.net, exp.rule, meta, exp.loss, episodes)
    before, after = traj.snapshots[0], traj.snapshots[1]
    for scale, tol in ((1e-4, 1e-3), (1e-6, 1e-5)):
        update = {k: scale * (after[k] - before[k]) for k in traj.keys}
        exact, lin = loss_change(exp.net, exp.loss, before, update, traj.keys, episodes.query_x, episodes.query_y)
        assert bool((lin.abs() > 0).all())
        assert float(((exact - lin).abs() / lin.abs()).max()) < tol
    # a full-size update is not linear: the check above can fail
    update = {k: after[k] - before[k] for k in traj.keys}
    exact, lin = loss_change(exp.net, exp.loss, before, update, traj.keys, episodes.query_x, episodes.query_y)
    assert float(((exact - lin).abs() / lin.abs()).max()) > 1e-3


def test_matched_sgd_update_has_the_rule_update_norm_and_descends():
    exp, meta, episodes = _setup()
    traj = record(exp.net, exp.rule, meta, exp.loss, episodes)
    before, after = traj.snapshots[0], traj.snapshots[1]
    update = {k: after[k] - before[k] for k in traj.keys}
    x, y = episodes.x[:, :2].flatten(1, 2), episodes.y[:, :2].flatten(1, 2)
    sgd = matched_sgd_update(exp.net, exp.loss, before, update, traj.keys, x, y)
    torch.testing.assert_close(flat(sgd, traj.keys).norm(dim=-1), flat(update, traj.keys).norm(dim=-1))
    tiny = {k: 1e-6 * v for k, v in sgd.items()}
    from metaplastic.analysis.vectors import loss_gradient

    g = loss_gradient(exp.net, exp.loss, before, traj.keys, x, y)
    assert bool(((flat(g, traj.keys) * flat(tiny, traj.keys)).sum(-1) < 0).all())


def test_update_overlap_and_unit_jaccard_by_hand():
    # one episode, layer 0 with 4 units; q = 0.25 -> k = 1 unit per task
    rows = [torch.tensor([[3.0], [0.0], [0.0], [0.0]]), torch.tensor([[2.0], [0.1], [0.0], [0.0]]),
            torch.tensor([[0.0], [0.0], [5.0], [0.0]])]
    updates = [{"layers.0.weight": r.unsqueeze(0)} for r in rows]
    jac = unit_jaccard(updates, ["layers.0.weight"], 0.25)["0"]
    expected = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(jac["matrix"][0], expected)
    assert (jac["k"], jac["n"]) == (1, 4) and jac["chance"] == pytest.approx(1 / 7)
    cos = update_cosines(updates, ["layers.0.weight"])["all"][0]
    assert float(cos[0, 1]) == pytest.approx(2.0 / math.sqrt(4.01))
    assert float(cos[0, 2]) == 0.0 and float(cos[2, 2]) == pytest.approx(1.0)


def test_forgetting_is_final_minus_just_learned():
    errors = torch.tensor([[[1.0, 9.0, 9.0], [2.0, 0.5, 9.0], [4.0, 1.5, 0.2]]], dtype=torch.float64)
    f = forgetting(errors)
    assert f["per_task"] == pytest.approx([4.0 - 1.0, 1.5 - 0.5])
    assert f["mean"] == pytest.approx(((4.0 - 1.0) + (1.5 - 0.5)) / 2)
    assert f["curve"]["curve"] == pytest.approx([1.0, 1.25, (4.0 + 1.5 + 0.2) / 3])


@pytest.mark.parametrize("rule", [{"name": "flp", "coef_init": 0.05}, {"name": "sgd", "lr_init": 0.1}])
def test_analyze_rule_is_deterministic_complete_and_json_clean(rule):
    exp, meta, _ = _setup(rule=rule)
    a = analyze_rule(exp.net, exp.rule, meta, exp.loss, exp.task, episodes=3, batch=2, seed=5)
    b = analyze_rule(exp.net, exp.rule, meta, exp.loss, exp.task, episodes=3, batch=2, seed=5)
    assert json.dumps(a) == json.dumps(b)
    text = json.dumps(a, allow_nan=False)  # NaNs (undefined entries) are written as null
    assert set(json.loads(text)) >= {"alignment", "interference", "overlap", "forgetting"}
    assert set(a["interference"]) >= {"exact", "first_order", "sgd_exact", "sgd_first_order"}
    assert a["interference"]["exact"]["matrix"][1][0] is None  # i > j is undefined
    assert "interference" in format_summary(a)
    c = analyze_rule(exp.net, exp.rule, meta, exp.loss, exp.task, episodes=3, batch=2, seed=6)
    assert json.dumps(c) != json.dumps(a)  # another seed, other episodes


def test_analyze_rule_rejects_bad_arguments():
    exp, meta, _ = _setup()
    with pytest.raises(ConfigError, match="baseline"):
        analyze_rule(exp.net, exp.rule, meta, exp.loss, exp.task, baseline="adam")
    with pytest.raises(ConfigError, match="episodes"):
        analyze_rule(exp.net, exp.rule, meta, exp.loss, exp.task, episodes=0)


@dataclass(frozen=True)
class _EveryOtherStep:
    """SGD on even steps only, counting steps in a state entry: a rule that updates its layers
    on some steps and carries non-weight state, as alternating rules do."""

    inner: SGDRule = SGDRule(lr_init=0.1)
    name: str = "every_other"

    def init(self, net, generator, dtype=torch.float64):
        return self.inner.init(net, generator, dtype)

    def prepare(self, net, meta):
        return self.inner.prepare(net, meta)

    def step(self, net, weights, prepared, trace, target, loss):
        step = int(weights.get("state.step", torch.tensor(0)))
        counter = {"state.step": torch.tensor(step + 1)}
        if step % 2:
            return counter
        return {**self.inner.step(net, weights, prepared, trace, target, loss), **counter}


def test_steps_without_an_update_have_no_alignment_and_state_is_carried():
    exp, meta, episodes = _setup(rule={"name": "sgd", "lr_init": 0.1})
    traj = record(exp.net, _EveryOtherStep(), meta, exp.loss, episodes)
    assert traj.keys == [f"layers.{l}.{p}" for l in range(3) for p in ("bias", "weight")]
    cos = torch.stack([s["cos"]["all"] for s in traj.alignment])  # (steps, episodes)
    torch.testing.assert_close(cos[0::2], torch.ones_like(cos[0::2]), rtol=0, atol=1e-12)
    assert bool(cos[1::2].isnan().all())
    results = analyze_rule(exp.net, _EveryOtherStep(), meta, exp.loss, exp.task, episodes=2, batch=2)
    assert results["alignment"]["cos"]["all"]["mean"] == pytest.approx(1.0, abs=1e-12)
    assert results["alignment"]["cos"]["all"]["per_step"][1] is None
