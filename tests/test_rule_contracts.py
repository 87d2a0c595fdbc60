"""The contracts a new rule relies on: it declares its meta-parameter groups itself, and
registering it is the only other edit (here from the test: nothing shipped changes).

Before groups were declared by rules, a rule with a new group touched 3 files: its module, the
registry and the global ``GROUPS`` of params.py (read by config validation and the
meta-trainer). Now: its module and its registration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from conftest import tiny_config_dict
from torch import Tensor

from metaplastic.config import config_from_dict
from metaplastic.errors import ConfigError
from metaplastic.losses import Loss
from metaplastic.meta import Experiment, MetaTrainer
from metaplastic.networks import MLP, Trace, weight_key
from metaplastic.params import prefixed, select
from metaplastic.rules import RULES


@dataclass(frozen=True)
class DecayRule:
    """W <- (1 - d_l) W: a toy rule whose one meta-parameter group, decay, is its own."""

    name: str = "decay"
    groups: ClassVar[tuple[str, ...]] = ("decay",)
    decay_init: float = 0.1

    def init(self, net: MLP, generator: torch.Generator, dtype: torch.dtype) -> dict[str, Tensor]:
        return prefixed({str(l): torch.tensor(self.decay_init, dtype=dtype) for l in net.plastic_layers}, "decay")

    def prepare(self, net: MLP, meta: dict[str, Tensor]) -> dict[str, Tensor]:
        return select(meta, "decay")

    def step(self, net: MLP, weights: dict[str, Tensor], prepared: dict[str, Tensor], trace: Trace, target: Tensor,
             loss: Loss) -> dict[str, Tensor]:
        return {weight_key(l): (1 - prepared[str(l)]) * weights[weight_key(l)] for l in net.plastic_layers}


@dataclass(frozen=True)
class UndeclaredRule(DecayRule):
    name: str = "undeclared"
    groups: ClassVar[tuple[str, ...]] = ()


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(RULES, "decay", DecayRule)
    monkeypatch.setitem(RULES, "undeclared", UndeclaredRule)


def test_a_new_group_is_validated_and_meta_trained(registered: None) -> None:
    cfg = config_from_dict(tiny_config_dict(rule={"name": "decay"}, meta={"lr": {"init": 1e-3, "decay": 1e-2}}))
    trainer = MetaTrainer(Experiment.from_config(cfg))
    assert list(trainer.optimizers) == ["init", "decay"]
    before = {k: v.detach().clone() for k, v in trainer.meta.items() if k.startswith("decay.")}
    metrics = trainer.meta_step()
    assert metrics["grad_norm/decay"] > 0
    assert all(not torch.equal(trainer.meta[k], v) for k, v in before.items())
    fixed = config_from_dict(tiny_config_dict(rule={"name": "decay"}, meta={"lr": {"init": 1e-3}}))
    assert list(MetaTrainer(Experiment.from_config(fixed)).optimizers) == ["init"]  # no lr: held fixed


def test_group_no_rule_declares_is_refused(registered: None) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'meta.lr.decai' \(meta-parameter groups: init, .*decay"):
        config_from_dict(tiny_config_dict(meta={"lr": {"decai": 1e-2}}))
    with pytest.raises(ConfigError, match="unknown key 'meta.schedule.decai'"):
        config_from_dict(tiny_config_dict(meta={"schedule": {"decai": {"kind": "cosine"}}}))


def test_a_group_the_rule_forgot_to_declare_is_named(registered: None) -> None:
    cfg = config_from_dict(tiny_config_dict(rule={"name": "undeclared"}))
    with pytest.raises(ValueError, match="rule 'undeclared' made meta-parameter 'decay.0' of group 'decay', which "
                                         "it does not declare"):
        MetaTrainer(Experiment.from_config(cfg))


@pytest.mark.parametrize("name", sorted(RULES))
def test_every_shipped_rule_declares_what_it_makes(name: str) -> None:
    rule = RULES[name](name=name)
    net = MLP.build([1, 5, 4, 1], "tanh", "identity", None)
    groups = {k.split(".", 1)[0] for k in rule.init(net, torch.Generator().manual_seed(0), torch.float64)}
    assert groups <= set(rule.groups), (name, groups, rule.groups)


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("plastic", [None, [1, 2]])
def test_sgd_is_the_bp_path_plus_a_step(scope: str, plastic: list[int] | None) -> None:
    """One backward sweep for both: the same meta-loss and meta-gradients, bitwise."""
    network = {"hidden": [6, 5], "activation": "tanh", **({"plastic": plastic} if plastic else {})}
    results = []
    for name in ("sgd", "bp"):
        rule = {"name": name, "lr_init": 0.05, "lr_scope": scope}
        cfg = config_from_dict(tiny_config_dict(network=network, rule=rule, meta={"lr": {"init": 1e-3, "lr": 1e-3}}))
        trainer = MetaTrainer(Experiment.from_config(cfg))
        metrics = trainer.meta_step()
        meta = {k: v.detach() for k, v in trainer.meta.items()}
        results.append((metrics["meta_loss"], metrics["grad_norm/total"], meta))
    (loss_a, norm_a, meta_a), (loss_b, norm_b, meta_b) = results
    assert (loss_a, norm_a) == (loss_b, norm_b)
    assert meta_a.keys() == meta_b.keys() and all(torch.equal(meta_a[k], meta_b[k]) for k in meta_a)
