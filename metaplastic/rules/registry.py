"""Rule names -> rule classes; building a rule from a config mapping; the meta-parameter groups
that configs may name (those the registered rules declare)."""

from __future__ import annotations

from typing import Any

from metaplastic.config_utils import build_named
from metaplastic.params import INIT
from metaplastic.rules.backward_paths import PATHS, BackwardPathRule
from metaplastic.rules.base import Rule
from metaplastic.rules.flp import FLPRule
from metaplastic.rules.polynomial import PolynomialRule
from metaplastic.rules.sgd import SGDRule
from metaplastic.rules.target_prop import TargetPropRule
from metaplastic.rules.torch_optim import TorchOptimRule

RULES: dict[str, type] = {
    "flp": FLPRule,
    "sgd": SGDRule,
    **{path: BackwardPathRule for path in PATHS},  # bp, fa, dfa, usf, frsf, brsf
    "dtp": TargetPropRule,
    "sdtp": TargetPropRule,
    "poly": PolynomialRule,
    "torch_optim": TorchOptimRule,
}


def known_groups() -> tuple[str, ...]:
    """``init`` and every group a registered rule declares (plastic convs' step sizes are
    ``lr``), in a fixed order: the keys ``meta.lr`` and ``meta.schedule`` accept."""
    groups = [INIT, *(g for cls in RULES.values() for g in cls.groups), "lr"]
    return tuple(dict.fromkeys(groups))


def build_rule(spec: dict[str, Any]) -> Rule:
    """``spec`` is the ``rule`` section of a config: ``{"name": ..., **hyper-parameters}``."""
    return build_named(RULES, spec, "rule", "rule")
