"""Inner step sizes as meta-parameters (group ``lr``) and the descent step that uses them.

A rule with step sizes declares ``lr.{layer}`` per plastic layer (scope ``layer``) or one
``lr.global``; they are meta-learned when ``meta.lr.lr`` is a number and fixed when it is null.
Batch Manhattan (Liao et al. 2016) steps on the sign of the minibatch gradient instead.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metaplastic.errors import ConfigError
from metaplastic.networks import MLP
from metaplastic.params import prefixed

LR_SCOPES = ("layer", "global")


def check_lr(lr_init: float, lr_scope: str) -> None:
    if lr_scope not in LR_SCOPES:
        raise ConfigError(f"rule.lr_scope must be 'layer' or 'global', got '{lr_scope}'")
    if lr_init < 0:
        raise ConfigError(f"rule.lr_init must be >= 0, got {lr_init}")


def init_step_sizes(net: MLP, lr_init: float, lr_scope: str, dtype: torch.dtype) -> dict[str, Tensor]:
    keys = ["global"] if lr_scope == "global" else [str(l) for l in net.plastic_layers]
    return prefixed({k: torch.tensor(lr_init, dtype=dtype) for k in keys}, "lr")


def step_size(prepared: dict[str, Tensor], lr_scope: str, layer: int) -> Tensor:
    return prepared["lr.global"] if lr_scope == "global" else prepared[f"lr.{layer}"]


def descend(
    weights: dict[str, Tensor],
    grads: dict[str, Tensor],
    prepared: dict[str, Tensor],
    lr_scope: str,
    manhattan: bool = False,
) -> dict[str, Tensor]:
    """W <- W - lr * g (or - lr * sign(g) with Batch Manhattan) for every key of ``grads``."""
    signs = manhattan_signs(grads) if manhattan else {}
    new = {}
    for key, g in grads.items():
        lr = step_size(prepared, lr_scope, int(key.split(".")[1]))
        new[key] = weights[key] - lr * (signs[key] if manhattan else g)
    return new


SIGN_TOLERANCE = 64  # in units of the dtype's eps, relative to the task's largest gradient entry


def manhattan_signs(grads: dict[str, Tensor]) -> dict[str, Tensor]:
    """sign(g), with entries below SIGN_TOLERANCE x eps of the task's largest |g| (over every
    layer) counted as zero: a teaching signal that is zero in exact arithmetic comes out as
    rounding noise (~1e-18), and a plain sign() would turn that noise into a full step."""
    first = next(iter(grads.values()))
    scale = torch.stack([g.detach().abs().flatten(1).amax(1) for g in grads.values()]).amax(0)  # (T,)
    tol = SIGN_TOLERANCE * torch.finfo(first.dtype).eps * scale
    out = {}
    for key, g in grads.items():
        keep = g.detach().abs() > tol.view(-1, *([1] * (g.dim() - 1)))
        out[key] = torch.sign(g) * keep
    return out
