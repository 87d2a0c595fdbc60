"""Shape checks of a rule's meta-parameters against the network it runs on.

A checkpoint or a hand-built meta dict for another network would otherwise fail deep inside a
matmul; this names the parameter and both shapes in one line instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metaplastic.errors import ShapeError
from metaplastic.networks import MLP


def check_meta_shapes(rule, net: MLP, meta: dict[str, Tensor]) -> None:
    """Every meta-parameter ``rule.init`` declares for ``net`` is in ``meta`` with its shape."""
    expected = rule.init(net, torch.Generator().manual_seed(0), torch.float64)
    for key, value in expected.items():
        if key not in meta:
            raise ShapeError(f"rule '{rule.name}' needs meta-parameter '{key}', which is missing")
        if tuple(meta[key].shape) != tuple(value.shape):
            raise ShapeError(
                f"meta-parameter '{key}' has shape {tuple(meta[key].shape)}, rule '{rule.name}' on this network "
                f"expects {tuple(value.shape)}"
            )
