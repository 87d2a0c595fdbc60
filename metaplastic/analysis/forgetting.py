"""Forgetting curves: the loss on each task of the stream as later tasks are learned.

M[k, i] = L_i(W_{k+1}): task i's held-out loss after tasks 0..k have been presented (the
format of ``evaluation.regression.boundary_errors``, whose ``summarize`` gives the curve
mean_{i <= k} M[k, i]). Forgetting of task i, for i < F - 1:

    forgetting_i = M[F-1, i] - M[i, i]          (final loss minus the loss just after learning i)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from metaplastic.evaluation.regression import summarize


def forgetting(errors: Tensor) -> dict[str, Any]:
    """errors: (episodes, K, F) losses after each task; K = F in a continual stream."""
    errors = errors.double().cpu()
    n, K, F = errors.shape
    final = errors[:, -1]
    learned = torch.stack([errors[:, i, i] for i in range(min(K, F))], dim=1)
    per_task = (final[:, : learned.shape[1]] - learned)[:, : F - 1]
    return {
        "matrix": errors.mean(0).tolist(),
        "per_task": per_task.mean(0).tolist(),
        "mean": float(per_task.mean()) if per_task.numel() else float("nan"),
        "curve": summarize(errors, "continual"),
    }
