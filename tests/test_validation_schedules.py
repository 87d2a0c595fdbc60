"""Meta-validation (bitwise-neutral, best checkpoint), learning-rate schedules (formulas,
resumable), the published OML baseline's output reset, bounded coefficients, and FLP's error
signal under cross-entropy."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from test_checkpoint_resume import assert_same_state

from metaplastic.cli.main import main
from metaplastic.config import UnrollConfig, config_from_dict
from metaplastic.errors import CheckpointError, ConfigError
from metaplastic.evaluation.checkpoint_eval import load_trainer
from metaplastic.evaluation.validation import validate
from metaplastic.losses import CrossEntropyLoss
from metaplastic.meta import Experiment, train
from metaplastic.meta.objective import meta_loss
from metaplastic.schedules import ScheduleConfig
from metaplastic.tasks.classification import ClassificationStream


def run(tmp_path, name, steps=6, **meta):
    return tiny_config(out_dir=str(tmp_path / name), meta={"steps": steps, "checkpoint_every": 2, **meta})


def validation_records(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["val/mse"]) for r in rows if "val/mse" in r]


# ---- meta-validation --------------------------------------------------------------------------
def test_validation_does_not_change_training(tmp_path):
    plain = train(run(tmp_path, "plain"), progress=False)
    validated = train(run(tmp_path, "validated", validate_every=2), progress=False)
    assert_same_state(plain, validated)
    assert [s for s, _ in validation_records(tmp_path / "validated")] == [0, 2, 4, 6]
    assert not (tmp_path / "plain" / "best.pt").exists()


def test_best_checkpoint_is_the_best_validation_step(tmp_path):
    cfg = run(tmp_path, "v", steps=8, validate_every=1, lr={"init": 3e-2, "feedback": 3e-2, "coef": 3e-2, "beta": 3e-2})
    trainer = train(cfg, progress=False)
    records = validation_records(cfg.run_dir)
    best_step, best_value = min(records, key=lambda r: r[1])
    assert len({v for _, v in records}) > 1  # validation really moves, so "best" means something
    best = load_trainer(cfg.run_dir, which="best")
    assert best.step == best_step == trainer.best["step"]
    assert best.best["value"] == best_value
    assert math.isclose(validate(best.experiment, best.meta)["val/mse"], best_value, rel_tol=0, abs_tol=0)
    last = load_trainer(cfg.run_dir, which="last")
    assert last.step == 8


def test_resume_keeps_the_best_record(tmp_path):
    cfg = run(tmp_path, "r", steps=8, validate_every=2)
    straight = train(cfg, progress=False)
    cfg2 = run(tmp_path, "r2", steps=4, validate_every=2)
    train(cfg2, progress=False)
    resumed = train(cfg2.replace(meta=cfg.meta), resume=True, progress=False)
    assert resumed.best == straight.best
    assert validation_records(tmp_path / "r2") == validation_records(tmp_path / "r")


def test_evaluate_best_and_missing_best(tmp_path, capsys):
    cfg = run(tmp_path, "e", steps=2, validate_every=1)
    train(cfg, progress=False)
    assert main(["evaluate", str(cfg.run_dir), "--checkpoint", "best", "--no-references", "--wandb", "disabled"]) == 0
    plain = run(tmp_path, "p", steps=1)
    train(plain, progress=False)
    with pytest.raises(CheckpointError, match="not meta-validated"):
        load_trainer(plain.run_dir, which="best")


def test_validation_config_errors():
    with pytest.raises(ConfigError, match="validate_every"):
        tiny_config(meta={"validate_every": 0})
    with pytest.raises(ConfigError, match="meta.schedule.bogus"):
        tiny_config(meta={"schedule": {"bogus": {"kind": "cosine"}}})
    with pytest.raises(ConfigError, match="kind"):
        tiny_config(meta={"schedule": {"all": {"kind": "linear"}}})
    with pytest.raises(ConfigError, match="grad_clip"):
        tiny_config(meta={"grad_clip": float("nan")})


# ---- schedules ----------------------------------------------------------------------------------
def test_schedule_formulas():
    cos = ScheduleConfig(kind="cosine", warmup=10, min_factor=0.1)
    assert cos.factor(0, 110) == pytest.approx(0.1) and cos.factor(9, 110) == pytest.approx(1.0)
    assert cos.factor(10, 110) == pytest.approx(1.0)
    assert cos.factor(60, 110) == pytest.approx(0.1 + 0.9 * 0.5)
    assert cos.factor(110, 110) == pytest.approx(0.1) and cos.factor(500, 110) == pytest.approx(0.1)
    step = ScheduleConfig(kind="step", every=5, gamma=0.5)
    assert [step.factor(k, 100) for k in (0, 4, 5, 10, 14)] == [1.0, 1.0, 0.5, 0.25, 0.25]
    assert ScheduleConfig().factor(123, 200) == 1.0


def test_schedule_sets_each_group_lr(tmp_path):
    schedule = {"all": {"kind": "cosine", "warmup": 2}, "coef": {"kind": "step", "every": 2, "gamma": 0.1}}
    cfg = run(tmp_path, "s", steps=6, schedule=schedule)
    trainer = train(cfg, progress=False)
    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    base = cfg.meta.lr
    for r in rows:
        k = r["step"] - 1  # the metrics of step k+1 were taken with the rates of step k
        assert r["lr/coef"] == pytest.approx(base["coef"] * 0.1 ** (k // 2))
        assert r["lr/init"] == pytest.approx(base["init"] * ScheduleConfig("cosine", warmup=2).factor(k, 6))
    assert trainer.optimizers["coef"].param_groups[0]["lr"] == pytest.approx(base["coef"] * 0.01)


def test_resume_mid_schedule_equals_an_uninterrupted_run(tmp_path):
    # the decay length is pinned (steps: 8), so a run stopped at 5 and extended to 8 sees the
    # same schedule as one trained to 8 at once
    schedule = {"all": {"kind": "cosine", "warmup": 2, "min_factor": 0.2, "steps": 8}}
    train(run(tmp_path, "c", steps=5, schedule=schedule), progress=False)
    resumed = train(run(tmp_path, "c", steps=8, schedule=schedule), resume=True, progress=False)
    reference = train(run(tmp_path, "d", steps=8, schedule=schedule), progress=False)
    assert_same_state(resumed, reference)
    constant = train(run(tmp_path, "e", steps=8), progress=False)
    assert any(not torch.equal(constant.meta[k], reference.meta[k]) for k in reference.meta)


# ---- the baseline as published: output reset -------------------------------------------------
def test_reset_output_starts_at_zero_and_is_not_meta_learned(tmp_path):
    cfg = tiny_config(
        out_dir=str(tmp_path / "oml"), network={"reset_output": True},
        rule={"name": "sgd", "lr_init": 0.05, "first_order": True}, meta={"steps": 3},
    )
    trainer = train(cfg, progress=False)
    last = len(trainer.experiment.net.layers) - 1
    for part in ("weight", "bias"):
        key = f"init.layers.{last}.{part}"
        assert torch.count_nonzero(trainer.meta[key]) == 0
        assert not trainer.meta[key].requires_grad
    assert not torch.equal(trainer.meta["init.layers.0.weight"], trainer.initial_meta["init.layers.0.weight"])
    with pytest.raises(ConfigError, match="reset_output"):
        Experiment.from_config(tiny_config(network={"reset_output": True, "plastic": [0]}))


# ---- bounded coefficients -------------------------------------------------------------------
def test_coef_max_bounds_the_coefficients():
    exp = Experiment.from_config(tiny_config(rule={"coef_init": 0.002, "coef_max": 0.01}))
    meta = exp.init_meta()
    prepared = exp.rule.prepare(exp.net, meta)
    assert torch.allclose(prepared["coef.0.weight"], torch.full_like(prepared["coef.0.weight"], 0.002))
    huge = {k: (v + 1e3 if k.startswith("coef.") else v) for k, v in meta.items()}
    assert float(exp.rule.prepare(exp.net, huge)["coef.0.weight"].max()) <= 0.01
    with pytest.raises(ConfigError, match="coef_max"):
        tiny_config(rule={"coef_init": 0.02, "coef_max": 0.01})


def test_coef_max_meta_gradient_matches_finite_differences():
    exp = Experiment.from_config(tiny_config(rule={"coef_init": 0.02, "coef_max": 0.05}))
    meta = {k: v.clone().requires_grad_(k.startswith("coef.")) for k, v in exp.init_meta().items()}
    episodes = exp.training_episodes(0)
    key = "coef.0.weight"
    (grad,) = torch.autograd.grad(exp.meta_loss(meta, episodes, exp.config.meta.unroll), [meta[key]])
    eps = 1e-6
    for idx in [(0, 0), (1, 2)]:
        plus = {k: v.detach().clone() for k, v in meta.items()}
        minus = {k: v.detach().clone() for k, v in meta.items()}
        plus[key][idx] += eps
        minus[key][idx] -= eps
        unroll = exp.config.meta.unroll
        fd = (exp.meta_loss(plus, episodes, unroll) - exp.meta_loss(minus, episodes, unroll)) / (2 * eps)
        assert float(grad[idx]) == pytest.approx(float(fd), rel=1e-5, abs=1e-10)


# ---- FLP's error signal under cross-entropy ----------------------------------------------------
def digits_experiment(**rule):
    return Experiment.from_config(config_from_dict({
        "name": "ce", "seed": 1, "dtype": "float64",
        "task": {"name": "classification", "source": "digits", "n_classes": 3, "shots": 2, "query_per_class": 2,
                 "n_outputs": 10},
        "network": {"hidden": [6, 5], "activation": "tanh"},
        "rule": {"name": "flp", "form": "oja", "signal": "error", "coef_init": 0.01, **rule},
        "meta": {"meta_batch": 2},
    }))


def test_error_signal_under_cross_entropy_is_onehot_minus_softmax():
    exp = digits_experiment()
    loss = CrossEntropyLoss()
    logits = torch.randn(2, 3, 10, dtype=torch.float64)
    y = F.one_hot(torch.tensor([[1, 4, 9], [0, 0, 2]]), 10).to(torch.float64)
    assert torch.allclose(loss.error_signal(logits, y), y - torch.softmax(logits, -1))
    weights = {k[5:]: v for k, v in exp.init_meta().items() if k.startswith("init.")}
    trace = exp.net.forward(weights, torch.randn(2, 3, 64, dtype=torch.float64))
    assert torch.allclose(exp.rule.supervision(trace, y, loss), y - torch.softmax(trace.output, -1))


@pytest.mark.parametrize("output_target", ["feedback", "signal"])
def test_fused_cross_entropy_error_signal_matches_the_step_path(output_target):
    exp = digits_experiment(output_target=output_target)
    g = torch.Generator().manual_seed(5)
    meta = {}
    for k, v in exp.init_meta().items():
        if not k.startswith("coef."):
            v = v + 0.1 * torch.randn(v.shape, generator=g, dtype=v.dtype)
        meta[k] = v.requires_grad_(True)
    episodes = exp.training_episodes(0)
    keys = list(meta)
    grads = {}
    for fused in (True, False):
        value = meta_loss(exp.net, exp.rule, meta, episodes, exp.loss, UnrollConfig(path="fused" if fused else "step"))
        grads[fused] = (value, torch.autograd.grad(value, [meta[k] for k in keys]))
    assert torch.isclose(grads[True][0], grads[False][0], rtol=1e-12)
    for k, a, b in zip(keys, grads[True][1], grads[False][1]):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-13), k
    assert any(float(a.abs().max()) > 0 for k, a in zip(keys, grads[True][1]) if k.startswith("feedback."))


# ---- classification validation split ---------------------------------------------------------
def test_validation_split_is_disjoint_from_train_and_test():
    task = ClassificationStream(source="digits", n_classes=3, shots=2, query_per_class=2, n_outputs=10,
                                validation_fraction=0.25)
    train_ids = set(torch.cat(task.pool("train").members).tolist())
    val_ids = set(torch.cat(task.pool("validation").members).tolist())
    assert train_ids and val_ids and not train_ids & val_ids
    plain = ClassificationStream(source="digits", n_classes=3, shots=2, query_per_class=2, n_outputs=10)
    assert train_ids | val_ids == set(torch.cat(plain.pool("train").members).tolist())
    with pytest.raises(ConfigError, match="validation_fraction"):
        plain.pool("validation")


def test_resume_survives_a_non_object_metrics_line(tmp_path):
    cfg = run(tmp_path, "m", steps=2, validate_every=1)
    train(cfg, progress=False)
    with (cfg.run_dir / "metrics.jsonl").open("a") as f:
        f.write("[1, 2]\n\x00\xff garbage\n")
    resumed = train(run(tmp_path, "m", steps=3, validate_every=1), resume=True, progress=False)
    assert resumed.step == 3
    assert [s for s, _ in validation_records(cfg.run_dir)] == [0, 1, 2, 3]


def test_classification_is_validated_on_its_validation_split(tmp_path):
    cfg = config_from_dict({
        "name": "cls", "seed": 1, "dtype": "float64", "out_dir": str(tmp_path / "cls"),
        "task": {"name": "classification", "source": "digits", "n_classes": 3, "shots": 2, "query_per_class": 2,
                 "n_outputs": 10, "validation_fraction": 0.2},
        "network": {"hidden": [6], "activation": "tanh"},
        "rule": {"name": "sgd", "lr_init": 0.1},
        "meta": {"steps": 2, "meta_batch": 2, "validate_every": 1, "validate_episodes": 3, "lr": {"init": 1e-2}},
        "eval": {"classes": [2, 3], "batch": 3},
    })
    trainer = train(cfg, progress=False)
    rows = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val/accuracy" in r]
    assert [r["step"] for r in val] == [0, 1, 2]
    for r in val:
        assert r["val/accuracy"] == pytest.approx((r["val/accuracy@2"] + r["val/accuracy@3"]) / 2)
    best = max(val, key=lambda r: r["val/accuracy"])  # accuracy: higher is better
    assert trainer.best["value"] == best["val/accuracy"]
    with pytest.raises(ConfigError, match="validation_fraction"):
        train(cfg.replace(out_dir=str(tmp_path / "no_split"),
                          task={**cfg.task, "validation_fraction": 0.0}), progress=False)
    assert not (tmp_path / "no_split").exists()  # refused before anything was written


def test_validation_scores_at_the_class_counts_its_split_holds(tmp_path):
    from metaplastic.evaluation.validation import validation_classes

    base = {
        "name": "cls", "seed": 1, "dtype": "float64",
        "task": {"name": "classification", "source": "digits", "n_classes": 3, "shots": 2, "query_per_class": 2,
                 "n_outputs": 20, "validation_fraction": 0.2},
        "network": {"hidden": [6], "activation": "tanh"},
        "rule": {"name": "sgd", "lr_init": 0.1},
        "meta": {"steps": 1, "meta_batch": 2, "validate_every": 1, "validate_episodes": 2, "lr": {"init": 1e-2}},
        "eval": {"classes": [2, 3, 15], "batch": 3},  # the digits' validation split has 10 classes
    }
    exp = Experiment.from_config(config_from_dict(base))
    assert validation_classes(exp) == (2, 3)
    assert set(validate(exp, exp.init_meta())) == {"val/accuracy", "val/accuracy@2", "val/accuracy@3"}
    chosen = config_from_dict({**base, "meta": {**base["meta"], "validate_classes": [4]}})
    assert validation_classes(Experiment.from_config(chosen)) == (4,)
    for meta, match in (({"validate_classes": [11]}, "validate_classes asks for 11 classes but the validation "
                         "split has 10"), ({}, "fewer than every count")):
        cfg = {**base, "out_dir": str(tmp_path / "refused"), "meta": {**base["meta"], **meta}}
        if not meta:
            cfg["eval"] = {"classes": [12, 15], "batch": 3}
        with pytest.raises(ConfigError, match=match):
            train(config_from_dict(cfg), progress=False)
        assert not (tmp_path / "refused").exists()  # refused before anything was written
    with pytest.raises(ConfigError, match="validate_classes must list"):
        config_from_dict({**base, "meta": {**base["meta"], "validate_classes": [0]}})


# ---- nearest-neighbour references ------------------------------------------------------------
def test_nearest_neighbour_and_prototype_rules_by_hand():
    from metaplastic.evaluation.nearest import _accuracies

    support = torch.tensor([[[0.0, 0.0], [0.0, 1.0], [4.0, 0.0], [10.0, 0.0]]])
    support_y = F.one_hot(torch.tensor([[0, 0, 1, 1]]), 3).float()  # class 1's mean is (7, 0)
    query = torch.tensor([[[3.0, 0.0], [5.0, 0.0]]])
    query_y = F.one_hot(torch.tensor([[1, 1]]), 3).float()
    nn, proto = _accuracies(support, support_y, query, query_y)
    # 1-NN: (3,0) is nearest to (4,0) -> 1, (5,0) -> 1; prototypes (0,.5) and (7,0): (3,0) -> 0, (5,0) -> 1
    assert nn.tolist() == [1.0] and proto.tolist() == [0.5]


def test_classification_suite_reports_references_once(tmp_path):
    import yaml

    cfg = {"name": "cls", "seed": 1, "dtype": "float64",
           "task": {"name": "classification", "source": "digits", "n_classes": 3, "shots": 2, "query_per_class": 2,
                    "n_outputs": 10},
           "network": {"hidden": [6], "activation": "tanh"}, "rule": {"name": "sgd", "lr_init": 0.1},
           "meta": {"steps": 1, "lr": {"init": 1e-2}}, "eval": {"classes": [2, 5], "batch": 4, "episodes": 8}}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"name": "s", "runs": {"A": "a.yaml", "B": "a.yaml"}}))
    assert main(["suite", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    table = (tmp_path / "out" / "table.txt").read_text()
    assert table.count("1-NN on pixels") == 1 and table.count("prototypes on pixels") == 1
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    nn = data["summary"]["methods"]["A"]["references"]["1-NN on pixels"]["continual"]["accuracy"]
    assert nn[0]["mean"] > 0.6 and nn[1]["mean"] > 0.4  # digits pixels: far above chance (0.5, 0.2)
