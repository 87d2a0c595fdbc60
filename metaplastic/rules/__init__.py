from metaplastic.rules.backward_paths import BackwardPathRule
from metaplastic.rules.base import Rule
from metaplastic.rules.flp import FLPRule
from metaplastic.rules.polynomial import PolynomialRule
from metaplastic.rules.registry import RULES, build_rule
from metaplastic.rules.sgd import SGDRule
from metaplastic.rules.target_prop import TargetPropRule
from metaplastic.rules.torch_optim import TorchOptimRule

__all__ = [
    "RULES",
    "BackwardPathRule",
    "FLPRule",
    "PolynomialRule",
    "Rule",
    "SGDRule",
    "TargetPropRule",
    "TorchOptimRule",
    "build_rule",
]
