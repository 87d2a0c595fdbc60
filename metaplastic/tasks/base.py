"""What every task family hands to the inner loop and the meta-objective."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from metaplastic.errors import DataError


class Episodes(NamedTuple):
    """A meta-batch of T episodes.

    x, y:                 (T, S, B, n_in) / (T, S, B, n_out): the lifetime, one minibatch per step
    query_x, query_y:     (T, F, Q, n_in) / (T, F, Q, n_out): held-out points of each of the F tasks
    remember_x, remember_y: (T, R, ...) points replayed from the trajectory (R may be 0)
    boundaries:           step indices after which task k of the stream has been presented
    """

    x: Tensor
    y: Tensor
    query_x: Tensor
    query_y: Tensor
    remember_x: Tensor
    remember_y: Tensor
    boundaries: tuple[int, ...]

    def tasks(self, index: slice) -> Episodes:
        """The episodes ``index`` selects along the task dimension (first in every tensor)."""
        return Episodes(*(t[index] for t in self[:6]), boundaries=self.boundaries)

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Episodes:
        return Episodes(*(t.to(device=device, dtype=dtype) for t in self[:6]), boundaries=self.boundaries)


def check_finite(episodes: Episodes) -> None:
    for name, t in zip(Episodes._fields[:6], episodes[:6]):
        if t.numel() and not bool(torch.isfinite(t).all()):
            raise DataError(f"task data '{name}' contains NaN or inf")
