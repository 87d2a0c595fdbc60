"""A lower bound of the memory a config needs, checked before anything is allocated.

A typo such as ``network.hidden=[2000000000]`` or ``meta.meta_batch=100000000`` would otherwise
end in the allocator's traceback (or the kernel's OOM killer) after the run folder is written.
The bound counts only what must exist at once: every task's fast weights (each task of the
meta-batch adapts its own copy) and one meta-batch of episode data. Real use is several times
higher (the unrolled lifetime), so a config refused here could never have run.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from metaplastic.errors import ConfigError


def parameter_count(sizes: list[int]) -> int:
    return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))


def samples_per_task(task: Any) -> int:
    """Inputs one episode holds (trajectory and queries), from the task's own sizes."""
    if hasattr(task, "n_functions"):
        return task.n_functions * (task.steps_per_function * task.batch_size + task.query_per_function)
    if hasattr(task, "shots"):
        return task.n_classes * (task.shots + task.query_per_class)
    return 0


def available_bytes(device: torch.device) -> int | None:
    """Physical memory of the machine (CPU) or of the GPU; None where unknown."""
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(sizes: list[int], task: Any, meta_batch: int, dtype: torch.dtype, device: torch.device) -> None:
    item = torch.empty((), dtype=dtype).element_size()
    weights = parameter_count(sizes) * meta_batch * item
    data = samples_per_task(task) * (sizes[0] + sizes[-1]) * meta_batch * item
    need = weights + data
    have = available_bytes(device)
    if have is not None and need > have:
        raise ConfigError(
            f"this config needs at least {need / 1e9:.3g} GB (fast weights of {meta_batch} task(s) for layer sizes "
            f"{sizes[:4]}{'...' if len(sizes) > 4 else ''}: {weights / 1e9:.3g} GB; one meta-batch of data: "
            f"{data / 1e9:.3g} GB), more than the {have / 1e9:.3g} GB of {device.type} memory here"
        )
