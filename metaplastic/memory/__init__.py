"""Memory-based meta-learners: a lifetime learned in activations (LSTM, RMC, SAM)."""

from metaplastic.memory.base import MemoryLearner, State
from metaplastic.memory.lstm import LSTMLearner
from metaplastic.memory.registry import MEMORY_LEARNERS, build_memory, is_memory
from metaplastic.memory.rmc import RelationalMemory
from metaplastic.memory.sam import SparseAccessMemory

__all__ = [
    "MEMORY_LEARNERS",
    "LSTMLearner",
    "MemoryLearner",
    "RelationalMemory",
    "SparseAccessMemory",
    "State",
    "build_memory",
    "is_memory",
]
