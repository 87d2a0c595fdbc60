"""Every rule of the library inside the meta-trainer: meta-gradients of every declared
meta-parameter against central finite differences (float64), a few meta-steps on sine
regression with a finite loss, and meta-training from the CLI by naming a quick config."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from test_meta_gradients import check_directional_derivatives

from metaplastic.cli.main import main
from metaplastic.config import load_config
from metaplastic.meta import Experiment
from metaplastic.meta.trainer import MetaTrainer
from metaplastic.params import group_of
from metaplastic.rules import RULES

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

# every rule of the library with the options that declare more meta-parameters
LIBRARY = {
    "bp": {"name": "bp", "lr_init": 0.05},
    "fa": {"name": "fa", "lr_init": 0.05},
    "fa_last_hidden_bp": {"name": "fa", "lr_init": 0.05, "last_hidden_bp": True},
    "dfa": {"name": "dfa", "lr_init": 0.05},
    "usf": {"name": "usf", "lr_init": 0.05},
    "frsf": {"name": "frsf", "lr_init": 0.05, "lr_scope": "global"},
    "brsf": {"name": "brsf", "lr_init": 0.05},
    "dtp": {"name": "dtp", "lr_init": 0.05, "inverse_lr_init": 0.05, "alpha_init": 0.2, "sigma_init": 0.1},
    "sdtp_alternating": {"name": "sdtp", "lr_init": 0.05, "inverse_lr_init": 0.05, "sigma_init": 0.1,
                         "schedule": "alternating", "alternate_every": 1},
    "poly": {"name": "poly", "terms": {"pre_target": "synapse", "target2_w": "neuron", "post": "layer",
                                       "pre_signal": "global", "w": "layer"},
             "coef_init": {"pre_target": 0.05, "target2_w": -0.05, "post": 0.01, "pre_signal": 0.02, "w": -0.01}},
    "adam_higher": {"name": "torch_optim", "optimizer": "Adam", "lr_init": 0.02},
    "sgd_momentum_higher": {"name": "torch_optim", "optimizer": "SGD", "lr_init": 0.05, "options": {"momentum": 0.9}},
}
ALL_LR = {"init": 1e-3, "feedback": 1e-3, "coef": 1e-3, "beta": 1e-3, "lr": 1e-3, "inverse": 1e-3, "tp": 1e-3}


def build(rule):
    cfg = tiny_config(rule=rule, meta={"lr": ALL_LR})
    exp = Experiment.from_config(cfg)
    meta = exp.init_meta()
    meta = {k: v + 0.2 if k.startswith("init.") and k.endswith(".bias") else v for k, v in meta.items()}
    return exp, meta, exp.training_episodes(0)


@pytest.mark.parametrize("key", sorted(LIBRARY))
def test_meta_gradient_of_every_declared_parameter_matches_finite_differences(key):
    exp, meta, episodes = build(LIBRARY[key])
    groups = sorted({group_of(k) for k in meta})
    assert "init" in groups and len(groups) >= 2
    check_directional_derivatives(exp, meta, episodes, groups, 1e-6, rtol=1e-5)


def test_declared_groups():
    """What each rule keeps fixed in its paper is a meta-parameter of a group of its own."""
    expected = {
        "fa": {"init", "feedback", "lr"},
        "dfa": {"init", "feedback", "lr"},
        "usf": {"init", "feedback", "lr"},
        "bp": {"init", "lr"},
        "dtp": {"init", "inverse", "lr", "tp"},
        "poly": {"init", "feedback", "beta", "coef"},
        "adam_higher": {"init", "lr"},
    }
    for key, groups in expected.items():
        exp, meta, _ = build(LIBRARY[key])
        assert {group_of(k) for k in meta} == groups, key
    _, meta, _ = build(LIBRARY["dtp"])
    assert {"tp.alpha", "tp.sigma", "lr.inverse"} <= set(meta)


@pytest.mark.parametrize("name", sorted(RULES))
def test_every_registered_rule_meta_trains_on_sine(name):
    rule = {"name": name, **({"coef_init": 0.05} if name == "flp" else {})}
    trainer = MetaTrainer(Experiment.from_config(tiny_config(rule=rule, meta={"lr": ALL_LR})))
    before = {k: v.detach().clone() for k, v in trainer.meta.items()}
    losses = [trainer.meta_step()["meta_loss"] for _ in range(3)]
    assert all(math.isfinite(v) for v in losses)
    moved = [k for k, v in trainer.meta.items() if not torch.equal(v.detach(), before[k])]
    assert {group_of(k) for k in moved} == {group_of(k) for k in trainer.meta}, "every group is meta-trained"


def test_null_meta_lr_keeps_a_group_fixed():
    cfg = tiny_config(rule=LIBRARY["fa"], meta={"lr": {"feedback": None, "lr": None}})
    trainer = MetaTrainer(Experiment.from_config(cfg))
    fixed = {k: v.clone() for k, v in trainer.meta.items() if group_of(k) in ("feedback", "lr")}
    trainer.meta_step()
    assert fixed and all(torch.equal(trainer.meta[k], v) for k, v in fixed.items())


QUICK = ["bp", "fa", "dfa", "usf", "dtp", "sdtp", "poly", "adam"]
SMALL = ["task.steps_per_function=2", "task.n_functions=2", "task.batch_size=4", "task.query_per_function=4",
         "network.hidden=[8,8]", "meta.steps=2", "meta.meta_batch=1"]


@pytest.mark.parametrize("rule", QUICK)
def test_quick_configs_load_and_name_their_rule(rule):
    cfg = load_config(EXPERIMENTS / f"quick_{rule}.yaml", SMALL)
    assert cfg.rule["name"] == {"adam": "torch_optim"}.get(rule, rule)
    assert cfg.task["order"] == "continual"


def test_meta_training_a_library_rule_from_the_cli(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(EXPERIMENTS / "quick_dfa.yaml"), *SMALL, "--out", str(out), "--no-progress"]) == 0
    assert (out / "checkpoint.pt").exists()
    assert "meta-trained quick_dfa for 2 steps" in capsys.readouterr().out
