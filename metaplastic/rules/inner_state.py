"""Inner-loop state that is not a network weight, carried in the ``weights`` dict.

Some rules need more than the fast weights from one step to the next: a step counter (for a
schedule, or to draw fresh noise each step), inverse networks, optimiser moments. They travel
in ``weights`` under their own key prefixes (``MLP.forward`` only reads ``layers.*``), so the
lifetime stays a pure function of the meta-parameters and the data.

Random draws inside a rule come from a CPU generator seeded by (rule seed, step index): the same
lifetime gives the same noise on every run and every device, and the finite-difference checks
of the meta-gradient see the same noise on both sides.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metaplastic.networks import MLP, bias_key, weight_key

STEP_KEY = "state.step"


def step_index(weights: dict[str, Tensor]) -> int:
    """How many steps this lifetime has taken so far (0 before the first)."""
    step = weights.get(STEP_KEY)
    return 0 if step is None else int(step)


def next_step(weights: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {STEP_KEY: torch.tensor(step_index(weights) + 1, dtype=torch.int64, device=device)}


def step_normal(seed: int, step: int, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """Standard normal noise for one step, identical on every device (drawn on the CPU)."""
    g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step) * 7919 + 12345) % (1 << 62))
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device=like.device, dtype=like.dtype)


def plastic_keys(net: MLP) -> list[str]:
    return [f(l) for l in net.plastic_layers for f in (weight_key, bias_key)]
