"""Learning-rate schedules of the outer loop, one per meta-parameter group (``meta.schedule``).

A schedule is a pure function of the meta-step: the learning rate of group g at step k is
``meta.lr[g] * factor(k)``. Nothing about it has to be saved, so a resumed run takes exactly
the learning rates of an uninterrupted one. (torch's ``LambdaLR`` computes the same closed form
but keeps a step counter in its own state; here the trainer's step is the only counter.)

    warm-up (k < warmup):  factor = (k + 1) / warmup
    constant:              factor = 1
    cosine:                factor = m + (1 - m) (1 + cos(pi min(1, (k - warmup) / (steps - warmup)))) / 2
    step:                  factor = gamma ** floor((k - warmup) / every)

with m = ``min_factor`` and ``steps`` = ``meta.steps`` unless the schedule sets its own
``steps`` (so that extending a finished run with a larger ``meta.steps`` need not change the
decay it was trained with).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from metaplastic.errors import ConfigError

SCHEDULE_KINDS = ("constant", "cosine", "step")
ALL_GROUPS = "all"  # the key of ``meta.schedule`` that applies to every group without its own entry


@dataclass(frozen=True)
class ScheduleConfig:
    kind: str = "constant"
    warmup: int = 0
    min_factor: float = 0.0  # cosine: the factor reached at the end
    steps: int | None = None  # cosine: length of the decay (default: meta.steps)
    every: int = 1000  # step: meta-steps between decays
    gamma: float = 0.5  # step: multiplicative decay

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ConfigError(f"meta.schedule kind must be one of {', '.join(SCHEDULE_KINDS)}, got '{self.kind}'")
        if self.warmup < 0 or self.every < 1 or (self.steps is not None and self.steps < 1):
            raise ConfigError("meta.schedule: warmup must be >= 0, every and steps >= 1")
        if not (0.0 <= self.min_factor <= 1.0) or not (0.0 < self.gamma <= 1.0):
            raise ConfigError("meta.schedule: min_factor must lie in [0, 1] and gamma in (0, 1]")

    def factor(self, step: int, total_steps: int) -> float:
        """The multiplier of the base learning rate at meta-step ``step`` (0-based)."""
        if step < self.warmup:
            return (step + 1) / self.warmup
        k = step - self.warmup
        if self.kind == "cosine":
            length = max(1, (self.steps or total_steps) - self.warmup)
            progress = min(1.0, k / length)
            return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.kind == "step":
            return self.gamma ** (k // self.every)
        return 1.0


def schedule_for(schedules: dict[str, ScheduleConfig], group: str) -> ScheduleConfig | None:
    """The group's own schedule, else the ``all`` entry, else None (a constant rate)."""
    return schedules.get(group, schedules.get(ALL_GROUPS))
