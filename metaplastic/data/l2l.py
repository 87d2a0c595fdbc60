"""Any learn2learn ``TaskDataset`` as a metaplastic continual-classification stream.

learn2learn is optional (``pip install metaplastic[l2l]``); this adapter only calls
``taskset.sample() -> (data, labels)``, so it works with any object of that shape. Each sampled
task must hold at least ``shots + query_per_class`` samples of each of its classes (e.g. a
learn2learn taskset built with ``KShots(dataset, shots + query_per_class)``). The choice of
classes and samples inside ``taskset.sample()`` follows learn2learn's own random state; the
split into trajectory and query, the presentation order and the output units come from the
generator passed to ``sample``, exactly as in :mod:`metaplastic.tasks.classification`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from metaplastic.errors import ConfigError, DataError
from metaplastic.tasks.base import Episodes
from metaplastic.tasks.classification import ORDERS, assemble_episodes


@dataclass(frozen=True)
class L2LTaskStream:
    taskset: Any
    n_inputs: int
    n_outputs: int
    shots: int = 5
    query_per_class: int = 5
    order: str = "continual"
    remember_size: int = 0
    name: str = "l2l"

    def __post_init__(self) -> None:
        if not callable(getattr(self.taskset, "sample", None)):
            raise ConfigError("the learn2learn adapter needs a TaskDataset (an object with .sample())")
        if self.order not in ORDERS:
            raise ConfigError(f"order must be one of {', '.join(ORDERS)}, got '{self.order}'")
        if min(self.shots, self.query_per_class, self.n_inputs, self.n_outputs) < 1 or self.remember_size < 0:
            raise ConfigError("shots, query_per_class, n_inputs, n_outputs must be >= 1 and remember_size >= 0")

    @property
    def loss_name(self) -> str:
        return "cross_entropy"

    def with_order(self, order: str) -> L2LTaskStream:
        return dataclasses.replace(self, order=order)

    def sample(self, n_tasks: int, generator: torch.Generator) -> Episodes:
        k, q = self.shots, self.query_per_class
        trajs, queries, labels = [], [], []
        for _ in range(n_tasks):
            data, y = self.taskset.sample()
            y = torch.as_tensor(y).flatten()
            x = torch.as_tensor(data).reshape(len(y), -1).to(torch.float32)
            if x.shape[1] != self.n_inputs:
                raise DataError(f"learn2learn samples have {x.shape[1]} values, the stream expects {self.n_inputs}")
            classes = torch.unique(y)
            classes = classes[torch.randperm(len(classes), generator=generator)]
            if trajs and len(classes) != trajs[0].shape[0]:
                raise DataError("learn2learn tasks of one meta-batch must have the same number of classes")
            if len(classes) > self.n_outputs:
                raise DataError(f"a learn2learn task has {len(classes)} classes, the stream {self.n_outputs} outputs")
            picks = []
            for c in classes:
                idx = torch.nonzero(y == c).flatten()
                if len(idx) < k + q:
                    raise DataError(f"learn2learn task class {int(c)} has {len(idx)} samples; need {k + q}")
                picks.append(x[idx[torch.randperm(len(idx), generator=generator)[: k + q]]])
            per_class = torch.stack(picks)
            trajs.append(per_class[:, :k])
            queries.append(per_class[:, k:])
            labels.append(torch.randperm(self.n_outputs, generator=generator)[: len(classes)])
        return assemble_episodes(
            torch.stack(trajs), torch.stack(queries), torch.stack(labels), self.n_outputs, self.order,
            self.remember_size, generator,
        )
