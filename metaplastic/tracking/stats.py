"""Scalars that describe a rule's meta-parameters as the inner loop uses them.

Statistics are taken on ``rule.prepare(net, meta)`` (constraints such as softplus applied),
for the groups a learned rule adapts: plasticity coefficients (``coef``), feedback strengths
(``beta``) and inner step sizes (``lr``). A scalar is reported as is; a tensor by its mean,
standard deviation, minimum and maximum, e.g. ``coef/3.weight/mean``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metaplastic.networks import MLP
from metaplastic.rules import Rule

GROUPS = ("coef", "beta", "lr")


@torch.no_grad()
def rule_statistics(net: MLP, rule: Rule, meta: dict[str, Tensor]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in rule.prepare(net, meta).items():
        group, _, rest = key.partition(".")
        if group not in GROUPS:
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
