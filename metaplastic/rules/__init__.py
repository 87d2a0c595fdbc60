from metaplastic.rules.base import Rule
from metaplastic.rules.flp import FLPRule
from metaplastic.rules.registry import RULES, build_rule
from metaplastic.rules.sgd import SGDRule

__all__ = ["RULES", "FLPRule", "Rule", "SGDRule", "build_rule"]
