"""The memory-learner interface: learning in activations instead of weights.

A memory learner is a frozen dataclass of sizes with pure functions, like a rule
(``metaplastic.rules.base``), but nothing in it changes during a lifetime except its state:

- ``init(n_in, n_out, generator, dtype)`` -> its meta-parameters, keys ``init.<name>.*`` (the
  ``init`` group, so ``meta.lr.init`` trains them);
- ``initial_state(meta, n_tasks)`` -> the state at the start of a lifetime, one per task;
- ``step(meta, state, x, prev_target)`` -> (new state, output for ``x``): one sample per task,
  x (T, n_in) with the previous sample's target (T, n_out), as in Santoro et al. 2016 and
  Rae et al. 2016;
- ``read(meta, state, query_x)`` -> outputs (T, Q, n_out) for every query at once, read from
  ``state`` without writing to it (each query is one more step whose state is thrown away).

States are flat dicts of tensors with a leading task dimension T; every function is batched
over T. ``label()`` names the learner in tables.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

State = dict[str, Tensor]


class MemoryLearner(Protocol):
    name: str

    def label(self) -> str: ...

    def init(self, n_in: int, n_out: int, generator: torch.Generator, dtype: torch.dtype) -> dict[str, Tensor]: ...

    def initial_state(self, meta: dict[str, Tensor], n_tasks: int) -> State: ...

    def step(self, meta: dict[str, Tensor], state: State, x: Tensor, prev_target: Tensor) -> tuple[State, Tensor]: ...

    def read(self, meta: dict[str, Tensor], state: State, query_x: Tensor) -> Tensor: ...


def uniform(generator: torch.Generator, shape: tuple[int, ...], fan_in: int, dtype: torch.dtype) -> Tensor:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), torch's default for linear and recurrent layers."""
    bound = 1.0 / math.sqrt(max(1, fan_in))
    return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1).mul_(bound).to(dtype)


def params_of(meta: dict[str, Tensor], name: str) -> dict[str, Tensor]:
    """The learner's own meta-parameters ``init.<name>.*`` with that prefix stripped."""
    prefix = f"init.{name}."
    return {k[len(prefix):]: v for k, v in meta.items() if k.startswith(prefix)}


def with_prefix(params: dict[str, Tensor], name: str) -> dict[str, Tensor]:
    return {f"init.{name}.{k}": v for k, v in params.items()}


def like(meta: dict[str, Tensor]) -> dict:
    """dtype and device of the meta-parameters, for building states."""
    some = next(iter(meta.values()))
    return {"dtype": some.dtype, "device": some.device}
