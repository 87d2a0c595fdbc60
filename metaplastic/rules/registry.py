"""Rule names -> rule classes; building a rule from a config mapping."""

from __future__ import annotations

from typing import Any

from metaplastic.config_utils import build_named
from metaplastic.rules.base import Rule
from metaplastic.rules.flp import FLPRule
from metaplastic.rules.sgd import SGDRule

RULES: dict[str, type] = {"flp": FLPRule, "sgd": SGDRule}


def build_rule(spec: dict[str, Any]) -> Rule:
    """``spec`` is the ``rule`` section of a config: ``{"name": ..., **hyper-parameters}``."""
    return build_named(RULES, spec, "rule", "rule")
