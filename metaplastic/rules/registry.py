"""Rule names -> rule classes; building a rule from a config mapping."""

from __future__ import annotations

import dataclasses
from typing import Any

from metaplastic.config_utils import build_dataclass
from metaplastic.errors import ConfigError
from metaplastic.rules.base import Rule
from metaplastic.rules.flp import FLPRule
from metaplastic.rules.sgd import SGDRule

RULES: dict[str, type] = {"flp": FLPRule, "sgd": SGDRule}


def build_rule(spec: dict[str, Any]) -> Rule:
    """``spec`` is the ``rule`` section of a config: ``{"name": ..., **hyper-parameters}``."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError("config section 'rule' must be a mapping with a 'name'")
    name = spec["name"]
    if name not in RULES:
        raise ConfigError(f"unknown rule '{name}' (known: {', '.join(sorted(RULES))})")
    return build_dataclass(RULES[name], spec, "rule")


def rule_to_dict(rule: Rule) -> dict[str, Any]:
    return dataclasses.asdict(rule)
