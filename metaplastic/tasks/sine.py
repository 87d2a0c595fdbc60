"""Sine-regression streams (OML protocol, Javed & White 2019).

Each episode draws F functions y = A sin(x + phase), A ~ U[a0, a1), phase ~ U[p0, p1),
x ~ U[x0, x1]. The input is the one-hot slot of the function in the episode followed by x
(F + 1 features). ``continual`` presents the functions one after another, ``steps_per_function``
minibatches each; ``iid`` shuffles all the same samples across the whole lifetime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from metaplastic.errors import ConfigError
from metaplastic.tasks.base import Episodes

ORDERS = ("continual", "iid")


@dataclass(frozen=True)
class SineRegression:
    name: str = "sine"
    order: str = "continual"
    n_functions: int = 10
    steps_per_function: int = 40
    batch_size: int = 32
    query_per_function: int = 32
    remember_size: int = 0
    amplitude: tuple[float, float] = (0.1, 5.1)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ConfigError(f"task.order must be one of {', '.join(ORDERS)}, got '{self.order}'")
        for key in ("n_functions", "steps_per_function", "batch_size", "query_per_function"):
            if getattr(self, key) < 1:
                raise ConfigError(f"task.{key} must be >= 1, got {getattr(self, key)}")
        if self.remember_size < 0:
            raise ConfigError(f"task.remember_size must be >= 0, got {self.remember_size}")
        for key in ("amplitude", "phase", "x_range"):
            lo, hi = getattr(self, key)
            if not lo <= hi:
                raise ConfigError(f"task.{key} must be [low, high] with low <= high, got {[lo, hi]}")

    @property
    def n_inputs(self) -> int:
        return self.n_functions + 1

    @property
    def n_outputs(self) -> int:
        return 1

    @property
    def loss_name(self) -> str:
        return "mse"

    @property
    def n_steps(self) -> int:
        return self.n_functions * self.steps_per_function

    def with_order(self, order: str) -> SineRegression:
        return SineRegression(**{**self.__dict__, "order": order})

    def _uniform(self, shape: tuple[int, ...], bounds: tuple[float, float], g: torch.Generator) -> Tensor:
        lo, hi = bounds
        return lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64)

    def inputs(self, slot: Tensor, x: Tensor) -> Tensor:
        """Network inputs of samples: the one-hot slot of their function, then x (any leading shape)."""
        onehot = torch.nn.functional.one_hot(slot, self.n_functions).to(torch.float64)
        return torch.cat([onehot, x.unsqueeze(-1)], dim=-1)

    def sample(self, n_tasks: int, generator: torch.Generator, query_per_function: int | None = None) -> Episodes:
        """Draw ``n_tasks`` episodes in float64 on the CPU (cast with ``Episodes.to``)."""
        T, F, S, B = n_tasks, self.n_functions, self.steps_per_function, self.batch_size
        Q = self.query_per_function if query_per_function is None else query_per_function
        if Q < 1:
            raise ConfigError(f"query_per_function must be >= 1, got {Q}")
        g = generator
        amp = self._uniform((T, F, 1), self.amplitude, g)
        phase = self._uniform((T, F, 1), self.phase, g)
        x = self._uniform((T, F, S * B), self.x_range, g)
        y = amp * torch.sin(x + phase)
        slot = torch.arange(F).view(1, F, 1).expand(T, F, S * B)
        x, y, slot = x.reshape(T, F * S * B), y.reshape(T, F * S * B), slot.reshape(T, F * S * B)
        if self.order == "iid":
            perm = torch.argsort(torch.rand(T, F * S * B, generator=g), dim=1)
            x, y, slot = x.gather(1, perm), y.gather(1, perm), slot.gather(1, perm)
        inputs = self.inputs(slot, x).reshape(T, F * S, B, F + 1)
        targets = y.reshape(T, F * S, B, 1)

        qx = self._uniform((T, F, Q), self.x_range, g)
        qy = amp * torch.sin(qx + phase)
        qslot = torch.arange(F).view(1, F, 1).expand(T, F, Q)
        query_x, query_y = self.inputs(qslot, qx), qy.unsqueeze(-1)

        R = self.remember_size
        idx = torch.randint(0, F * S * B, (T, R), generator=g)
        flat_in, flat_y = inputs.reshape(T, -1, F + 1), targets.reshape(T, -1, 1)
        remember_x = flat_in.gather(1, idx.unsqueeze(-1).expand(T, R, F + 1))
        remember_y = flat_y.gather(1, idx.unsqueeze(-1))
        boundaries = tuple(S * (k + 1) for k in range(F))
        return Episodes(inputs, targets, query_x, query_y, remember_x, remember_y, boundaries)
