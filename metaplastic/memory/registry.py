"""Memory-learner names -> classes. Adding a learner: one file and one line here."""

from __future__ import annotations

from typing import Any

from metaplastic.config_utils import build_named
from metaplastic.memory.base import MemoryLearner
from metaplastic.memory.lstm import LSTMLearner
from metaplastic.memory.rmc import RelationalMemory
from metaplastic.memory.sam import SparseAccessMemory

MEMORY_LEARNERS: dict[str, type] = {
    "lstm": LSTMLearner,
    "rmc": RelationalMemory,
    "sam": SparseAccessMemory,
}


def is_memory(spec: Any) -> bool:
    """Whether a ``rule`` config section names a memory learner."""
    return isinstance(spec, dict) and spec.get("name") in MEMORY_LEARNERS


def build_memory(spec: dict[str, Any]) -> MemoryLearner:
    return build_named(MEMORY_LEARNERS, spec, "rule", "memory learner")
