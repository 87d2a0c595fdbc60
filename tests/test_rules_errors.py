"""Bad rule configs and inconsistent shapes give one-line errors, from Python and the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_config

from metaplastic.cli.main import main
from metaplastic.errors import ConfigError, ShapeError
from metaplastic.meta import Experiment, run_lifetime
from metaplastic.rules import BackwardPathRule, PolynomialRule, TargetPropRule, TorchOptimRule, build_rule

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"name": "nosuch"}, "unknown rule 'nosuch'"),
        ({"name": "poly", "terms": {"pre_post": "layer", "pre_cubed": "layer"}}, "unknown plasticity term 'pre_cubed'"),
        ({"name": "poly", "terms": {"pre_post": "cell"}}, "unknown coefficient scope 'cell'"),
        ({"name": "poly", "terms": {"pre_post": "layer"}, "coef_init": {"w": 0.1}}, "rule.coef_init.w"),
        ({"name": "poly", "terms": {}}, "at least one plasticity term"),
        ({"name": "torch_optim", "optimizer": "Adamm"}, "unknown optimizer 'Adamm'"),
        ({"name": "torch_optim", "optimizer": "SGD", "options": {"momentum": -1.0}}, "rule.options for SGD"),
        ({"name": "torch_optim", "options": {"lr": 0.1}}, "rule.lr_init"),
        ({"name": "dtp", "schedule": "sometimes"}, "rule.schedule"),
        ({"name": "fa", "lr_scope": "synapse"}, "rule.lr_scope"),
        ({"name": "fa", "flavour": "x"}, "unknown key 'rule.flavour'"),
    ],
)
def test_bad_rule_config_is_one_config_error(spec, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")) as info:
        build_rule(spec)
    assert "\n" not in str(info.value)


def test_rule_classes_reject_names_they_do_not_implement():
    with pytest.raises(ConfigError, match="unknown backward path 'sdtp'"):
        BackwardPathRule("sdtp")
    with pytest.raises(ConfigError, match="'dtp' or 'sdtp'"):
        TargetPropRule("fa")
    assert PolynomialRule().label() == "poly(pre_target + target2_w)"
    assert TorchOptimRule(optimizer="Adam").label() == "Adam (higher)"


@pytest.mark.parametrize("rule", [{"name": "fa"}, {"name": "dfa"}, {"name": "sdtp"}, {"name": "poly"}])
def test_meta_parameters_of_another_network_give_a_shape_error(rule):
    small = Experiment.from_config(tiny_config(rule=rule))
    large = Experiment.from_config(tiny_config(rule=rule, network={"hidden": [6, 4]}))
    meta = {**large.init_meta(), **{k: v for k, v in small.init_meta().items() if not k.startswith("init.")}}
    ep = large.training_episodes(0)
    with pytest.raises(ShapeError, match="meta-parameter '.*' has shape") as info:
        run_lifetime(large.net, large.rule, meta, ep.x, ep.y, large.loss)
    assert "\n" not in str(info.value)


def test_missing_meta_parameter_is_a_shape_error():
    exp = Experiment.from_config(tiny_config(rule={"name": "dtp"}))
    meta = {k: v for k, v in exp.init_meta().items() if k != "tp.sigma"}
    ep = exp.training_episodes(0)
    with pytest.raises(ShapeError, match="needs meta-parameter 'tp.sigma'"):
        run_lifetime(exp.net, exp.rule, meta, ep.x, ep.y, exp.loss)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", str(EXPERIMENTS / "quick_fa.yaml"), "rule.name=nosuch"], "error: unknown rule 'nosuch'"),
        (["train", str(EXPERIMENTS / "quick_poly.yaml"), "rule.terms.pre_cubed=layer"], "unknown plasticity term"),
        (["compare", str(EXPERIMENTS / "compare.yaml"), "datasets=[cifar]"], "error: unknown dataset 'cifar'"),
        (["compare", str(EXPERIMENTS / "compare.yaml"), "rules=[{name: fa, lr_init: -1}]"], "rule.lr_init"),
    ],
)
def test_cli_prints_one_line_and_exits_2(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_fit_rule_rejects_a_network_that_does_not_fit_the_data():
    from metaplastic.data.arrays import ArrayDataset
    from metaplastic.networks import MLP
    from metaplastic.training import fit_rule

    data = ArrayDataset("toy", torch.zeros(8, 5), torch.zeros(8, dtype=torch.int64), torch.zeros(4, 5),
                        torch.zeros(4, dtype=torch.int64), 3)
    with pytest.raises(ShapeError, match="dataset 'toy' has 5 features and 3 classes"):
        fit_rule(MLP.build([4, 3]), BackwardPathRule("bp"), data, 1, 4)
