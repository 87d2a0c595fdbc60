"""Scalars that describe a rule's meta-parameters as the inner loop uses them.

Statistics are taken on ``rule.prepare(net, meta)`` (constraints such as softplus applied),
for every meta-parameter group the rule declares (``Rule.groups``: e.g. plasticity coefficients
``coef``, feedback weights and strengths ``feedback``/``beta``, inner step sizes ``lr``), so a
new rule's groups are tracked without editing this module. A scalar is reported as is; a tensor
by its mean, standard deviation, minimum and maximum, e.g. ``coef/3.weight/mean``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metaplastic.networks import MLP
from metaplastic.rules import Rule


@torch.no_grad()
def rule_statistics(net: MLP, rule: Rule, meta: dict[str, Tensor]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in rule.prepare(net, meta).items():
        group, _, rest = key.partition(".")
        if group not in rule.groups:
            continue
        v = value.detach().double()
        if v.numel() == 1:
            out[f"{group}/{rest}"] = float(v)
        else:
            out[f"{group}/{rest}/mean"] = float(v.mean())
            out[f"{group}/{rest}/std"] = float(v.std()) if v.numel() > 1 else 0.0
            out[f"{group}/{rest}/min"] = float(v.min())
            out[f"{group}/{rest}/max"] = float(v.max())
    return out
