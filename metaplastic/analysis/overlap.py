"""Overlap between the cumulative updates of different tasks.

With dW_j the rule's cumulative update over task j (see ``interference``), per episode:

    update overlap:  C[i, j] = cos(dW_i, dW_j)         per layer and over all plastic parameters

and, per hidden layer l with n postsynaptic units, the units each task changes most: with
r_j(u) = |row u of dW_j,l| (the unit's incoming weights, and its bias when plastic),
S_j = the k = ceil(q n) units with the largest r_j (q = ``top_fraction``, default 0.25), and

    unit overlap:    J[i, j] = |S_i n S_j| / |S_i u S_j|      (Jaccard)

Two random k-subsets of n units give J of about k / (2n - k) ("chance"). Layers where
k = n (e.g. a single output unit) are skipped. Scalars are means over i != j and episodes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from metaplastic.analysis.alignment import layer_groups
from metaplastic.analysis.vectors import cosine, flat

TOP_FRACTION = 0.25


def update_cosines(updates: list[dict[str, Tensor]], keys: list[str]) -> dict[str, Tensor]:
    """{layer: (T, F, F)} cosines between the tasks' cumulative updates."""
    out = {}
    for name, group in layer_groups(keys).items():
        v = torch.stack([flat(u, group) for u in updates], dim=1)  # (T, F, P)
        out[name] = cosine(v.unsqueeze(2), v.unsqueeze(1))
    return out


def unit_change(update: dict[str, Tensor], layer: str, keys: list[str]) -> Tensor:
    """(T, n): per postsynaptic unit, the norm of its incoming-weight (and bias) change."""
    parts = [update[k].flatten(2) if update[k].dim() == 3 else update[k].unsqueeze(-1) for k in keys
             if k.split(".")[1] == layer]
    return torch.cat(parts, dim=-1).norm(dim=-1)


def top_units(change: Tensor, fraction: float) -> Tensor:
    """(T, n) boolean mask of the ceil(fraction n) most changed units."""
    n = change.shape[-1]
    k = max(1, math.ceil(fraction * n))
    idx = change.topk(k, dim=-1).indices
    return torch.zeros_like(change, dtype=torch.bool).scatter_(-1, idx, True)


def unit_jaccard(
    updates: list[dict[str, Tensor]], keys: list[str], fraction: float = TOP_FRACTION
) -> dict[str, dict[str, object]]:
    """{layer: {"matrix": (T, F, F) Jaccard, "k", "n", "chance"}} for layers with k < n."""
    out: dict[str, dict[str, object]] = {}
    for layer in [name for name in layer_groups(keys) if name != "all"]:
        masks = torch.stack([top_units(unit_change(u, layer, keys), fraction) for u in updates], dim=1)
        n = masks.shape[-1]
        k = max(1, math.ceil(fraction * n))
        if k >= n:
            continue
        a, b = masks.unsqueeze(2), masks.unsqueeze(1)
        inter = (a & b).sum(-1).double()
        union = (a | b).sum(-1).double()
        out[layer] = {"matrix": inter / union, "k": k, "n": n, "chance": k / (2 * n - k)}
    return out


def off_diagonal_mean(m: Tensor) -> float:
    """Mean over i != j (and episodes) of (T, F, F) matrices."""
    F = m.shape[-1]
    mask = ~torch.eye(F, dtype=torch.bool, device=m.device)
    return float(m[..., mask].double().mean()) if F > 1 else float("nan")
